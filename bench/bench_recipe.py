"""Ablation: `--recipe fixed` against `--recipe auto`, on real tasks, over repeated seeded
splits, scored on an untouched test split.

Protocol (per task and seed s): the task's images are pooled; `edgetl.data.scan` carves a
seeded, stratified test split (--test-split) and a validation split from the rest, both
from seed s; both recipes train on the same splits with the same seed; every choice (early
stopping, the phase kept, auto's phase-2 grid) is made on validation; test is read once, at
the end. Printed per task: mean ± std of test accuracy, the paired gain per seed, a pooled
exact McNemar test over every seed's test images, and wall time.

* hymenoptera (../shared, 398 photos, 2 classes): MobileNetV2 0.35 ImageNet at 128 px.
* digits (scikit-learn's 8x8 scans as 32 px RGB, 30 per class = 300 images, 10 classes):
  MobileNetV2 0.35 ImageNet at 32 px, no flips.

    python bench/bench_recipe.py [--seeds 5] [--only hymenoptera|digits]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
W035 = SHARED / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"


def quiet(*a, **k):
    pass


def pool_hymenoptera(dest: Path) -> Path:
    """train/ and val/ of hymenoptera as one class-per-folder pool (symlinks)."""
    src = SHARED / "datasets" / "hymenoptera"
    for split in ("train", "val"):
        for cdir in sorted((src / split).iterdir()):
            (dest / cdir.name).mkdir(parents=True, exist_ok=True)
            for f in cdir.iterdir():
                (dest / cdir.name / f"{split}_{f.name}").symlink_to(f)
    return dest


def run_task(name: str, data: Path, base: dict, seeds: list[int], tmp: Path) -> dict:
    from edgetl.config import TrainConfig
    from edgetl.stats import mcnemar_exact
    from edgetl.train import Trainer

    res: dict = {r: {"acc": [], "secs": [], "correct": [], "chosen": []} for r in ("fixed", "auto")}
    for s in seeds:
        for recipe in ("fixed", "auto"):
            cfg = TrainConfig(data=str(data), out=str(tmp / f"{name}-{recipe}-{s}"), seed=s, recipe=recipe, **base)
            t0 = time.perf_counter()
            tr = Trainer(cfg, echo=quiet)
            out = tr.run()
            secs = time.perf_counter() - t0
            test = out.metrics["test"]
            probs = tr.predict_split(tr.ds.test)
            correct = probs.argmax(-1) == np.asarray(tr.ds.test.labels)
            r = res[recipe]
            r["acc"].append(test["accuracy"])
            r["secs"].append(secs)
            r["correct"].append(correct)
            r["chosen"].append(out.metrics["recipe"].get("phase2", {}).get("chosen", {}).get("name"))
            print(f"  {name} seed {s} {recipe:<5}: test {test['accuracy']:.4f} ({test['n']} images)  "
                  f"val {out.metrics['val_accuracy']:.4f}  {secs:5.1f}s  phase 2: {r['chosen'][-1]}", flush=True)
    f, a = np.array(res["fixed"]["acc"]), np.array(res["auto"]["acc"])
    gains = 100 * (a - f)
    fc, ac = np.concatenate(res["fixed"]["correct"]), np.concatenate(res["auto"]["correct"])
    b, c = int((fc & ~ac).sum()), int((~fc & ac).sum())
    tf, ta = np.array(res["fixed"]["secs"]), np.array(res["auto"]["secs"])
    summary = {"task": name, "seeds": seeds, "n_test_per_seed": int(len(res["fixed"]["correct"][0])),
               "fixed_mean": f.mean(), "fixed_std": f.std(), "auto_mean": a.mean(), "auto_std": a.std(),
               "paired_gains_points": gains.round(2).tolist(), "mean_gain_points": float(gains.mean()),
               "mcnemar_pooled": {"only_fixed_right": b, "only_auto_right": c, "p": mcnemar_exact(b, c)},
               "wall_fixed_s": tf.mean(), "wall_auto_s": ta.mean(), "wall_ratio": ta.mean() / tf.mean(),
               "auto_choices": res["auto"]["chosen"]}
    print(f"{name}: fixed {f.mean():.4f} ± {f.std():.4f} | auto {a.mean():.4f} ± {a.std():.4f} | paired gains "
          + ", ".join(f"{g:+.1f}" for g in gains) + f" (mean {gains.mean():+.2f} points) | pooled McNemar "
          f"{c} vs {b}, p={summary['mcnemar_pooled']['p']:.3g} | wall {tf.mean():.0f}s vs {ta.mean():.0f}s "
          f"({summary['wall_ratio']:.2f}x)", flush=True)
    return summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--only", choices=["hymenoptera", "digits"], default=None)
    ap.add_argument("--json", default=None, help="Also write the summaries here.")
    a = ap.parse_args()
    if not W035.is_file():
        print(f"skipped: needs ../shared's MobileNetV2 0.35 ImageNet weights ({W035})")
        return 0
    os.environ.setdefault("KERAS_HOME", tempfile.mkdtemp(prefix="bench-keras-"))
    from edgetl.demo_data import write_digits
    from edgetl.weights import install

    install(W035, "mobilenetv2", 0.35)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    seeds = list(range(1, a.seeds + 1))
    out = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        common = dict(alpha=0.35, weights="imagenet", test_split=0.25, val_split=0.2)
        if a.only in (None, "hymenoptera") and (SHARED / "datasets" / "hymenoptera").is_dir():
            out.append(run_task("hymenoptera", pool_hymenoptera(tmp / "hym"), {**common, "img_size": 128}, seeds, tmp))
        if a.only in (None, "digits"):
            digits = write_digits(tmp / "digits", size=32, per_class=30)
            out.append(run_task("digits", digits, {**common, "img_size": 32,
                                                   "augment": "rotate,zoom,translate,contrast"}, seeds, tmp))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
