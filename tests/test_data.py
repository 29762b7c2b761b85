"""Data scan: tolerant decoding, skipped files, layout, split, and one-line errors."""
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgetl.cli import main
from edgetl.data.dataset import class_weights, scan
from edgetl.data.images import BadImage, load_rgb, open_rgb
from edgetl.errors import EdgetlError

from synth import make_dataset


def _png16(path, size=20):
    a = (np.arange(size * size, dtype=np.uint32).reshape(size, size) * 160).astype(np.uint16)
    Image.fromarray(a).save(path)
    assert Image.open(path).mode.startswith("I;16")


@pytest.fixture
def oddities(tmp_path):
    """One file of each kind a loader meets, in one class folder."""
    d = tmp_path / "odd"
    d.mkdir()
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (24, 30, 3), dtype=np.uint8))
    rgb.save(d / "good.jpg")
    rgb.save(d / "png_named.jpg", format="PNG")
    rgb.convert("P").save(d / "anim.gif")
    rgb.convert("L").save(d / "gray.png")
    rgba = rgb.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(d / "alpha.png")
    _png16(d / "deep16.png")
    rgb.save(d / "pic.bmp")
    rgb.save(d / "pic.webp")
    (d / "zero.jpg").write_bytes(b"")
    (d / "notes.jpg").write_text("this is not an image\n")
    full = (d / "good.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(full[: len(full) // 2])
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(rng.integers(0, 255, 200, dtype=np.uint8)))
    return d


GOOD = ["good.jpg", "png_named.jpg", "anim.gif", "gray.png", "alpha.png", "deep16.png", "pic.bmp", "pic.webp"]
BAD = {"zero.jpg": "zero-byte", "notes.jpg": "not an image", "truncated.jpg": "truncated", "corrupt.png": "not an image|undecodable|truncated"}


@pytest.mark.parametrize("name", GOOD)
def test_every_readable_kind_becomes_rgb(oddities, name):
    a = load_rgb(oddities / name, 16)
    assert a.shape == (16, 16, 3) and a.dtype == np.uint8


def test_16bit_png_keeps_its_range(oddities):
    a = np.asarray(open_rgb(oddities / "deep16.png"))
    assert a.max() > 200 and a.min() < 10  # scaled from 16 to 8 bits, not clipped to white


def test_rgba_is_composited_on_white(tmp_path):
    im = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    im.save(tmp_path / "clear.png")
    assert np.asarray(open_rgb(tmp_path / "clear.png")).min() == 255


@pytest.mark.parametrize("name,reason", BAD.items())
def test_bad_files_raise_with_reason(oddities, name, reason):
    with pytest.raises(BadImage, match=reason):
        open_rgb(oddities / name)


def test_scan_skips_bad_files_and_names_each(tmp_path, oddities):
    root = make_dataset(tmp_path / "data", per_class=3)
    for f in oddities.iterdir():
        (root / "red" / f.name).write_bytes(f.read_bytes())
    ds = scan(root, val_split=0.25, seed=0)
    skipped = {Path(f).name: why for f, why in ds.skipped}
    assert set(skipped) == set(BAD)
    assert skipped["zero.jpg"] == "zero-byte file"
    assert ds.train.counts(3)[ds.classes.index("red")] + ds.val.counts(3)[ds.classes.index("red")] == 3 + len(GOOD)


def _cli(*args):
    return CliRunner().invoke(main, list(args))


def test_strict_fails_on_first_bad_file(tmp_path, oddities):
    root = make_dataset(tmp_path / "data", per_class=3)
    (root / "red" / "zero.jpg").write_bytes(b"")
    r = _cli("train", str(root), "--strict", "--weights", "none")
    assert r.exit_code == 2
    assert "zero.jpg: zero-byte file" in r.output and "--strict" in r.output
    assert "Traceback" not in r.output


