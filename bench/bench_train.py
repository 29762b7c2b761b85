"""Benchmark: `edgetl train` against the keras.io transfer-learning guide as its users run it.

The peer is ``../shared/peers/keras_guide.py`` (the guide as written: cached dataset,
augmentation inside the model, frozen base with BatchNorm in inference mode, head at 1e-3,
then the last 20 layers at 1e-5, no early stopping, no selection), run unchanged, in its own
process: ``python keras_guide.py DATA WEIGHTS IMG E1 E2 SEED ALPHA``. edgetl runs as its users
run it: ``edgetl train DATA --alpha .. --img-size .. --weights .. --epochs-head E1
--epochs-finetune E2 --seed SEED --out RUN`` with every other option at its default (the auto
recipe), and, with ``--fixed``, once more with ``--recipe fixed``.

Protocol, per seed s:

* DATA_s is built from hymenoptera: its val/ folder as val/, and a seeded stratified test split
  (``--test-split`` of each class, edgetl's own ``scan(seed=s)``) carved from its train/ folder
  as test/, the rest as train/ (files copied). Both sides honour DATA/test/: the guide scores
  it after training, edgetl scores it once at the end (never for a choice); so both report test
  accuracy on the same untouched images.
* The runs are interleaved, A B [C] A B [C] ...: the guide, edgetl, [edgetl --recipe fixed]
  for seed 1, then seed 2, ...; one process per run, nothing shared but the files.
* Whole-process wall time (``time.perf_counter`` around the child, interpreter start and
  imports included), CPU time and peak RSS of that child (``os.wait4``'s resource usage), the
  load average before and after each run. Every run is reported.
* Per seed, the paired differences: test accuracy edgetl - guide (points) and the speed-up
  (guide wall / edgetl wall); across seeds, their means with 95% t intervals (seeds as
  replicates). The guide prints only its accuracy, not per-image predictions, so there is no
  per-seed McNemar test here.

Both sides get the same environment (TF_CPP_MIN_LOG_LEVEL=2, log lines only); the guide sets 2
TensorFlow threads itself, edgetl uses TensorFlow's default (the 2 cores). Writes
bench/results/train.json (``--json`` also writes a copy elsewhere).

    python bench/bench_train.py [--seeds 3] [--img-size 128] [--epochs-head 20]
                                [--epochs-finetune 10] [--test-split 0.25] [--fixed]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from results import Recorder, loadavg

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "datasets" / "hymenoptera"
GUIDE = SHARED / "peers" / "keras_guide.py"
WEIGHTS = {0.35: SHARED / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5",
           1.0: SHARED / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"}
SIDES = {"guide": "keras.io guide as written", "edgetl": "edgetl defaults (auto recipe)",
         "edgetl-fixed": "edgetl --recipe fixed"}


def build_data(dest: Path, seed: int, test_split: float) -> dict[str, int]:
    """DATA_s: train/ (hymenoptera's train/ minus the carved test), val/, test/ (carved, seeded)."""
    from edgetl.data import scan

    ds = scan(DATA, seed=seed, test_split=test_split)
    counts = {}
    for split, part in (("train", ds.train), ("val", ds.val), ("test", ds.test)):
        for p, y in zip(part.paths, part.labels):
            f = dest / split / ds.classes[int(y)] / Path(p).name
            f.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, f)
        counts[split] = len(part.paths)
    return counts


def timed(cmd: list[str], log: Path, env: dict[str, str]) -> dict:
    """Run one child process: wall time around it, its own CPU time and peak RSS (wait4)."""
    load0 = loadavg()[0]
    with open(log, "w") as f:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    return {"wall_s": round(wall, 2), "cpu_s": round(ru.ru_utime + ru.ru_stime, 1),
            "peak_rss_mb": round(ru.ru_maxrss / 1024), "returncode": p.returncode,
            "load_1min": [load0, loadavg()[0]], "command": " ".join(cmd)}


