"""Bounded inputs: pipeline YAML and --set values within alias, depth and size limits; run
files edited by hand named (file and field) in one line by verify and predict; foreign ONNX
files with symbolic sizes or bad label metadata; images above a pixel limit skipped unread;
NaN and Infinity never written into JSON."""
import json
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from edgetl import artifacts, rundir
from edgetl.cli import main
from edgetl.config import TrainConfig
from edgetl.data.dataset import scan
from edgetl.data.images import BadImage, open_rgb

from synth import make_dataset


def _one_line_error(r, code: int = 2) -> str:
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output and (r.exception is None or isinstance(r.exception, SystemExit)), r.output
    err = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and len(err[0]) < 400, r.output
    return err[0]


# ---- pipeline YAML -------------------------------------------------------------------

BILLION_LAUGHS = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{c}: &{c} [" + ",".join([f"*{p}"] * 9) + "]\n" for p, c in zip("abcdefgh", "bcdefghi")) + "train:\n  seed: *i\n"


@pytest.mark.parametrize("name,text,expect", [
    ("bomb", BILLION_LAUGHS, "refused: expands to more than 10,000 values"),
    ("deep", "data: " + "[" * 50_000 + "]" * 50_000 + "\n", "refused: nested more than 32 levels deep (line 1)"),
    ("block-deep", "train:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 100)),
     "refused: nested more than 32 levels deep"),
    ("big-int", "data: x\ntrain:\n  seed: " + "9" * 5000 + "\n", "refused: an integer of 5,000 digits (at most 30) (line 3)"),
    ("big-string", "data: " + "x" * 20_000 + "\n", "refused: a value of 20,000 characters"),
])
def test_pipeline_yaml_bombs_are_one_line_fast(tmp_path, name, text, expect):
    p = tmp_path / f"{name}.yaml"
    p.write_text(text)
    t0 = time.perf_counter()
    r = CliRunner().invoke(main, ["run", str(p)])
    seconds = time.perf_counter() - t0
    line = _one_line_error(r)
    assert line.startswith(f"error: {p}: ") and expect in line, line
    assert seconds < 5, seconds  # milliseconds here (the bomb took 64-72 s and 3 GB unbounded); a loaded machine


@pytest.mark.parametrize("value,expect", [
    ("!!python/object/apply:os.system ['touch PWNED']", "could not determine a constructor for the tag"),
    ("[1, 2", "expected ',' or ']'"),
    ("9" * 5000, "an integer of 5,000 digits"),
])
def test_set_values_that_are_not_plain_data_are_one_line(tmp_path, monkeypatch, value, expect):
    monkeypatch.chdir(tmp_path)
    p = tmp_path / "p.yaml"
    p.write_text("data: data\n")
    r = CliRunner().invoke(main, ["run", str(p), "--set", f"train.alpha={value}"])
    line = _one_line_error(r)
    assert line.startswith("error: --set train.alpha=") and "is not plain YAML data" in line and expect in line, line
    assert not (tmp_path / "PWNED").exists()


# ---- run files edited by hand ----------------------------------------------------------

@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    """A finished run directory written by hand around a tiny Keras model with 3 outputs."""
    import keras

    d = tmp_path_factory.mktemp("edited") / "run"
    data = make_dataset(d.parent / "data", per_class=2, classes=("red", "green", "blue"), size=32)
    d.mkdir()
    x = keras.Input((32, 32, 3))
    y = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    keras.Model(x, y).save(d / rundir.MODEL)
    (d / rundir.LABELS).write_text("blue\ngreen\nred\n")
    (d / rundir.CONFIG).write_text(yaml.safe_dump(TrainConfig(data=str(data), img_size=32).to_dict()))
    files = sorted(data.rglob("*.png"))
    (d / rundir.SPLIT).write_text(json.dumps({"val": [{"file": str(f), "label": ["blue", "green", "red"].index(
        f.parent.name)} for f in files]}))
    rundir.update_manifest(d, "train", {"kind": "train"})
    return d, files


def _edited(fake_run, tmp_path, name, text):
    import shutil

    d = tmp_path / "run"
    shutil.copytree(fake_run[0], d)
    (d / name).write_text(text)
    return d


def test_labels_txt_with_fewer_labels_than_outputs(fake_run, tmp_path):
    d = _edited(fake_run, tmp_path, rundir.LABELS, "blue\ngreen\n")
    # something exported (verify refuses a run with nothing to verify first); the Keras reference is
    # scored before any export is opened, so the placeholder's bytes never matter
    (d / rundir.EXPORT).mkdir()
    (d / rundir.EXPORT / "model_fp32.onnx").write_bytes(b"not read")
    line = _one_line_error(CliRunner().invoke(main, ["verify", str(d), "--runs", "100"]))
    assert f"error: {d / rundir.LABELS}: 2 label(s), but model.keras has 3 outputs" in line, line
    line = _one_line_error(CliRunner().invoke(main, ["predict", str(d / rundir.MODEL), str(fake_run[1][0])]))
    assert f"error: {d / rundir.LABELS}: 2 label(s), but {d / rundir.MODEL} has 3 outputs" in line, line


