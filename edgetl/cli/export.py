"""``edgetl calibrate``, ``export`` and ``qat``: from a run to model files."""
from __future__ import annotations

import click

from edgetl.cli.group import d, echo, main, old_spelling, renamed
from edgetl.config import CALIB_METHODS, FORMATS_HELP, IO_TYPES, ONNX_FORMATS, CalibrateOptions, ExportOptions, QatOptions
from edgetl.errors import EdgetlError


@main.command()
@click.argument("source", metavar="RUN|DATA", type=click.Path())
@click.option("--size", type=int, default=d(CalibrateOptions, "size"), show_default=True, help="Images to sample (stratified by class).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="DATA form only: a new folder outside DATA to write (then: edgetl export RUN --calibration "
                   "OUT). A RUN is always calibrated into RUN/calibration/.")
@click.option("--seed", type=int, default=None,
              help="Sampling seed. [default: the run's seed; DATA form: 42, as `edgetl train`]")
@click.option("--val-split", type=float, default=None,
              help="DATA form: the same seeded split as `edgetl train`, so that calibration images come from "
                   "its training part only. [default: 0.2]")
@click.option("--test-split", type=float, default=None,
              help="DATA form: the same test split as `edgetl train` (default: its auto rule), so that no test "
                   "image is sampled.")
def calibrate(source, size, out, seed, val_split, test_split):
    """Sample a calibration set for int8 from training images only (never val/test).

    \b
    edgetl calibrate RUN               the run's own training split -> RUN/calibration/
                                       (export uses it by default)
    edgetl calibrate DATA --out DIR    DATA split as `edgetl train` splits it -> DIR
                                       (a new folder; export RUN --calibration DIR)"""
    from edgetl import rundir
    from edgetl.data.calibrate import calibrate as run_data
    from edgetl.data.calibrate import calibrate_run

    if rundir.is_run_dir(source):
        given = [f for f, v in (("--out", out), ("--val-split", val_split), ("--test-split", test_split)) if v is not None]
        if given:
            raise EdgetlError(f"{given[0]}: {source} is a run; its split is in its {rundir.SPLIT} and its calibration "
                              f"set goes to {rundir.CALIBRATION}/ inside it. Drop {given[0]}")
        o = CalibrateOptions(size=size).validate()
        calibrate_run(source, o.size, seed, echo=echo)
        return
    o = CalibrateOptions(size, d(CalibrateOptions, "seed") if seed is None else seed,
                         d(CalibrateOptions, "val_split") if val_split is None else val_split, test_split).validate()
    run_data(source, o.size, out, o.seed, o.val_split, echo=echo, test_split=o.test_split)


@main.command()
@click.argument("run", type=click.Path())
@click.option("--formats", "formats", default=d(ExportOptions, "formats"), show_default=True,
              help=FORMATS_HELP[0].upper() + FORMATS_HELP[1:] + ".")
@old_spelling("--format", "format_old")
@click.option("--quants", "quants", default=d(ExportOptions, "quants"), show_default=True,
              help="Comma list: fp32,fp16,dynamic,int8.")
@old_spelling("--quant", "quant_old")
@click.option("--io-type", type=click.Choice(IO_TYPES), default=d(ExportOptions, "io_type"), show_default=True,
              help="Input/output type of int8 TFLite. float32 and int8 run fully in XNNPACK; uint8 adds a "
                   "requantize step outside it (slower on x86).")
@click.option("--calibration", type=click.Path(file_okay=False), default=None,
              help="Folder of calibration images. [default: RUN/calibration/ (edgetl calibrate RUN), else a sample "
                   "of the run's training split]")
@click.option("--calib-size", type=int, default=d(ExportOptions, "calib_size"), show_default=True,
              help="Images sampled from the training split when no calibration folder exists.")
@click.option("--calib-method", type=click.Choice(CALIB_METHODS), default=d(ExportOptions, "calib_method"),
              show_default=True, help="ONNX int8 calibration method.")
@click.option("--onnx-format", type=click.Choice(ONNX_FORMATS), default=d(ExportOptions, "onnx_format"), show_default=True,
              help="ONNX int8 graph form (QOperator runs faster on CPU with onnxruntime).")
@click.option("--per-channel/--per-tensor", default=d(ExportOptions, "per_channel"), show_default=True, help="ONNX int8 weight granularity.")
@click.option("--max-drop", type=float, default=d(ExportOptions, "max_drop"), show_default=True,
              help="Points of top-1 any artifact may lose against the Keras model on the validation split "
                   "(int8 tries remedies first); an artifact above it is not written.")
@click.option("--force", is_flag=True, help="Redo artifacts whose inputs did not change.")
@click.pass_context
def export(ctx, run, formats, format_old, quants, quant_old, io_type, calibration, calib_size, calib_method,
           onnx_format, per_channel, max_drop, force):
    """Export RUN's model to TFLite, ONNX and ORT, float and quantized, under RUN/export/.

    Every artifact takes RGB 0-255 images at the model's input size (preprocessing
    is inside) and returns class probabilities in labels.txt order. Exit code 1
    when any requested artifact failed; the others are still written."""
    from edgetl.export.exporter import export as run_export

    formats = renamed(ctx, "formats", formats, format_old, "--format", "--formats")
    quants = renamed(ctx, "quants", quants, quant_old, "--quant", "--quants")
    opts = ExportOptions(formats, quants, io_type, calibration, calib_size, calib_method, onnx_format,
                         per_channel, max_drop, force)
    results = run_export(run, opts, echo=echo)
    failed = [a for a in results if a.status == "failed"]
    if failed:
        raise EdgetlError(f"{len(failed)} of {len(results)} artifact(s) failed: "
                          + "; ".join(f"{a.name}: {a.reason}" for a in failed), exit_code=1)


@main.command()
@click.argument("run", type=click.Path())
@click.option("--epochs", type=int, default=d(QatOptions, "epochs"), show_default=True, help="Quantization-aware fine-tuning epochs.")
@click.option("--lr", type=float, default=d(QatOptions, "lr"), show_default=True)
@click.option("--batch-size", type=int, default=d(QatOptions, "batch_size"), show_default=True)
@click.option("--io-type", type=click.Choice(IO_TYPES), default=d(QatOptions, "io_type"), show_default=True)
@click.option("--calibration", type=click.Path(file_okay=False), default=None,
              help="Calibration folder for the float parts. [default: as for export]")
def qat(run, epochs, lr, batch_size, io_type, calibration):
    """Quantization-aware fine-tuning of RUN's model, exported as int8 TFLite
    (RUN/export/model_qat_int8.tflite), with its accuracy next to post-training int8."""
    from edgetl.export.qat import qat as run_qat

    run_qat(run, epochs, lr, batch_size, io_type, calibration, echo=echo)