def guide_run(data: Path, a, seed: int, log: Path, env) -> dict:
    cmd = [sys.executable, str(GUIDE), str(data), str(WEIGHTS[a.alpha]), str(a.img_size), str(a.epochs_head),
           str(a.epochs_finetune), str(seed), f"{a.alpha:g}"]
    r = timed(cmd, log, env)
    out = log.read_text()
    m = re.search(r"keras_guide phase1_s=([\d.]+) total_s=([\d.]+) val_acc=([\d.]+)(?: test_acc=([\d.]+))?", out)
    if r["returncode"] or not m or m.group(4) is None:
        sys.exit(f"the guide failed (exit {r['returncode']}), see {log}:\n{out[-2000:]}")
    r.update(own_phase1_s=float(m.group(1)), own_total_s=float(m.group(2)), val_accuracy=float(m.group(3)),
             test_accuracy=float(m.group(4)))
    return r


def edgetl_run(data: Path, a, seed: int, run: Path, log: Path, env, recipe: str | None) -> dict:
    exe = Path(sys.executable).with_name("edgetl")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "edgetl"]
    cmd += ["train", str(data), "--alpha", f"{a.alpha:g}", "--img-size", str(a.img_size), "--weights",
            str(WEIGHTS[a.alpha]), "--epochs-head", str(a.epochs_head), "--epochs-finetune", str(a.epochs_finetune),
            "--seed", str(seed), "--out", str(run)]
    if recipe:
        cmd += ["--recipe", recipe]
    r = timed(cmd, log, env)
    if r["returncode"]:
        sys.exit(f"edgetl train failed (exit {r['returncode']}), see {log}:\n{log.read_text()[-2000:]}")
    m = json.loads((run / "metrics.json").read_text())
    t = m["test"]
    r.update(val_accuracy=m["val_accuracy"], test_accuracy=t["accuracy"], test_n=t["n"],
             selected_phase=m.get("selected_phase"), timings=m.get("timings"))
    return r


def mean_sd(v) -> str:
    v = np.asarray(v, float)
    return f"{v.mean():.1f} ± {v.std(ddof=1):.1f}" if v.size > 1 else f"{v.mean():.1f}"


def cell(r: dict) -> str:
    return (f"{r['wall_s']:.1f} s wall, {r['cpu_s']:.0f} s CPU, {r['peak_rss_mb']:,} MB; test {r['test_accuracy']:.3f} "
            f"(val {r['val_accuracy']:.3f}); load {r['load_1min'][0]:.1f} → {r['load_1min'][1]:.1f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--alpha", type=float, default=0.35, choices=sorted(WEIGHTS))
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--epochs-head", type=int, default=20)
    ap.add_argument("--epochs-finetune", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--test-split", type=float, default=0.25)
    ap.add_argument("--fixed", action="store_true", help="Also race `edgetl train --recipe fixed` (A B C A B C ...).")
    ap.add_argument("--keep", default=None, help="Keep the data, runs and logs in this folder.")
    ap.add_argument("--json", default=None, help="Also write the results file here.")
    a = ap.parse_args()
    missing = [p for p in (DATA, GUIDE, WEIGHTS[a.alpha]) if not p.exists()]
    if missing:
        print(f"skipped: needs ../shared ({', '.join(map(str, missing))} missing)")
        return 0
    rec = Recorder("train")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    sides = ["guide", "edgetl"] + (["edgetl-fixed"] if a.fixed else [])
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="bench-train-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {rec.machine}; load {rec.load_start}; work in {work}", flush=True)
    runs: list[dict] = []
    try:
        for s in range(1, a.seeds + 1):
            data = work / f"data-s{s}"
            if data.exists():
                shutil.rmtree(data)
            counts = build_data(data, s, a.test_split)
            print(f"seed {s}: {counts['train']} train / {counts['val']} val / {counts['test']} test images", flush=True)
            for side in sides:
                log = work / f"{side}-s{s}.log"
                if side == "guide":
                    r = guide_run(data, a, s, log, env)
                else:
                    run = work / f"{side}-s{s}"
                    shutil.rmtree(run, ignore_errors=True)
                    r = edgetl_run(data, a, s, run, log, env, "fixed" if side == "edgetl-fixed" else None)
                r.update(side=side, seed=s, images=counts)
                runs.append(r)
                print(f"  {side:<13} wall {r['wall_s']:6.1f} s  CPU {r['cpu_s']:6.1f} s  peak RSS {r['peak_rss_mb']:5} MB"
                      f"  val {r['val_accuracy']:.4f}  test {r['test_accuracy']:.4f}  load {r['load_1min'][0]:.2f} -> "
                      f"{r['load_1min'][1]:.2f}", flush=True)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    summary = summarize(runs, sides, a)
    path = rec.write(runs, summary)
    if a.json:
        shutil.copyfile(path, a.json)
    return 0


