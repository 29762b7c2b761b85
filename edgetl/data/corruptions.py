"""Common image corruptions, numpy and Pillow only: pure functions from an RGB uint8
image (H, W, 3) to another of the same shape, deterministic for a given seed.

Each corruption has three severities (1 mild, 2 moderate, 3 strong), modelled on
ImageNet-C (Hendrycks & Dietterich, 2019) and scaled to the image's size where the
effect depends on it (blur). ``night`` composes several into the "phone camera at
night" shift of the adaptation benchmark: darker, noisy, slightly blurred and
saved as a low-quality JPEG."""
from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

SEVERITIES = (1, 2, 3)


def _check(img: np.ndarray, severity: int) -> np.ndarray:
    a = np.asarray(img)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {a.shape}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity}")
    return a


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def gaussian_noise(img: np.ndarray, severity: int = 1, seed: int = 0) -> np.ndarray:
    """Additive Gaussian noise, sigma 0.08 / 0.12 / 0.18 of the range (ImageNet-C 1-3)."""
    a = _check(img, severity)
    sigma = (0.08, 0.12, 0.18)[severity - 1] * 255.0
    rng = np.random.default_rng(seed)
    return _u8(a.astype(np.float32) + rng.normal(0.0, sigma, a.shape).astype(np.float32))


def blur(img: np.ndarray, severity: int = 1, seed: int = 0) -> np.ndarray:
    """Gaussian blur, sigma 1 / 2 / 3 px at 224 px, scaled to the image's shorter side."""
    a = _check(img, severity)
    radius = (1.0, 2.0, 3.0)[severity - 1] * min(a.shape[:2]) / 224.0
    return np.asarray(Image.fromarray(a).filter(ImageFilter.GaussianBlur(radius)), dtype=np.uint8)


def low_light(img: np.ndarray, severity: int = 1, seed: int = 0) -> np.ndarray:
    """Less light: intensities scaled by 0.5 / 0.3 / 0.18 after a gamma of 1.2 (shadows sink first)."""
    a = _check(img, severity)
    gain = (0.5, 0.3, 0.18)[severity - 1]
    return _u8(255.0 * gain * (a.astype(np.float32) / 255.0) ** 1.2)


def contrast(img: np.ndarray, severity: int = 1, seed: int = 0) -> np.ndarray:
    """Contrast pulled toward the image's mean by 0.4 / 0.3 / 0.2 (ImageNet-C 1-3)."""
    a = _check(img, severity)
    c = (0.4, 0.3, 0.2)[severity - 1]
    x = a.astype(np.float32)
    m = x.mean(axis=(0, 1), keepdims=True)
    return _u8((x - m) * c + m)


def jpeg(img: np.ndarray, severity: int = 1, seed: int = 0) -> np.ndarray:
    """Re-encoded as JPEG at quality 25 / 15 / 8."""
    a = _check(img, severity)
    return jpeg_quality(a, (25, 15, 8)[severity - 1])


def jpeg_quality(img: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(img, np.uint8)).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


CORRUPTIONS: dict[str, Callable[..., np.ndarray]] = {
    "gaussian_noise": gaussian_noise,
    "blur": blur,
    "low_light": low_light,
    "contrast": contrast,
    "jpeg": jpeg,
}


def corrupt(img: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; use one of {', '.join(CORRUPTIONS)}")
    return CORRUPTIONS[name](img, severity, seed)


def corrupt_batch(images: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """Every image of a batch (N, H, W, 3), image i seeded with seed + i."""
    return np.stack([corrupt(im, name, severity, seed + i) for i, im in enumerate(images)]) if len(images) \
        else np.asarray(images)


def night(img: np.ndarray, seed: int = 0, gain: float = 0.35, noise: float = 0.035, blur_px: float = 1.0,
          quality: int = 15) -> np.ndarray:
    """A phone camera at night: about a third of the light with a slightly cool cast, sensor noise
    (luminance and coarser chroma noise, both scaled to the image's size so they survive
    downscaling), a slight blur, and a low-quality JPEG."""
    a = np.asarray(img)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {a.shape}")
    rng = np.random.default_rng(seed)
    h, w = a.shape[:2]
    x = a.astype(np.float32) / 255.0
    x = gain * x ** 1.3 * np.array([0.9, 0.95, 1.1], np.float32)
    scale = max(1, round(min(h, w) / 128))  # noise grain of about one pixel at 128 px
    gh, gw = -(-h // scale), -(-w // scale)
    lum = rng.normal(0.0, noise, (gh, gw, 1)).astype(np.float32)
    chroma = rng.normal(0.0, noise * 0.6, (gh, gw, 3)).astype(np.float32)
    grain = np.repeat(np.repeat(lum + chroma, scale, 0), scale, 1)[:h, :w]
    x = x + grain
    out = Image.fromarray(_u8(255.0 * x))
    if blur_px:
        out = out.filter(ImageFilter.GaussianBlur(blur_px * scale))
    return jpeg_quality(np.asarray(out), quality)
