"""One image decoder everywhere a photo becomes an input: training, predict and verify decode through
edgetl/data/images.py (EXIF orientation applied), the bundle's check script gets images edgetl decoded, and the model
card's Python snippet decodes as training does: upright on EXIF-rotated phone photos (all eight orientations),
and within a stated tolerance of the JPEG draft decode on large photos."""
import io
import os
import shutil
import zipfile

import numpy as np
import pytest
from PIL import Image, ImageOps

from edgetl.data.images import fit_size, load_rgb, open_rgb
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


# a real photo as a phone stores it. Quality 100 with 4:4:4 chroma and sides cut to whole 16-px blocks: the JPEG
# of the stored (flipped/rotated) pixels then holds the upright photo's own coefficients, so what differs between
# a decoder's input on it and on the upright JPEG is the orientation handling, not the encoder. Measured over the
# 6 photos and 8 orientations below (training's decoder and the snippet, 32 and 224 px): mean |difference| at most
# 0.10 of 255 (0 for orientation 1); the same decoder without exif_transpose differs by a mean of 19.7-80.8 on
# every orientation but 1.
REAL_MEAN_TOL = 1.0  # mean |difference| (0-255) between a decoder's input on the rotated and the upright file
PROB_TOL = 0.01  # largest difference of a class probability between the two


def real_photos(n: int) -> list[Image.Image]:
    if not HYMENOPTERA.is_dir():
        pytest.skip(f"needs ../shared hymenoptera photos; not found at {HYMENOPTERA}")
    files = sorted(HYMENOPTERA.rglob("*.jpg"))[::50][:n]
    out = []
    for f in files:
        im = ImageOps.exif_transpose(Image.open(f)).convert("RGB")
        out.append(im.crop((0, 0, im.width // 16 * 16, im.height // 16 * 16)))
    return out


def save_phone_jpeg(up: Image.Image, path, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    STORED[orientation](up).save(path, quality=100, subsampling=0, exif=exif.tobytes())


def _gap(a, b) -> float:
    return float(np.abs(np.asarray(a, float) - np.asarray(b, float)).mean())


@pytest.fixture(scope="module")
def onnx_run(tiny_run, tmp_path_factory):
    """The tiny run with an fp32 ONNX export (what the bundle ships)."""
    from edgetl.export.exporter import ExportOptions, export

    run = tmp_path_factory.mktemp("exif") / "run"
    shutil.copytree(tiny_run.run_dir, run, ignore=shutil.ignore_patterns("export"))
    export(run, ExportOptions(formats="onnx", quants="fp32", max_drop=100.0), echo=lambda *a, **k: None)
    return run


@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_real_rotated_phone_photo_gives_the_upright_input_through_every_decoder(onnx_run, tmp_path, monkeypatch,
                                                                                 orientation):
    """Six real photos, each stored rotated/flipped with the EXIF Orientation tag that restores it: training's
    decoder, `predict`, `verify --data`, the bundle's samples (what edgetl_check.py feeds the device models) and
    the model card's Python snippet each give the same input (and predict and the bundle the same probabilities)
    as on the upright JPEG."""
    from edgetl.export import bundle as bundle_mod
    from edgetl.rundir import open_run
    from edgetl.verify import predict as predict_mod
    from edgetl.verify.verifier import held_out_data

    run = open_run(onnx_run)
    size, mode = run.img_size, run.resize
    photos = real_photos(2 * len(run.labels))
    up_dir, rot_dir = tmp_path / "upright", tmp_path / "rotated"
    names = []
    for k, im in enumerate(photos):  # two photos in each of the run's class folders (verify --data wants them)
        name = f"{run.labels[k % len(run.labels)]}/photo{k}.jpg"
        save_phone_jpeg(im, up_dir / name, 1)
        save_phone_jpeg(im, rot_dir / name, orientation)
        names.append(name)
    with Image.open(rot_dir / names[0]) as f:
        assert f.getexif()[0x0112] == orientation

    # training's decoder (view cache, verify, bundle: load_rgb), at the run's size and at 224 px
    for s in (size, 224):
        for n in names:
            assert _gap(load_rgb(rot_dir / n, s, mode), load_rgb(up_dir / n, s, mode)) < REAL_MEAN_TOL, (s, n)
    if orientation != 1:  # the test can tell: the stored pixels are far from the upright input
        with Image.open(rot_dir / names[0]) as f:
            raw = np.asarray(fit_size(f.convert("RGB"), 224, mode))
        assert _gap(raw, load_rgb(up_dir / names[0], 224, mode)) > 10 * REAL_MEAN_TOL

    # predict: the tensor it feeds the model and the probabilities it reports
    seen: list[np.ndarray] = []
    real_open = predict_mod.open_runner

    def spying_runner(*a, **k):
        r = real_open(*a, **k)
        inner = r.predict
        r.predict = lambda x: (seen.append(np.array(x)), inner(x))[1]
        return r

    monkeypatch.setattr(predict_mod, "open_runner", spying_runner)
    res = predict_mod.predict(run.model_path, [up_dir / names[0], rot_dir / names[0]], top_k=len(run.labels))
    assert len(seen) == 2 and _gap(seen[1], seen[0]) < REAL_MEAN_TOL
    assert np.array_equal(seen[0][0], load_rgb(up_dir / names[0], size, mode))  # predict decodes as training does
    probs = [{t["label"]: t["probability"] for t in r["top"]} for r in res]
    assert max(abs(probs[1][c] - probs[0][c]) for c in run.labels) < PROB_TOL, probs

    # verify --data FOLDER: the images it scores
    xu, yu, _ = held_out_data(run, str(up_dir))
    xr, yr, _ = held_out_data(run, str(rot_dir))
    assert len(xu) == len(photos) and np.array_equal(yu, yr) and _gap(xr, xu) < REAL_MEAN_TOL

    # the bundle: samples.npz holds the images edgetl_check.py runs every device model on, and Keras' probabilities
    def bundle_of(folder):
        files = [str(folder / n) for n in names]
        labels = [run.labels.index(n.split("/")[0]) for n in names]
        monkeypatch.setattr(run, "held_out", lambda: ("test", files, labels))
        monkeypatch.setattr(bundle_mod, "open_run", lambda d: run)
        z = bundle_mod.bundle(run.dir, tmp_path / f"{folder.name}.zip", formats="onnx", samples=len(names),
                              echo=lambda *a, **k: None)
        with zipfile.ZipFile(z) as zf:
            member = next(m for m in zf.namelist() if m.endswith("samples.npz"))
            data = np.load(io.BytesIO(zf.read(member)))
            return data["images"], data["keras_probs"], data[next(k for k in data.files if k.startswith("ref_"))]
    (iu, ku, ou), (ir, kr, orr) = bundle_of(up_dir), bundle_of(rot_dir)
    assert _gap(ir, iu) < REAL_MEAN_TOL
    assert np.abs(kr - ku).max() < PROB_TOL and np.abs(orr - ou).max() < PROB_TOL

    # the model card's Python snippet, run as a user runs it, at the run's size and at 224 px
    for s in (size, 224):
        for n in names:
            shutil.copyfile(rot_dir / n, tmp_path / "photo.jpg")
            a = snippet(tmp_path, mode, s)
            shutil.copyfile(up_dir / n, tmp_path / "photo.jpg")
            assert _gap(a, snippet(tmp_path, mode, s)) < REAL_MEAN_TOL, (s, n)
