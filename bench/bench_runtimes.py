"""Benchmark: batch-1 latency of edgetl's exported models by TFLite I/O type and by ONNX int8
graph form, the figures behind the README's export section.

One edgetl run on hymenoptera (MobileNetV2 0.35 ImageNet at 224 px; a head trained for
one epoch: latency does not depend on the weights' values), exported by edgetl itself:
TFLite fp32 and int8 with --io-type float32, int8 and uint8; ONNX fp32 and int8 as
QOperator and as QDQ (minmax, per-channel, 100 training images for calibration). Each
model is timed by `edgetl.runtime.timing.isolated_timing`: a fresh process that imports only
numpy and the runtime (LiteRT with its default XNNPACK delegate, onnxruntime CPU), warm-up,
then --runs timed runs. The models are timed round-robin --rounds times, so that a change
of machine load hits all of them; printed: the median p50 over rounds, the range of the
p50s, the median p90, and each model's top-1 agreement with the Keras model on the 153
val photos.

    python bench/bench_runtimes.py [--threads 2] [--rounds 5] [--runs 200] [--img-size 224]

Writes bench/results/runtimes.json (every round's timing of every model).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "datasets" / "hymenoptera"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"


def quiet(*a, **k):
    pass


def cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(l for l in f if l.startswith("flags")).split()
    except (OSError, StopIteration):
        return "?"
    keep = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8", "neon", "asimddp")
    return ",".join(f for f in keep if f in flags) or "none of avx2/avx512/vnni"


def build_models(tmp: Path, img: int) -> tuple[dict[str, Path], Path]:
    """{label: model file} exported by edgetl from one run; and the run directory."""
    from edgetl.config import TrainConfig
    from edgetl.data.calibrate import calibrate
    from edgetl.export.exporter import ExportOptions, export
    from edgetl.training.train import train

    run = train(TrainConfig(data=str(DATA), alpha=0.35, img_size=img, weights=str(WEIGHTS), epochs_head=1,
                            epochs_finetune=0, views=1, augment="none", test_split=0, out=str(tmp / "run")),
                echo=quiet).run_dir
    calib = calibrate(DATA, size=100, out=tmp / "calibration", test_split=0, echo=quiet)
    models: dict[str, Path] = {}
    keep = tmp / "models"
    keep.mkdir()

    def take(label: str, name: str) -> None:
        src = run / "export" / name
        dest = keep / (label.replace(" ", "_").replace(",", "").replace("/", "") + src.suffix)
        shutil.copyfile(src, dest)
        side = run / "export" / (name + ".json")
        if side.exists():
            shutil.copyfile(side, keep / (dest.name + ".json"))
        models[label] = dest

    for io in ("float32", "int8", "uint8"):
        res = export(run, ExportOptions(formats="tflite", quants="fp32,int8" if io == "float32" else "int8",
                                        io_type=io, calibration=str(calib), max_drop=100.0, force=True), echo=quiet)
        assert all(a.status == "written" for a in res), [(a.name, a.reason) for a in res]
        if io == "float32":
            take("tflite fp32", "model_fp32.tflite")
        take(f"tflite int8, {io} I/O", "model_int8.tflite")
    for fmt in ("qoperator", "qdq"):
        res = export(run, ExportOptions(formats="onnx", quants="fp32,int8" if fmt == "qoperator" else "int8",
                                        onnx_format=fmt, calibration=str(calib), max_drop=100.0, force=True),
                     echo=quiet)
        assert all(a.status == "written" for a in res), [(a.name, a.reason) for a in res]
        if fmt == "qoperator":
            take("onnx fp32", "model_fp32.onnx")
        take(f"onnx int8, {fmt.upper() if fmt == 'qdq' else 'QOperator'}", "model_int8.onnx")
    return models, run


def agreements(models: dict[str, Path], run: Path, threads: int) -> dict[str, float]:
    from edgetl.data.dataset import scan
    from edgetl.data.tfdata import load_array
    from edgetl.runtime.runners import KerasRunner, open_runner

    ds = scan(DATA, test_split=0)
    size = KerasRunner(run / "model.keras").input_size[0]
    x = load_array(ds.val.paths, size)
    ref = KerasRunner(run / "model.keras").predict(x).argmax(1)
    out = {}
    for label, path in models.items():
        r = open_runner(path, threads=threads)
        p = np.concatenate([r.predict(x[i:i + 32]) for i in range(0, len(x), 32)]).argmax(1)
        out[label] = float(np.mean(p == ref))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if not DATA.is_dir() or not WEIGHTS.is_file():
        sys.exit(f"needs ../shared (hymenoptera and MobileNetV2 0.35 weights) at {SHARED}")
    from results import Recorder

    from edgetl.runtime.timing import isolated_timing, machine_info

    rec = Recorder("runtimes")

    info = machine_info()
    print(f"machine: {info['cpu']}, {info['cores']} cores, flags {cpu_flags()}, runtimes {info['runtimes']}")
    print("load average at start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()), flush=True)
    with tempfile.TemporaryDirectory() as d:
        models, run = build_models(Path(d), a.img_size)
        agree = agreements(models, run, a.threads)
        times: dict[str, list[dict]] = {k: [] for k in models}
        for r in range(a.rounds):
            order = list(models) if r % 2 == 0 else list(reversed(models))
            for label in order:
                times[label].append(isolated_timing(models[label], a.threads, a.runs, (a.img_size, a.img_size)))
            print(f"  round {r + 1}/{a.rounds} done, load {os.getloadavg()[0]:.2f}", flush=True)
        sizes = {k: p.stat().st_size for k, p in models.items()}
    print(f"\nMobileNetV2 0.35 at {a.img_size} px, batch 1, {a.threads} threads, {a.runs} timed runs per round, "
          f"{a.rounds} rounds, each model in a fresh process; load average at the end "
          + "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    print(f"{'model':<28}{'size KiB':>9}{'p50 ms (median)':>17}{'p50 range':>16}{'p90 ms':>9}{'agree':>7}")
    rows = {}
    for label, ts in times.items():
        p50 = np.array([t["p50_ms"] for t in ts])
        p90 = np.median([t["p90_ms"] for t in ts])
        rows[label] = {"size_bytes": sizes[label], "p50_ms_median": float(np.median(p50)),
                       "p50_ms_range": [float(p50.min()), float(p50.max())], "p90_ms_median": float(p90),
                       "agreement_keras": agree[label]}
        print(f"{label:<28}{sizes[label] / 1024:>9.0f}{np.median(p50):>17.2f}"
              f"{f'{p50.min():.2f}-{p50.max():.2f}':>16}{p90:>9.2f}{agree[label]:>7.3f}")
    table = [[label, f"{r['size_bytes'] / 1024:,.0f}", f"{r['p50_ms_median']:.2f}",
              f"{r['p50_ms_range'][0]:.2f}–{r['p50_ms_range'][1]:.2f}", f"{r['p90_ms_median']:.2f}",
              f"{r['agreement_keras']:.3f}"] for label, r in rows.items()]
    notes = [f"MobileNetV2 0.35 at {a.img_size} px, batch 1, {a.threads} threads, {a.runs} timed runs per round, "
             f"{a.rounds} rounds round-robin, each model in a fresh process; agreement: top-1 with the Keras model "
             "on hymenoptera's val photos."]
    runs = [{"model": k, "round": i + 1, **t} for k, ts in times.items() for i, t in enumerate(ts)]
    rec.write(runs, {"rows": rows, "runtimes": info.get("runtimes"), "table": {
        "columns": ["model", "size KiB", "p50 ms (median of rounds)", "p50 range over rounds", "p90 ms",
                    "agreement"], "rows": table, "notes": notes}})
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "machine": info, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