def test_config_yaml_with_a_wrong_type(fake_run, tmp_path):
    cfg = yaml.safe_load((fake_run[0] / rundir.CONFIG).read_text())
    d = _edited(fake_run, tmp_path, rundir.CONFIG, yaml.safe_dump({**cfg, "img_size": "abc"}))
    line = _one_line_error(CliRunner().invoke(main, ["verify", str(d)]))
    assert line == (f"error: {d / rundir.CONFIG}: img_size = 'abc' has the wrong type (expected an integer or null); "
                    "it was edited: restore the value or train the run again"), line


def _onnx(path: Path, shape, labels_meta=None) -> Path:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [shape[0], 3])
    axes = helper.make_tensor("axes", TensorProto.INT64, [2], [1, 2])
    nodes = [helper.make_node("ReduceMean", ["image", "axes"], ["m"], keepdims=0),
             helper.make_node("Softmax", ["m"], ["probabilities"])]
    m = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [axes]), opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 8
    if labels_meta is not None:
        helper.set_model_props(m, {"labels": labels_meta})
    onnx.save(m, str(path))
    return path


def test_a_sidecar_whose_input_is_a_string(fake_run, tmp_path):
    model = _onnx(tmp_path / "model_fp32.onnx", ["N", 32, 32, 3])
    side = rundir.sidecar(model)
    side.write_text(json.dumps({"labels": ["blue", "green", "red"], "input": "abc"}))
    line = _one_line_error(CliRunner().invoke(main, ["predict", str(model), str(fake_run[1][0])]))
    assert line.startswith(f"error: {side}: input must be a mapping") and "export the model again" in line, line
    side.write_text(json.dumps({"labels": ["blue", "green", "red"], "input": {"resize": "crop"}}))
    r = CliRunner().invoke(main, ["predict", str(model), str(fake_run[1][0])])
    assert r.exit_code == 0, r.output  # the intact sidecar works


@pytest.mark.parametrize("shape,meta,expect", [
    (["N", "height", "width", 3], '["a", "b", "c"]', "has shape ['N', 'height', 'width', 3]; edgetl runs image models "
                                                     "with a fixed NHWC size"),
    (["N", 32, 32, 3], "not json", "(its 'labels' metadata): labels must be a list of strings"),
    (["N", 32, 32, 3], '{"a": 1}', "(its 'labels' metadata): labels must be a list of strings"),
])
def test_foreign_onnx_files(fake_run, tmp_path, shape, meta, expect):
    model = _onnx(tmp_path / "foreign.onnx", shape, meta)
    line = _one_line_error(CliRunner().invoke(main, ["predict", str(model), str(fake_run[1][0])]))
    assert expect in line, line


# ---- images above the pixel limit -------------------------------------------------------

def _png_header_only(path: Path, w: int, h: int, depth: int = 8, colour: int = 2) -> Path:
    """A PNG that declares w x h pixels and holds almost no data: what a decoder would have
    to allocate is known from its 33-byte header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def test_an_image_above_the_pixel_limit_is_skipped_unread(tmp_path):
    data = make_dataset(tmp_path / "data", per_class=3, classes=("red", "green"), size=32)
    _png_header_only(data / "red" / "scan.png", 20_000, 20_000)
    _png_header_only(data / "green" / "scan16.png", 12_000, 12_000, depth=16, colour=0)
    t0 = time.perf_counter()
    ds = scan(data, val_split=0.34, test_split=0)
    assert time.perf_counter() - t0 < 5
    reasons = dict(ds.skipped)
    assert reasons[str(data / "red" / "scan.png")].startswith(
        "20000x20000 px (400 MP) is above the limit of 64 MP an image is decoded at")
    assert "12000x12000 px (144 MP)" in reasons[str(data / "green" / "scan16.png")]
    assert len(ds.train) + len(ds.val) == 6


def test_the_pixel_limit_can_be_raised(tmp_path, monkeypatch):
    from PIL import Image

    p = tmp_path / "wide.png"
    Image.new("RGB", (3000, 10)).save(p)
    monkeypatch.setenv("EDGETL_MAX_PIXELS", "20000")
    with pytest.raises(BadImage, match=r"3000x10 px \(0 MP\) is above the limit of 0 MP"):
        open_rgb(p)
    monkeypatch.setenv("EDGETL_MAX_PIXELS", "40000")
    assert open_rgb(p).size == (3000, 10)


# ---- strict JSON ---------------------------------------------------------------------------

def test_nan_and_infinity_are_never_written_into_json(tmp_path):
    def refuse(name):
        raise AssertionError(f"{name} in the JSON")

    report = {"rows": [{"p50_ms": float("inf"), "acc": np.float32("nan"), "ok": 1.5}], "m": np.array([1.0, np.inf])}
    p = artifacts.write_json(tmp_path / "report.json", report, note=True)
    back = json.loads(p.read_text(), parse_constant=refuse)
    assert back["rows"][0] == {"p50_ms": None, "acc": None, "ok": 1.5} and back["m"] == [1.0, None]
    assert back["non_finite"]["fields"] == ["rows[0].p50_ms", "rows[0].acc", "m[1]"]
    plain = json.loads(artifacts.write_json(tmp_path / "x.json", {"a": float("nan")}).read_text(),
                       parse_constant=refuse)
    assert plain == {"a": None}
