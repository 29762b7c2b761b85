"""Small synthetic image sets for tests: colour-coded classes with shapes and noise."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"red": (200, 40, 40), "green": (40, 170, 60), "blue": (40, 60, 200), "yellow": (210, 200, 40)}


def make_image(rng, colour, size=48):
    bg = np.array(colour) * rng.uniform(0.6, 1.0) + rng.normal(0, 12, (size, size, 3))
    im = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(im)
    for _ in range(2):
        x, y = rng.integers(0, size - 12, 2)
        r = int(rng.integers(5, 12))
        shade = tuple(int(v) for v in rng.integers(0, 255, 3))
        d.ellipse([x, y, x + r, y + r], fill=shade)
    return im


def make_dataset(root, per_class=16, classes=("red", "green", "blue"), size=48, seed=0, fmt="png") -> Path:
    rng = np.random.default_rng(seed)
    root = Path(root)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            make_image(rng, COLOURS[c], size).save(root / c / f"{c}_{i:03d}.{fmt}")
    return root


def make_jittered(root, counts: dict[str, int], bases: dict[str, tuple[int, int, int]], jitter: float, seed: int = 0,
                  size: int = 48) -> Path:
    """Classes whose colours overlap: each image's colour is its class's base colour plus
    Gaussian jitter (sd ``jitter`` per channel), so a classifier has a real boundary to place
    and class priors move it. ``counts``: images per class (imbalanced on purpose)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for c, n in counts.items():
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            colour = tuple(np.clip(np.array(bases[c]) + rng.normal(0, jitter, 3), 0, 255))
            make_image(rng, colour, size).save(root / c / f"{c}_{i:03d}.png")
    return root


def make_scene(rng, size=64, tint=(128, 128, 128)):
    """A photo-like synthetic image: a smooth two-colour gradient and a composition of random shapes
    (no per-pixel noise), so that two scenes differ as two photos do, and a crop or a re-encode of a
    scene stays close to it."""
    from PIL import ImageFilter

    a, b = (np.clip(np.array(tint) + rng.normal(0, 60, 3), 0, 255) for _ in range(2))
    t = np.linspace(0, 1, size)[:, None, None]
    angle = rng.uniform(0, 1)
    ramp = angle * t + (1 - angle) * t.transpose(1, 0, 2)
    im = Image.fromarray((a * (1 - ramp) + b * ramp).astype(np.uint8))
    d = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(4, 8))):
        x0, y0 = (int(v) for v in rng.integers(-size // 4, size, 2))
        w, h = (int(v) for v in rng.integers(size // 8, size // 2, 2))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        kind = rng.integers(0, 3)
        if kind == 0:
            d.ellipse([x0, y0, x0 + w, y0 + h], fill=fill)
        elif kind == 1:
            d.rectangle([x0, y0, x0 + w, y0 + h], fill=fill)
        else:
            d.line([x0, y0, x0 + w, y0 + h], fill=fill, width=int(rng.integers(2, 6)))
    return im.filter(ImageFilter.GaussianBlur(0.6))


def make_scenes(root, per_class=12, classes=("red", "green", "blue"), size=64, seed=0) -> Path:
    """Folders of :func:`make_scene` images, tinted by class colour."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            make_scene(rng, size, COLOURS[c]).save(root / c / f"{c}_{i:03d}.png")
    return root