def summarize(runs: list[dict], sides: list[str], a) -> dict:
    from edgetl.stats import t_interval

    by = {side: [r for r in runs if r["side"] == side] for side in sides}
    seeds = [r["seed"] for r in by["guide"]]
    out: dict = {"sides": {k: SIDES[k] for k in sides}, "per_side": {}, "vs_guide": {}}
    for side, rs in by.items():
        out["per_side"][side] = {k: t_interval([r[k] for r in rs]).to_dict()
                                 for k in ("wall_s", "cpu_s", "peak_rss_mb", "test_accuracy", "val_accuracy")}
    rows = [[f"seed {s}"] + [cell(by[side][i]) for side in sides] for i, s in enumerate(seeds)]
    rows.append(["mean ± sd (wall s; CPU s; test accuracy)"] + [
        f"{mean_sd([r['wall_s'] for r in by[side]])} s; {mean_sd([r['cpu_s'] for r in by[side]])} s CPU; test "
        f"{np.mean([r['test_accuracy'] for r in by[side]]):.3f}" for side in sides])
    speed_row, cpu_row, acc_row = ["speed-up: guide wall / this wall, per seed; mean [95% t interval]", "–"], \
        ["CPU: guide CPU s / this CPU s, per seed; mean [95% t interval]", "–"], \
        ["test accuracy, this − guide, points per seed; mean [95% t interval]", "–"]
    for side in sides[1:]:
        speed = [g["wall_s"] / e["wall_s"] for g, e in zip(by["guide"], by[side])]
        diff = [100 * (e["test_accuracy"] - g["test_accuracy"]) for g, e in zip(by["guide"], by[side])]
        cpu = [g["cpu_s"] / e["cpu_s"] for g, e in zip(by["guide"], by[side])]
        ts, td, tc = t_interval(speed), t_interval(diff), t_interval(cpu)
        cpu_row.append(", ".join(f"{v:.2f}×" for v in cpu) + f"; {tc.mean:.2f}× [{tc.lo:.2f}, {tc.hi:.2f}]")
        out["vs_guide"][side] = {"speedup_per_seed": speed, "speedup": ts.to_dict(), "cpu_ratio_per_seed": cpu,
                                 "cpu_ratio": tc.to_dict(),
                                 "test_diff_points_per_seed": diff, "test_diff_points": td.to_dict()}
        speed_row.append(", ".join(f"{v:.2f}×" for v in speed) + f"; {ts.mean:.2f}× [{ts.lo:.2f}, {ts.hi:.2f}]")
        acc_row.append(", ".join(f"{v:+.1f}" for v in diff) + f"; {td.mean:+.1f} [{td.lo:+.1f}, {td.hi:+.1f}]")
    rows += [speed_row, cpu_row, acc_row]
    n_test = sorted({r["images"]["test"] for r in runs})
    notes = [f"hymenoptera, MobileNetV2 {a.alpha:g} ImageNet @{a.img_size} px, {a.epochs_head} + {a.epochs_finetune} "
             f"epochs, {len(seeds)} seeds; per seed a test split ({a.test_split:g} of train/, "
             f"{'/'.join(map(str, n_test))} images) that both sides score and neither chooses on. Each cell: "
             "whole-process wall time (interpreter start and imports included), peak RSS of the process, test "
             "(and val) accuracy. Runs interleaved A B" + (" C" if len(sides) > 2 else "") + ", one process each; "
             "the guide run unchanged from ../shared/peers/keras_guide.py. Its test split is small: an accuracy "
             "difference of a few points is within the noise (see the interval)."]
    out["table"] = {"columns": ["run"] + [SIDES[s] for s in sides], "rows": rows, "notes": notes}
    return out


if __name__ == "__main__":
    sys.exit(main())
