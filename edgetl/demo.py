"""`edgetl demo`: the real pipeline (`edgetl run`) on a built-in config over
scikit-learn's handwritten digits, offline, on 2 CPU cores: a larger teacher,
a distilled compact student, calibration, export of every format and mode,
verification, and a model card."""
from __future__ import annotations

import time
from pathlib import Path

from edgetl import artifacts
from edgetl.demo_data import demo_weights, write_digits


def demo_config(data: Path, out: Path, teacher: Path, weights: str, alpha: float, quick: bool) -> dict:
    return {
        "data": str(data),
        "out": str(out),
        "train": {"backbone": "mobilenetv2", "alpha": alpha, "img_size": 48, "weights": weights,
                  "epochs_head": 6 if quick else 25, "epochs_finetune": 1 if quick else 4, "views": 2 if quick else 3,
                  "augment": "rotate,zoom,translate,contrast", "seed": 42},
        "distill": {"teacher": str(teacher), "kd_alpha": 0.1, "temperature": 4.0},
        "calibrate": {"size": 100},
        "export": {"formats": ["tflite", "onnx"], "quants": ["fp32", "fp16", "dynamic", "int8"],
                   "max_drop": 2.0},
        "verify": {"threads": 2, "max_drop": 2.0, "min_agreement": 0.95, "runs": 100},
    }


def run_demo(out="models/demo", quick: bool = False, echo=print) -> dict:
    from edgetl.config import TrainConfig
    from edgetl.pipeline import run
    from edgetl.train import train

    t0 = time.perf_counter()
    out = Path(out)
    data = write_digits(out.parent / ("demo-digits-quick" if quick else "demo-digits"), per_class=30 if quick else None)
    echo(f"demo data: scikit-learn's handwritten digits as RGB images in {data}")
    weights, alpha = demo_weights(echo)
    teacher = out.parent / (out.name + "-teacher")
    if not (teacher / "manifest.json").exists():
        echo(f"== teacher: MobileNetV2 alpha 1.0 at 96 px with a dense head -> {teacher}")
        t_w, t_a = ("imagenet", 1.0) if weights == "imagenet" else ("none", 1.0)
        from edgetl.weights import cached_weight_file
        from edgetl import backbones

        if t_w == "imagenet" and cached_weight_file(backbones.get("mobilenetv2"), 1.0, 96) is None:
            t_w, t_a = weights, alpha
        train(TrainConfig(data=str(data), out=str(teacher), alpha=t_a, img_size=96, weights=t_w, dense=128,
                          epochs_head=6 if quick else 25, epochs_finetune=1 if quick else 4, views=2 if quick else 3,
                          augment="rotate,zoom,translate,contrast", seed=42), echo=echo)  # same split as the student
    else:
        echo(f"== teacher: {teacher} (already trained)")
    cfg_path = out.parent / (out.name + ".yaml")
    artifacts.write_yaml(cfg_path, demo_config(data, out, teacher, weights, alpha, quick))
    echo(f"== pipeline: edgetl run {cfg_path}")
    res = run(cfg_path, echo=echo)
    echo(f"demo finished in {time.perf_counter() - t0:.0f}s; model card: {out / 'MODEL_CARD.md'}")
    return res
