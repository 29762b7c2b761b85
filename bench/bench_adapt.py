"""Benchmark: does `edgetl adapt` win back what a "phone camera at night" costs?

Data: hymenoptera (../shared, 245 train / 153 val photos, ants vs bees) and a
deterministic, seeded night copy of it (`edgetl.data.corruptions.night`: about a third of
the light with a cool cast, sensor noise, a slight blur, a JPEG at quality 15):

* train-target: night copies of the TRAIN photos, in one flat folder under hashed
  names (no class folders, no label in the name): the unlabelled target set;
* val-target: night copies of the VAL photos in class folders, for evaluation only
  (`--target-labels`).

Per seed: a source model (MobileNetV2 0.35 ImageNet, 128 px, `edgetl train` defaults)
trained on the clean photos, then `edgetl adapt --method auto`, which trains every
method and chooses one without target labels. Clean val is the run's own held-out
split; night val is the labelled target set. Neither is used to choose.

    python bench/bench_adapt.py [--seeds 3] [--robustness] [--json results.json]

Writes bench/results/adapt.json.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "datasets" / "hymenoptera"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
METHODS = ("source", "adabn", "pseudo", "dann")


def quiet(*a, **k):
    pass


def make_night(dest: Path) -> tuple[Path, Path]:
    """(unlabelled train-target folder, labelled val-target folder); image i of the sorted
    file list is seeded with i, so the copies are identical on every run."""
    from PIL import Image

    from edgetl.data.corruptions import night
    from edgetl.data.images import BadImage, open_rgb

    unl, lab = dest / "train-target", dest / "val-target"
    files = sorted(p for p in DATA.rglob("*") if p.is_file())
    for i, p in enumerate(files):
        try:
            img = np.asarray(open_rgb(p))
        except BadImage:
            continue  # the set's placeholder GIF
        split, cls = p.relative_to(DATA).parts[:2]
        out = night(img, seed=i)
        if split == "train":
            name = hashlib.sha256(p.name.encode()).hexdigest()[:16] + ".jpg"
            target = unl / name
        else:
            target = lab / cls / (p.stem + ".jpg")
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(out).save(target, quality=95)  # the low-quality JPEG is already in the pixels
    return unl, lab


def mean_std(v) -> str:
    v = np.asarray(v)
    return f"{v.mean():.3f} ± {v.std():.3f}"


ADAPT_COLUMNS = ["model", "clean val (mean ± std)", "night val (mean ± std)", "night gain per seed (points)",
                 "mean night gain", "clean change", "spread (max − min, points)"]


def summary(results: list[dict]) -> str:
    cols, rows, verdicts = summary_table(results)
    return "\n".join(["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
                     + ["| " + " | ".join(r) + " |" for r in rows] + [""] + verdicts)


def summary_table(results: list[dict]) -> tuple[list[str], list[list[str]], list[str]]:
    src_night = np.array([r["night"]["source"] for r in results])
    src_clean = np.array([r["clean"]["source"] for r in results])
    lines = []
    rows = {m: ([r["clean"][m] for r in results], [r["night"][m] for r in results]) for m in METHODS}
    rows["auto (chosen: " + ", ".join(r["chosen"] for r in results) + ")"] = (
        [r["clean"][r["chosen"]] for r in results], [r["night"][r["chosen"]] for r in results])
    verdicts = []
    for name, (clean, night) in rows.items():
        c, n = np.array(clean), np.array(night)
        gains = 100 * (n - src_night)
        spread = 100 * max(np.ptp(src_night), np.ptp(n))
        lines.append([name, mean_std(c), mean_std(n), ", ".join(f"{g:+.1f}" for g in gains), f"{gains.mean():+.1f}",
                      f"{100 * (c.mean() - src_clean.mean()):+.1f}", f"{spread:.1f}"])
        if name.startswith("auto"):
            ok_gain = gains.mean() >= 8 and gains.mean() > spread
            ok_clean = 100 * (src_clean.mean() - c.mean()) <= 3
            verdicts.append(f"auto: night gain {gains.mean():+.1f} points (target >= +8 and above the {spread:.1f}-point "
                            f"spread: {'met' if ok_gain else 'NOT met'}); clean change "
                            f"{100 * (c.mean() - src_clean.mean()):+.1f} points (target >= -3: "
                            f"{'met' if ok_clean else 'NOT met'})")
    return ADAPT_COLUMNS, lines, verdicts


def robustness(run: Path, echo=print) -> str:
    from edgetl.config import VerifyOptions
    from edgetl.export.exporter import ExportOptions, export
    from edgetl.verify.robustness import table
    from edgetl.verify.verifier import verify

    # int8 is kept whatever it loses (max_drop 100): the table is there to show what it loses
    export(run, ExportOptions(formats="tflite", quants="fp32,int8", max_drop=100.0), echo=quiet)
    rep = verify(run, VerifyOptions(threads=2, max_drop=100.0, min_agreement=0.0, robustness=True), echo=quiet,
                 isolated=False)
    return table(rep["robustness"], markdown=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--robustness", action="store_true",
                    help="also export the first seed's source and adapted runs (TFLite fp32, int8) and verify them "
                         "with --robustness")
    ap.add_argument("--json", default=None, help="write every number here")
    ap.add_argument("--keep", default=None, help="keep the data and runs in this folder (default: a temporary one)")
    a = ap.parse_args()
    if not DATA.is_dir() or not WEIGHTS.is_file():
        print(f"skipped: needs ../shared (hymenoptera and MobileNetV2 0.35 weights) at {SHARED}")
        return 0
    os.environ.setdefault("KERAS_HOME", tempfile.mkdtemp(prefix="edgetl-bench-keras-"))  # before Keras is imported
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from results import Recorder

    from edgetl.config import TrainConfig
    from edgetl.nets.weights import install
    from edgetl.training.adapt import AdaptOptions, adapt
    from edgetl.training.train import train

    rec = Recorder("adapt")
    install(WEIGHTS, "mobilenetv2", 0.35)
    tmp = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="edgetl-bench-adapt-"))
    unl, lab = make_night(tmp / "night")
    print(f"night copies: {len(list(unl.glob('*')))} unlabelled train-target images, "
          f"{len(list(lab.rglob('*.jpg')))} labelled val-target images", flush=True)
    results = []
    for seed in range(1, a.seeds + 1):
        src = train(TrainConfig(data=str(DATA), alpha=0.35, img_size=128, seed=seed, out=str(tmp / f"source-s{seed}")),
                    echo=quiet)
        rep = adapt(src.run_dir, AdaptOptions(target=str(unl), target_labels=str(lab), seed=seed,
                                              out=str(tmp / f"adapted-s{seed}")), echo=quiet)
        c = rep["candidates"]
        res = {"seed": seed, "chosen": rep["chosen"], "why": rep["why"],
               "clean": {m: c[m]["source"]["accuracy"] for m in METHODS},
               "night": {m: c[m]["target"]["accuracy"] for m in METHODS},
               "label_free": {m: c[m]["label_free"] for m in METHODS}, "seconds": rep["seconds"]}
        results.append(res)
        print(f"seed {seed}: " + "  ".join(f"{m} clean {res['clean'][m]:.3f} night {res['night'][m]:.3f}" for m in METHODS)
              + f"  -> chosen {rep['chosen']} ({rep['seconds']:.0f} s)", flush=True)
    print("\n" + summary(results), flush=True)
    out = {"results": results}
    if a.robustness:
        for name in ("source-s1", "adapted-s1"):
            t = robustness(tmp / name)
            out[f"robustness_{name}"] = t
            print(f"\nrobustness of {name} (hymenoptera val, 153 photos):\n{t}", flush=True)
    cols, rows, verdicts = summary_table(results)
    rec.write(results, {**out, "verdicts": verdicts, "table": {"columns": cols, "rows": rows, "notes": verdicts}})
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
