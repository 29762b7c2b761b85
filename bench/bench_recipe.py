"""Ablation: `--recipe fixed` against `--recipe auto`, on real tasks, over repeated seeded
splits, scored on an untouched test split.

Protocol (per task and seed s): the task's images are pooled; `edgetl.data.dataset.scan` carves a
seeded, stratified test split (--test-split) and a validation split from the rest, both
from seed s; both recipes train on the same splits with the same seed; every choice (early
stopping, the phase kept, auto's phase-2 grid) is made on validation; test is read once, at
the end. Printed per task: mean ± std of test accuracy, the paired gain per seed with its
exact McNemar test on that seed's test images (distinct images; never pooled over seeds), the
mean gain with its 95% t interval over seeds and a two-stage paired bootstrap interval
(seeds, then each seed's test images), and wall time. Writes bench/results/recipe.json.

* hymenoptera (../shared, 398 photos, 2 classes): MobileNetV2 0.35 ImageNet at 128 px.
* digits (scikit-learn's 8x8 scans as 32 px RGB, 30 per class = 300 images, 10 classes):
  MobileNetV2 0.35 ImageNet at 32 px, no flips.

    python bench/bench_recipe.py [--seeds 5] [--only hymenoptera|digits]

Whole-process figures for the docs come from the full run (both tasks, 5 seeds); --only
writes the results file too, with one task's row.
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
from results import Recorder

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


def run_task(name: str, data: Path, base: dict, seeds: list[int], tmp: Path, runs: list) -> dict:
    from edgetl.config import TrainConfig
    from edgetl.stats import compare_over_seeds
    from edgetl.training.train import Trainer

    res: dict = {r: {"acc": [], "secs": [], "pred": [], "chosen": []} for r in ("fixed", "auto")}
    labels = []
    for s in seeds:
        for recipe in ("fixed", "auto"):
            cfg = TrainConfig(data=str(data), out=str(tmp / f"{name}-{recipe}-{s}"), seed=s, recipe=recipe, **base)
            load0 = os.getloadavg()[0]
            t0 = time.perf_counter()
            tr = Trainer(cfg, echo=quiet)
            out = tr.run()
            secs = time.perf_counter() - t0
            test = out.metrics["test"]
            pred = tr.predict_split(tr.ds.test).argmax(-1)
            y = np.asarray(tr.ds.test.labels)
            if recipe == "fixed":
                labels.append(y)
            r = res[recipe]
            r["acc"].append(test["accuracy"])
            r["secs"].append(secs)
            r["pred"].append(pred)
            p2 = out.metrics["recipe"].get("phase2") or {}
            r["chosen"].append("skipped (no candidate beat phase 1 on val)" if p2.get("skipped")
                               else (p2.get("chosen") or {}).get("name"))
            runs.append({"task": name, "seed": s, "recipe": recipe, "test_accuracy": test["accuracy"],
                         "test_n": int(test["n"]), "val_accuracy": out.metrics["val_accuracy"],
                         "wall_s": round(secs, 2), "phase2_chosen": r["chosen"][-1],
                         "load_1min": [round(load0, 2), round(os.getloadavg()[0], 2)],
                         "test_labels": y.tolist(), "test_pred": pred.tolist()})
            print(f"  {name} seed {s} {recipe:<5}: test {test['accuracy']:.4f} ({test['n']} images)  "
                  f"val {out.metrics['val_accuracy']:.4f}  {secs:5.1f}s  phase 2: {r['chosen'][-1]}", flush=True)
    f, a = np.array(res["fixed"]["acc"]), np.array(res["auto"]["acc"])
    cmp = compare_over_seeds(labels, res["fixed"]["pred"], res["auto"]["pred"], seeds, bootstrap=True)
    tf, ta = np.array(res["fixed"]["secs"]), np.array(res["auto"]["secs"])
    summary = {"task": name, "seeds": seeds, "n_test_per_seed": [len(y) for y in labels],
               "fixed_mean": f.mean(), "fixed_std": f.std(ddof=1), "auto_mean": a.mean(), "auto_std": a.std(ddof=1),
               "auto_minus_fixed": cmp.to_dict(), "wall_fixed_s": tf.mean(), "wall_auto_s": ta.mean(),
               "wall_ratio": ta.mean() / tf.mean(), "auto_choices": res["auto"]["chosen"]}
    lo, hi = cmp.t_ci95_points
    blo, bhi = cmp.bootstrap_ci95_points or (float("nan"), float("nan"))
    print(f"{name}: fixed {f.mean():.4f} ± {f.std(ddof=1):.4f} | auto {a.mean():.4f} ± {a.std(ddof=1):.4f} | "
          "paired gains " + ", ".join(f"{r['diff_points']:+.1f} (p={r['mcnemar_p']:.2g})" for r in cmp.per_seed)
          + f" | mean {cmp.mean_diff_points:+.2f} points, 95% t interval over seeds [{lo:+.1f}, {hi:+.1f}], "
          f"bootstrap [{blo:+.1f}, {bhi:+.1f}] | wall {tf.mean():.0f}s vs {ta.mean():.0f}s "
          f"({summary['wall_ratio']:.2f}x)", flush=True)
    return summary


def table_row(name: str, base: dict, s: dict) -> list[str]:
    c = s["auto_minus_fixed"]
    n = s["n_test_per_seed"]
    lo, hi = c["t_ci95_points"]
    blo, bhi = c["bootstrap_ci95_points"]
    return [f"{name}, MobileNetV2 {base['alpha']:g} @{base['img_size']} ({min(n)}–{max(n)} test images per seed), "
            f"{len(s['seeds'])} seeds",
            f"{s['fixed_mean']:.3f} ± {s['fixed_std']:.3f}", f"{s['auto_mean']:.3f} ± {s['auto_std']:.3f}",
            ", ".join(f"{r['diff_points']:+.1f} ({r['only_a_right']} vs {r['only_b_right']}, p = {r['mcnemar_p']:.2g})"
                      for r in c["per_seed"]),
            f"{c['mean_diff_points']:+.1f} [{lo:+.1f}, {hi:+.1f}]", f"[{blo:+.1f}, {bhi:+.1f}]",
            f"{s['wall_ratio']:.2f}× ({s['wall_auto_s']:.0f} s vs {s['wall_fixed_s']:.0f} s)"]


COLUMNS = ["task (test images per seed)", "fixed (mean ± sd)", "auto (mean ± sd)",
           "auto − fixed per seed, points (only fixed right vs only auto right, exact McNemar p on that seed's images)",
           "mean gain, 95% t interval over seeds", "95% paired bootstrap (seeds, then images)",
           "wall auto / fixed (whole Trainer run, in one process)"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--only", choices=["hymenoptera", "digits"], default=None)
    ap.add_argument("--json", default=None, help="Also write the summaries here.")
    a = ap.parse_args()
    if not W035.is_file():
        print(f"skipped: needs ../shared's MobileNetV2 0.35 ImageNet weights ({W035})")
        return 0
    rec = Recorder("recipe")
    os.environ.setdefault("KERAS_HOME", tempfile.mkdtemp(prefix="bench-keras-"))
    from edgetl.demo_data import write_digits
    from edgetl.nets.weights import install

    install(W035, "mobilenetv2", 0.35)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    seeds = list(range(1, a.seeds + 1))
    out, rows, runs = [], [], []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        common = dict(alpha=0.35, weights="imagenet", test_split=0.25, val_split=0.2)
        if a.only in (None, "digits"):
            digits = write_digits(tmp / "digits", size=32, per_class=30)
            base = {**common, "img_size": 32, "augment": "rotate,zoom,translate,contrast"}
            out.append(run_task("digits", digits, base, seeds, tmp, runs))
            rows.append(table_row("digits, 30 per class", base, out[-1]))
            if a.only is None:  # the first task's row is kept even if the second is interrupted
                write(rec, runs, out, rows, partial=True)
        if a.only in (None, "hymenoptera") and (SHARED / "datasets" / "hymenoptera").is_dir():
            base = {**common, "img_size": 128}
            out.append(run_task("hymenoptera", pool_hymenoptera(tmp / "hym"), base, seeds, tmp, runs))
            rows.append(table_row("hymenoptera", base, out[-1]))
    write(rec, runs, out, rows)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2, default=float))
    return 0


def write(rec, runs: list, out: list, rows: list, partial: bool = False) -> None:
    notes = ["Per task and seed, one seeded stratified test split (0.25) and validation split (0.2); both recipes "
             "train on the same splits with the same seed and every choice is made on validation. A p-value is "
             "per seed, on that seed's distinct test images; the intervals treat seeds as replicates."]
    if partial:
        notes.append("Partial: the run was still going (hymenoptera not yet measured).")
    rec.write(runs, {"tasks": out, "table": {"columns": COLUMNS, "rows": rows, "notes": notes}})


if __name__ == "__main__":
    sys.exit(main())
