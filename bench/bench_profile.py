"""Where the default `edgetl train` run's time goes, against its floor.

The floor is what no training recipe can avoid: starting the process and importing
TensorFlow and edgetl, plus one frozen pass over every view (decode, augment, the frozen
layers up to the cut, written to the view cache). Everything else (scan, build, phase 1,
phase 2's search and fit, evaluation, writing the run) is what the recipe adds on top. The
target of issue 21: the default run within 2× of its floor.

Each run is `edgetl train` as users run it (its own process, defaults), on the bench's
hymenoptera split (bench_train.build_data: a seeded test split carved from train/). The
stages come from the run's own metrics.json timings; "process start and imports" is a fresh
process that only imports what `edgetl train` imports (median of 3); "the rest" is the
whole-process wall time minus every other stage.

    python bench/bench_profile.py [--seeds 3] [--alpha 0.35 --img-size 128] [--epochs-head 20 --epochs-finetune 10]

Writes bench/results/profile-ALPHA-IMG.json.
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
from bench_train import DATA, build_data, edgetl_run, prepare_weights
from results import Recorder

IMPORTS = "import tensorflow, keras, edgetl.cli, edgetl.training.train, edgetl.data.tfdata, edgetl.nets.weights"


def import_seconds(env: dict, repeats: int = 3) -> float:
    """Median wall time of a fresh process that only starts and imports what `edgetl train` imports."""
    import subprocess
    import time

    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", IMPORTS], check=True, env=env, capture_output=True)
        out.append(time.perf_counter() - t0)
    return float(np.median(out))


STAGES = [  # (label, how to get it from a run's timings, its wall time and the import time)
    ("process start and imports (a fresh process that only imports, median of 3)", lambda t, w, i: i),
    ("frozen pass over every view (decode, augment, frozen layers → cache)", lambda t, w, i: t.get("features_s", 0.0)),
    ("phase 1: head on the cached features", lambda t, w, i: t.get("phase1_train_s", 0.0)),
    ("phase 2: auto recipe search", lambda t, w, i: t.get("recipe_search_s", 0.0)),
    ("phase 2: model set-up and fine-tuning fit", lambda t, w, i: t.get("phase2_s", 0.0) - t.get("recipe_search_s", 0.0)),
    ("the rest: scan, build, evaluation, near-duplicate check, writing the run, exit",
     lambda t, w, i: w - i - t.get("features_s", 0.0) - t.get("phase1_train_s", 0.0) - t.get("phase2_s", 0.0)),
]
FLOOR = (0, 1)  # the stages that make the floor


def run_once(data: Path, a, seed: int, work: Path, env: dict, weights: Path, imports: float) -> dict:
    """One default run as bench_train runs edgetl (:func:`bench_train.edgetl_run`), split into stages."""
    run = work / f"run-s{seed}"
    shutil.rmtree(run, ignore_errors=True)
    r = edgetl_run(data, a, seed, run, work / f"run-s{seed}.log", env, None, weights)
    m = json.loads((run / "metrics.json").read_text())
    t = r["timings"]
    stages = {label: round(float(f(t, r["wall_s"], imports)), 2) for label, f in STAGES}
    floor = sum(stages[STAGES[i][0]] for i in FLOOR)
    r.update(seed=seed, stages=stages, floor_s=round(floor, 2), over_floor=round(r["wall_s"] / floor, 2),
             phase2_skipped=bool(((m.get("recipe") or {}).get("phase2") or {}).get("skipped")))
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--alpha", type=float, default=0.35, choices=(0.35, 1.0))
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--epochs-head", type=int, default=20)
    ap.add_argument("--epochs-finetune", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--test-split", type=float, default=0.25)
    a = ap.parse_args()
    if not DATA.is_dir():
        print(f"skipped: needs ../shared ({DATA})")
        return 0
    rec = Recorder(f"profile-{a.alpha:g}-{a.img_size}")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    work = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    runs = []
    try:
        weights = prepare_weights(a, work, [], env)["h5"]  # 1.0: torchvision's checkpoint, imported untimed
        imports = import_seconds(env)
        for s in range(1, a.seeds + 1):
            data = work / f"data-s{s}"
            build_data(data, s, a.test_split)
            r = run_once(data, a, s, work, env, weights, imports)
            runs.append(r)
            print(f"seed {s}: wall {r['wall_s']:.1f} s, floor {r['floor_s']:.1f} s ({r['over_floor']:.2f}× the floor), "
                  f"phase kept {r['selected_phase']}{' (phase 2 skipped)' if r['phase2_skipped'] else ''}, "
                  f"load {r['load_1min'][0]:.2f} -> {r['load_1min'][1]:.2f}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = []
    wall = np.array([r["wall_s"] for r in runs])
    for label, _ in STAGES:
        v = np.array([r["stages"][label] for r in runs])
        rows.append([label, f"{v.mean():.2f}", f"{100 * (v / wall).mean():.0f}%",
                     ", ".join(f"{x:.2f}" for x in v)])
    floor = np.array([r["floor_s"] for r in runs])
    rows.append(["**whole process**", f"{wall.mean():.2f}", "100%", ", ".join(f"{x:.2f}" for x in wall)])
    rows.append(["**floor** (start + imports + the frozen pass)", f"{floor.mean():.2f}",
                 f"{100 * (floor / wall).mean():.0f}%", ", ".join(f"{x:.2f}" for x in floor)])
    ratio = wall / floor
    rows.append(["**whole process / floor** (target ≤ 2)", f"{ratio.mean():.2f}×", "",
                 ", ".join(f"{x:.2f}×" for x in ratio)])
    skipped = sum(r["phase2_skipped"] for r in runs)
    summary = {"over_floor": [float(x) for x in ratio], "wall_s": [float(x) for x in wall],
               "floor_s": [float(x) for x in floor], "table": {
                   "columns": ["stage", "mean s", "share of the process", "per seed (s)"], "rows": rows,
                   "notes": [f"`edgetl train` defaults on hymenoptera (the bench split of each seed), MobileNetV2 "
                             f"{a.alpha:g} ImageNet @{a.img_size} px, {a.epochs_head} + {a.epochs_finetune} epochs, "
                             f"{len(runs)} seeds, one process each; phase 2 was skipped by the auto recipe in "
                             f"{skipped} of {len(runs)} runs (no candidate beat phase 1 on val)."]}}
    rec.write(runs, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
