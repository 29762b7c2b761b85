"""Photo sets of any size from real photos: random crops, rotations and colour changes of the
hymenoptera photos (../shared), saved as 320x240 JPEGs (the issue's photos).

DATA/train/<class>/ holds N photos made from hymenoptera's training photos, DATA/val/<class>/
N/8 made from its validation photos, so no source photo is on both sides of the split.
Deterministic: the photo at index i of a split depends only on (seed, split, i).

    python bench/scale_photos.py OUT N [--seed 0]
"""
from __future__ import annotations

import argparse
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

ROOT = Path(__file__).resolve().parents[1]
HYMENOPTERA = ROOT.parent / "shared" / "datasets" / "hymenoptera"
CLASSES = ("ants", "bees")
W, H = 320, 240


def _sources(split: str) -> list[tuple[str, int]]:
    out = []
    for k, c in enumerate(CLASSES):
        for p in sorted((HYMENOPTERA / split / c).iterdir()):
            if p.suffix.lower() in (".jpg", ".jpeg"):
                out.append((str(p), k))
    return out


_SRC: dict[str, list] = {}


def _source_image(path: str) -> Image.Image:
    im = _SRC.get(path)
    if im is None:
        with Image.open(path) as f:
            im = f.convert("RGB")
            im.thumbnail((640, 640))
        if len(_SRC) > 64:
            _SRC.clear()
        _SRC[path] = im
    return im


def make_photo(src: str, rng: np.random.Generator) -> Image.Image:
    im = _source_image(src)
    im = im.rotate(float(rng.uniform(-25, 25)), resample=Image.Resampling.BILINEAR, expand=False)
    w, h = im.size
    s = float(rng.uniform(0.55, 1.0))
    cw, ch = max(16, int(w * s)), max(16, int(h * s))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    im = im.crop((x0, y0, x0 + cw, y0 + ch))
    if rng.random() < 0.5:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    im = ImageEnhance.Brightness(im).enhance(float(rng.uniform(0.7, 1.3)))
    im = ImageEnhance.Contrast(im).enhance(float(rng.uniform(0.7, 1.3)))
    im = ImageEnhance.Color(im).enhance(float(rng.uniform(0.6, 1.4)))
    return im.resize((W, H), Image.Resampling.BILINEAR)


def _write(job) -> int:
    out, split, seed, lo, hi = job
    src = _sources(split)
    for i in range(lo, hi):
        rng = np.random.default_rng([seed, 0 if split == "train" else 1, i])
        path, k = src[int(rng.integers(len(src)))]
        f = Path(out) / ("train" if split == "train" else "val") / CLASSES[k] / f"{i:06d}.jpg"
        if not f.exists():
            make_photo(path, rng).save(f, quality=int(rng.integers(80, 93)))
    return hi - lo


def make_set(out, n: int, seed: int = 0, n_val: int | None = None, workers: int | None = None) -> Path:
    out = Path(out)
    n_val = max(8, n // 8) if n_val is None else n_val
    for s in ("train", "val"):
        for c in CLASSES:
            (out / s / c).mkdir(parents=True, exist_ok=True)
    jobs = [(str(out), "train", seed, lo, min(n, lo + 500)) for lo in range(0, n, 500)]
    jobs += [(str(out), "val", seed, lo, min(n_val, lo + 500)) for lo in range(0, n_val, 500)]
    with ProcessPoolExecutor(workers or os.cpu_count() or 1) as pool:
        list(pool.map(_write, jobs))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("n", type=int)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(make_set(a.out, a.n, a.seed))


if __name__ == "__main__":
    main()
