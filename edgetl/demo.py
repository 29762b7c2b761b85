"""`edgetl demo`: the real pipeline (`edgetl run`) on a built-in config over
scikit-learn's handwritten digits, offline, on 2 CPU cores: a larger teacher
trained on its own labelled pool, a compact student that has 20 other labels per
class and a third pool as an unlabelled transfer set (no label reaches the student
through the teacher), calibration, export of every format and mode, verification
against an untouched test split, and a model card."""
from __future__ import annotations

import os
import time
from pathlib import Path

from edgetl import artifacts, formats, rundir
from edgetl.demo_data import demo_weights, write_digits_pools

LABELS_PER_CLASS = 20    # the student's labels
TEACHER_PER_CLASS = 40   # the teacher's own labelled pool, disjoint from the student's and the transfer set


def demo_config(data: str, out: str, teacher: str, unlabeled: str, weights: str, alpha: float,
                quick: bool) -> dict:
    return {
        "data": str(data),
        "out": str(out),
        # few labelled images: an epoch is a handful of steps, so more epochs (early stopping ends them)
        "train": {"backbone": "mobilenetv2", "alpha": alpha, "img_size": 48, "weights": weights,
                  "epochs_head": 6 if quick else 60, "epochs_finetune": 1 if quick else 8, "views": 2 if quick else 3,
                  "augment": "rotate,zoom,translate,contrast", "patience": 8, "seed": 42,
                  # --quick: a smoke run; the auto recipe's search and step budget are for real runs
                  "recipe": "fixed" if quick else "auto"},
        "distill": {"teacher": str(teacher), "kd_alpha": 0.5, "temperature": 4.0, "unlabeled": str(unlabeled)},
        "calibrate": {"size": 100},
        "export": {"formats": list(formats.DEFAULT), "quants": ["fp32", "fp16", "dynamic", "int8"],
                   "max_drop": 2.0},
        "verify": {"threads": 2, "max_drop": 2.0, "min_agreement": 0.95, "runs": 100},
    }


def run_demo(out="models/demo", quick: bool = False, echo=print) -> dict:
    from edgetl.config import TrainConfig
    from edgetl.pipeline import run
    from edgetl.training.train import train

    t0 = time.perf_counter()
    out = Path(out)
    pools = write_digits_pools(out.parent / "demo-digits", LABELS_PER_CLASS, TEACHER_PER_CLASS)
    full, data, unlabeled = pools.teacher, pools.student, pools.transfer
    if quick:  # a smaller transfer set
        unlabeled = _subset(unlabeled, out.parent / "demo-digits" / "transfer-quick", every=8)
    echo(f"demo data: scikit-learn's handwritten digits as RGB images in {full.parent}, in disjoint pools: the "
         f"teacher learns from its own {TEACHER_PER_CLASS} labels per class ({full}), the student from "
         f"{LABELS_PER_CLASS} other labels per class ({data}) plus an unlabelled transfer set from a third pool "
         f"({unlabeled}), whose labels no model sees; all are scored on the same untouched test images")
    weights, alpha = demo_weights(echo)
    teacher = out.parent / (out.name + "-teacher")
    if not rundir.is_finished(teacher):
        echo(f"== teacher: MobileNetV2 alpha 1.0 at 96 px with a dense head, on its own labels -> {teacher}")
        t_w, t_a = ("imagenet", 1.0) if weights == "imagenet" else ("none", 1.0)
        from edgetl import backbones
        from edgetl.nets.weights import cached_weight_file

        if t_w == "imagenet" and cached_weight_file(backbones.get("mobilenetv2"), 1.0, 96) is None:
            t_w, t_a = weights, alpha
        train(TrainConfig(data=str(full), out=str(teacher), alpha=t_a, img_size=96, weights=t_w, dense=128,
                          epochs_head=6 if quick else 25, epochs_finetune=1 if quick else 4, views=2 if quick else 3,
                          augment="rotate,zoom,translate,contrast", seed=42,  # same val/test images as the student
                          recipe="fixed" if quick else "auto"), echo=echo)
    else:
        echo(f"== teacher: {teacher} (already trained)")
    cfg_path = out.parent / (out.name + ".yaml")
    # the pipeline takes relative paths from the YAML's folder: write them relative to it
    rel = lambda p: os.path.relpath(Path(p).resolve(), cfg_path.parent.resolve())  # noqa: E731
    artifacts.write_yaml(cfg_path, demo_config(rel(data), rel(out), rel(teacher), rel(unlabeled), weights, alpha, quick))
    echo(f"== pipeline: edgetl run {cfg_path}")
    res = run(cfg_path, echo=echo)
    echo(f"demo finished in {time.perf_counter() - t0:.0f}s; model card: {out / rundir.CARD}")
    return res


def _subset(src: Path, dest: Path, every: int) -> Path:
    import shutil

    if not dest.is_dir():
        with artifacts.atomic_path(dest, suffix="") as tmp:
            tmp.mkdir(parents=True)
            for f in sorted(src.iterdir())[::every]:
                shutil.copyfile(f, tmp / f.name)
    return dest