@pytest.mark.parametrize("case,expect", [
    ("empty_folder", "no images found"),
    ("single_class", "only one class ('red')"),
    ("empty_class", "class 'blue' has 0 usable image(s)"),
    ("one_image_class", "class 'blue' has 1 usable image(s)"),
    ("missing", "no such folder"),
    ("all_bad_class", "class 'blue' has 0 usable image(s)"),
])
def test_dataset_errors_are_one_line_exit_2(tmp_path, case, expect):
    root = tmp_path / "data"
    if case == "empty_folder":
        root.mkdir()
    elif case == "single_class":
        make_dataset(root, per_class=3, classes=("red",))
    elif case == "empty_class":
        make_dataset(root, per_class=3, classes=("red", "green"))
        (root / "blue").mkdir()
    elif case == "one_image_class":
        make_dataset(root, per_class=3, classes=("red", "green"))
        make_dataset(root, per_class=1, classes=("blue",))
    elif case == "all_bad_class":
        make_dataset(root, per_class=3, classes=("red", "green"))
        (root / "blue").mkdir()
        (root / "blue" / "a.jpg").write_text("nope")
        (root / "blue" / "b.jpg").write_bytes(b"")
    r = _cli("train", str(root), "--weights", "none", "--out", str(tmp_path / "run"))
    assert r.exit_code == 2, r.output
    lines = [l for l in r.output.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and expect in lines[0], r.output
    assert "Traceback" not in r.output
    assert not (tmp_path / "run" / "model.keras").exists()


def test_train_val_layout_and_test_split(tmp_path):
    root = tmp_path / "data"
    make_dataset(root / "train", per_class=5, seed=1)
    make_dataset(root / "val", per_class=2, seed=2)
    make_dataset(root / "test", per_class=3, seed=3)
    ds = scan(root)
    assert ds.layout == "train/val"
    assert ds.classes == ["blue", "green", "red"]
    assert (len(ds.train), len(ds.val), len(ds.test)) == (15, 6, 9)
    assert ds.held_out is ds.test


def test_val_class_not_in_train_is_refused(tmp_path):
    root = tmp_path / "data"
    make_dataset(root / "train", per_class=3, classes=("red", "green"))
    make_dataset(root / "val", per_class=2, classes=("red", "green", "blue"))
    with pytest.raises(EdgetlError, match=r"classes \['blue'\] are not in train/"):
        scan(root)


def test_split_is_stratified_and_seeded(tmp_path):
    root = make_dataset(tmp_path / "data", per_class=10)
    a, b, c = scan(root, 0.2, seed=7), scan(root, 0.2, seed=7), scan(root, 0.2, seed=8)
    assert a.val.paths == b.val.paths and a.val.paths != c.val.paths
    assert a.val.counts(3) == [2, 2, 2] and a.train.counts(3) == [8, 8, 8]
    assert not set(a.val.paths) & set(a.train.paths)


def test_imbalance_and_auto_class_weights(tmp_path):
    root = tmp_path / "data"
    make_dataset(root, per_class=12, classes=("red",))
    make_dataset(root, per_class=4, classes=("green",), seed=3)
    ds = scan(root, 0.25, seed=0)
    assert ds.imbalance() == pytest.approx(3.0)
    w = class_weights(ds)
    counts = ds.train.counts(2)
    # balanced: every class carries the same total weight
    assert w[0] * counts[0] == pytest.approx(w[1] * counts[1])


def test_hidden_files_and_folders_are_not_images_of_the_class(tmp_path):
    """Jupyter's .ipynb_checkpoints (copies of the class's photos), thumbnails and dot-files
    inside a class folder are passed over, in training data and in unlabelled folders alike."""
    from edgetl.data.dataset import readable_images

    root = make_dataset(tmp_path / "data", per_class=3, classes=("red", "green"))
    make_dataset(root / "red" / ".ipynb_checkpoints", per_class=2, classes=("green",))
    make_dataset(root / ".thumbnails", per_class=2, classes=("red",))
    (root / "green" / ".hidden.png").write_bytes((next((root / "green").iterdir())).read_bytes())
    ds = scan(root, val_split=0.34, seed=0, test_split=0)
    files = [str(f) for f in ds.train.paths + ds.val.paths]
    assert len(files) == 6 and not any("/." in f for f in files), files
    assert ds.classes == ["green", "red"] and ds.nested == []
    assert len(readable_images(root)) == 6
