"""`edgetl demo`: the workflow on embedded data, offline, on 2 CPU cores."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from edgetl.config import TrainConfig
from edgetl.demo_data import demo_weights, write_digits


def run_demo(out="models/demo", quick: bool = False, echo=print):
    t0 = time.perf_counter()
    out = Path(out)
    data = write_digits(out.parent / "demo-digits", per_class=40 if quick else None)
    echo(f"demo data: scikit-learn digits rendered as RGB images in {data}")
    weights, alpha = demo_weights(echo)
    if out.exists():
        shutil.rmtree(out)
    cfg = TrainConfig(data=str(data), backbone="mobilenetv2", alpha=alpha, img_size=64, weights=weights,
                      epochs_head=8 if quick else 25, epochs_finetune=1 if quick else 4, views=2 if quick else 3,
                      augment="rotate,zoom,translate,contrast", lr_finetune=1e-4, unfreeze=40, out=str(out))
    from edgetl.train import train

    result = train(cfg, echo=echo)
    echo(f"demo finished in {time.perf_counter() - t0:.0f}s")
    return result
