"""Tolerant image decoding: whatever the extension says, PNG/JPEG/GIF/BMP/WebP,
grayscale, palette, RGBA and 16-bit images all become 8-bit RGB."""
from __future__ import annotations

import contextlib
import os
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps


class BadImage(ValueError):
    """The file is not a decodable image; the message says why."""


MAX_PIXELS = 64_000_000  # decoded at most (after JPEG draft scaling): 8,000 x 8,000; a 48 MP phone photo fits


def max_pixels() -> int:
    """The pixel limit of one decoded image: MAX_PIXELS, or EDGETL_MAX_PIXELS when set."""
    try:
        return int(os.environ.get("EDGETL_MAX_PIXELS", "") or MAX_PIXELS)
    except ValueError:
        return MAX_PIXELS


_OPEN = threading.Lock()


@contextlib.contextmanager
def _header_only(path):
    """Image.open (which reads the header) with Pillow's own pixel guard lifted for that
    moment: :func:`open_rgb` checks the declared size itself, against :func:`max_pixels`, and
    says so with the numbers; Pillow's guard would refuse above 179 MP without them, and
    only warn below."""
    with _OPEN:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            f = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    with f:
        yield f


def _too_large(w: int, h: int, limit: int) -> BadImage:
    return BadImage(f"{w}x{h} px ({w * h / 1e6:,.0f} MP) is above the limit of {limit / 1e6:,.0f} MP an image is "
                    f"decoded at (a decompression bomb, or far more pixels than a model uses); downscale it, or "
                    f"raise EDGETL_MAX_PIXELS")


def open_rgb(path, min_size: int | None = None) -> Image.Image:
    """Decode ``path`` fully into an RGB PIL image, or raise BadImage with a reason.

    ``min_size``: JPEGs may be decoded at a reduced scale (libjpeg's DCT scaling,
    powers of two) as long as both sides stay at least this large; every byte of
    the file is still decoded, so truncation is still caught."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise BadImage(f"cannot read ({e.strerror})") from None
    if size == 0:
        raise BadImage("zero-byte file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with _header_only(path) as f:  # the size is known before any decoding
                if min_size and f.format == "JPEG":
                    f.draft("RGB", (min_size, min_size))
                limit = max_pixels()
                if f.size[0] * f.size[1] > limit:
                    raise _too_large(f.size[0], f.size[1], limit)
                f.load()  # full decode: catches truncated files
                return to_rgb(ImageOps.exif_transpose(f) or f)
    except BadImage:
        raise
    except Image.DecompressionBombError:
        raise BadImage(f"image too large to decode safely (above Pillow's limit of "
                       f"{(Image.MAX_IMAGE_PIXELS or 0) * 2 / 1e6:,.0f} MP)") from None
    except (OSError, SyntaxError, ValueError) as e:
        msg = str(e)
        if "cannot identify image file" in msg:
            raise BadImage("not an image file") from None
        if "truncated" in msg.lower():
            raise BadImage("truncated image") from None
        raise BadImage(f"undecodable ({msg.splitlines()[0][:80]})") from None


def to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        a = np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        a = np.clip(a * (255.0 if a.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, im).convert("RGB")
    return im.convert("RGB") if im.mode != "RGB" else im


RESIZE_MODES = ("crop", "squash")


def fit_size(im: Image.Image, size: int | tuple[int, int], mode: str = "crop") -> Image.Image:
    """Resize to ``size``: ``crop`` takes the central region of the target aspect
    ratio first (no distortion), ``squash`` stretches the whole image."""
    h, w = (size, size) if isinstance(size, int) else size
    if mode == "crop":
        W, H = im.size
        scale = min(W / w, H / h)
        cw, ch = w * scale, h * scale
        box = (max(0.0, (W - cw) / 2), max(0.0, (H - ch) / 2), min(float(W), (W + cw) / 2),
               min(float(H), (H + ch) / 2))
        return im.resize((w, h), Image.Resampling.BILINEAR, box=box)
    if im.size != (w, h):
        im = im.resize((w, h), Image.Resampling.BILINEAR)
    return im


def load_rgb(path, size: int | tuple[int, int], mode: str = "crop") -> np.ndarray:
    """RGB uint8 array of shape (H, W, 3) at ``size`` (see :func:`fit_size`)."""
    side = max(size) if isinstance(size, tuple) else size
    return np.asarray(fit_size(open_rgb(path, min_size=2 * side), size, mode), dtype=np.uint8)


def load_batch(paths, size: int, mode: str = "crop") -> np.ndarray:
    if not len(paths):
        return np.zeros((0, size, size, 3), np.uint8)
    return np.stack([load_rgb(p, size, mode) for p in paths])
