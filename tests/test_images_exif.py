"""One image decoder everywhere a photo becomes an input: training, predict and verify decode through
edgetl/data/images.py (EXIF orientation applied), the bundle's check script gets images edgetl decoded, and the model
card's Python snippet decodes as training does: upright on EXIF-rotated phone photos (all eight orientations),
and within a stated tolerance of the JPEG draft decode on large photos."""
import os

import numpy as np
import pytest
from PIL import Image, ImageOps

from edgetl.data.images import load_rgb, open_rgb
from edgetl.report.snippets import PY_RESIZE

from common import HYMENOPTERA

# what a camera stores for each EXIF orientation, given the upright picture (the inverse of exif_transpose)
STORED = {
    1: lambda im: im,
    2: lambda im: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    3: lambda im: im.transpose(Image.Transpose.ROTATE_180),
    4: lambda im: im.transpose(Image.Transpose.FLIP_TOP_BOTTOM),
    5: lambda im: im.transpose(Image.Transpose.TRANSPOSE),
    6: lambda im: im.transpose(Image.Transpose.ROTATE_90),
    7: lambda im: im.transpose(Image.Transpose.TRANSVERSE),
    8: lambda im: im.transpose(Image.Transpose.ROTATE_270),
}
JPEG_TOL = 4.0  # mean |difference| (0-255) a quality-95 JPEG round trip of this smooth picture stays under


def upright(w=96, h=64) -> Image.Image:
    """A smooth picture whose every flip and rotation differs: red grows to the right, green downwards, a blue
    corner at the top left."""
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([255 * x / (w - 1), 255 * y / (h - 1), 255.0 * ((x < w // 3) & (y < h // 3))], -1)
    return Image.fromarray(a.astype(np.uint8))


def phone_photo(path, orientation: int) -> Image.Image:
    """A JPEG as a phone writes it: the stored pixels and an Orientation tag (EXIF 0x0112)."""
    up = upright()
    exif = Image.Exif()
    exif[0x0112] = orientation
    STORED[orientation](up).save(path, quality=95, exif=exif.tobytes())
    return up


def snippet(folder, mode: str, size: int) -> np.ndarray:
    """The model card's Python snippet, run as a user runs it on folder/photo.jpg."""
    ns: dict = {"Image": Image, "ImageOps": ImageOps}
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        exec(PY_RESIZE[mode].format(w=size, h=size), ns)
    finally:
        os.chdir(cwd)
    return np.asarray(ns["img"])


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_rotated_photo_decodes_upright_everywhere(tmp_path, orientation):
    up = phone_photo(tmp_path / "photo.jpg", orientation)
    with Image.open(tmp_path / "photo.jpg") as f:
        assert f.getexif()[0x0112] == orientation
    got = open_rgb(tmp_path / "photo.jpg")
    assert got.size == up.size
    assert np.abs(np.asarray(got, float) - np.asarray(up, float)).mean() < JPEG_TOL
    for mode in ("crop", "squash"):  # the card's snippet gives training's very input (same decoder, no draft here)
        train_input = load_rgb(tmp_path / "photo.jpg", 32, mode)
        np.testing.assert_array_equal(snippet(tmp_path, mode, 32), train_input)
        want = np.asarray(ImageOps.fit(up, (32, 32)) if mode == "crop" else up.resize((32, 32)), float)
        assert np.abs(train_input.astype(float) - want).mean() < 2 * JPEG_TOL  # upright, not rotated


# large photos: training decodes JPEGs with libjpeg's DCT scaling (draft) down to twice the input size, the
# snippet decodes in full; measured on the 10 photos below (upscaled 6x to 2,000-4,600 px): mean |difference|
# 0.1-1.6 (224 px) and 0.2-3.3 (128 px) of 255, 99th percentile at most 20
DRAFT_MEAN_TOL, DRAFT_P99_TOL = 4.0, 25.0


@pytest.mark.parametrize("size", [224, 128])
def test_draft_decode_and_card_snippet_agree_on_large_real_photos(tmp_path, size):
    if not HYMENOPTERA.is_dir():
        pytest.skip(f"needs ../shared hymenoptera photos; not found at {HYMENOPTERA}")
    files = sorted(HYMENOPTERA.rglob("*.jpg"))[::40][:10]
    assert len(files) == 10
    worst = []
    for f in files:
        im = ImageOps.exif_transpose(Image.open(f)).convert("RGB")
        big = im.resize((im.width * 6, im.height * 6), Image.Resampling.LANCZOS)  # a phone-sized photo
        big.save(tmp_path / "photo.jpg", quality=95)
        with Image.open(tmp_path / "photo.jpg") as g:
            g.draft("RGB", (2 * size, 2 * size))
            assert g.size[0] < big.width  # the draft decode does shrink these
        d = np.abs(load_rgb(tmp_path / "photo.jpg", size, "crop").astype(float) - snippet(tmp_path, "crop", size))
        worst.append((f.name, d.mean(), np.percentile(d, 99)))
    assert max(m for _, m, _ in worst) <= DRAFT_MEAN_TOL, worst
    assert max(p for _, _, p in worst) <= DRAFT_P99_TOL, worst
