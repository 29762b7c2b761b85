"""Export and quantization: every format and mode converts, loads in its runtime
and agrees with Keras; int8 I/O; calibration; independence; skipping; budget; QAT."""
import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from edgetl.cli import main
from edgetl.export.exporter import ExportOptions, export
from edgetl.runtime.runners import KerasRunner, open_runner

from common import quiet


@pytest.fixture(scope="module")
def keras_ref(tiny_run, tiny_holdout):
    x, _ = tiny_holdout
    return KerasRunner(tiny_run.run_dir / "model.keras").predict(x)


def _compare(path, x, ref):
    p = open_runner(path, threads=2).predict(x)
    assert p.shape == ref.shape
    return float((p.argmax(1) == ref.argmax(1)).mean()), float(np.abs(p - ref).max())


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_fp32_matches_keras(tiny_exported, tiny_run, tiny_holdout, keras_ref, fmt):
    a = tiny_exported[(fmt, "fp32")]
    assert a.status == "written", a.reason
    agree, dmax = _compare(tiny_run.run_dir / a.file, tiny_holdout[0], keras_ref)
    assert agree == 1.0 and dmax <= 1e-4


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_fp16_within_1e2(tiny_exported, tiny_run, tiny_holdout, keras_ref, fmt):
    a = tiny_exported[(fmt, "fp16")]
    assert a.status == "written", a.reason
    agree, dmax = _compare(tiny_run.run_dir / a.file, tiny_holdout[0], keras_ref)
    assert dmax <= 1e-2 and agree >= 0.98


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_dynamic_range_agrees(tiny_exported, tiny_run, tiny_holdout, keras_ref, fmt):
    a = tiny_exported[(fmt, "dynamic")]
    assert a.status == "written", a.reason
    agree, _ = _compare(tiny_run.run_dir / a.file, tiny_holdout[0], keras_ref)
    assert agree >= 0.95


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_int8_agrees_95(tiny_exported, tiny_run, tiny_holdout, keras_ref, fmt):
    a = tiny_exported[(fmt, "int8")]
    assert a.status == "written", a.reason
    agree, _ = _compare(tiny_run.run_dir / a.file, tiny_holdout[0], keras_ref)
    assert agree >= 0.95
    assert a.remedies and a.remedies[0]["agreement"] is not None


def test_sizes_shrink(tiny_exported):
    s = {k: a.size_bytes for k, a in tiny_exported.items()}
    for fmt in ("tflite", "onnx"):
        assert s[(fmt, "int8")] < 0.45 * s[(fmt, "fp32")]
        assert s[(fmt, "fp16")] < 0.6 * s[(fmt, "fp32")]


def test_labels_and_preprocessing_travel(tiny_exported, tiny_run):
    d = tiny_run.run_dir
    side = json.loads((d / "export" / "model_int8.tflite.json").read_text())
    assert side["labels"] == ["blue", "green", "red"]
    assert side["input"]["range"] == [0, 255] and side["input"]["dtype"] == "float32"
    assert side["preprocessing"]["baked_in"] and side["preprocessing"]["mode"] == "tf"
    m = onnx.load(d / "export" / "model_fp32.onnx")
    props = {p.key: p.value for p in m.metadata_props}
    assert json.loads(props["labels"]) == ["blue", "green", "red"]
    assert json.loads(props["edgetl"])["preprocessing"]["baked_in"]
    assert m.opset_import[0].version >= 17
    dim = m.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_value == 0 and dim.dim_param  # dynamic batch
    assert open_runner(d / "export" / "model_fp32.onnx").labels == ["blue", "green", "red"]


def test_manifest_records_artifacts_and_rerun_skips(tiny_exported, tiny_run, tiny_calibration):
    man = json.loads((tiny_run.run_dir / "manifest.json").read_text())
    rows = {r["file"]: r for r in man["export"]["artifacts"]}
    assert len(rows) == 8 and all(len(r["sha256"]) == 64 and r["inputs_hash"] for r in rows.values())
    # the same inputs (the budget is one: every artifact is kept or refused by it)
    opts = ExportOptions(formats="tflite", quants="fp32", calibration=str(tiny_calibration), max_drop=100.0)
    again = export(tiny_run.run_dir, opts, echo=quiet)
    assert again[0].status == "skipped"
    forced = export(tiny_run.run_dir, ExportOptions(formats="tflite", quants="fp32", force=True), echo=quiet)
    assert forced[0].status == "written"


@pytest.mark.parametrize("io_type,dtype,zero_point", [("int8", np.int8, -128), ("uint8", np.uint8, 0)])
def test_int8_io_variants(tiny_run, tiny_calibration, tiny_holdout, keras_ref, tmp_path, io_type, dtype, zero_point):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, run)
    res = export(run, ExportOptions(formats="tflite", quants="int8", io_type=io_type,
                                    calibration=str(tiny_calibration), max_drop=100.0), echo=quiet)
    assert res[0].status == "written", res[0].reason
    r = open_runner(run / "export" / "model_int8.tflite")
    detail = r.interp.get_input_details()[0]
    assert detail["dtype"] == dtype
    if zero_point is not None:
        scale, zp = detail["quantization"]
        # 0..255 maps onto -128..127 (int8) or onto itself (uint8: raw pixels)
        assert zp == zero_point and scale == pytest.approx(1.0, rel=0.01)
    p = r.predict(tiny_holdout[0])
    assert (p.argmax(1) == keras_ref.argmax(1)).mean() >= 0.95
    assert p.min() >= 0 and p.sum(1) == pytest.approx(np.ones(len(p)), abs=0.05)


def test_calibrate_samples_training_images_only(tiny_data, tiny_calibration, tiny_run):
    man = json.loads((tiny_calibration / "manifest.json").read_text())
    assert man["size"] == 24
    per_class = {}
    for f in man["files"]:
        per_class[f["class"]] = per_class.get(f["class"], 0) + 1
    assert per_class == {"blue": 8, "green": 8, "red": 8}
    val = {r["file"] for r in json.loads((tiny_run.run_dir / "split.json").read_text())["val"]}
    assert not {f["source"] for f in man["files"]} & val


def test_calibration_overlap_is_refused(tiny_run, tmp_path):
    import shutil

    calib = tmp_path / "calib"
    (calib / "x").mkdir(parents=True)
    held = json.loads((tiny_run.run_dir / "split.json").read_text())["val"][0]["file"]
    shutil.copyfile(held, calib / "x" / "leak.png")
    r = CliRunner().invoke(main, ["export", str(tiny_run.run_dir), "--format", "tflite", "--quant", "int8",
                                  "--calibration", str(calib)])
    assert r.exit_code == 1, r.output
    assert "also in the run's held-out split" in r.output and "Traceback" not in r.output


def test_one_failing_format_leaves_the_others(tiny_run, tiny_calibration, tmp_path, monkeypatch):
    import shutil

    import edgetl.export.convert as C

    run = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, run)
    shutil.rmtree(run / "export", ignore_errors=True)

    def broken(*a, **k):
        raise RuntimeError("tf2onnx exploded")

    monkeypatch.setattr(C, "onnx_fp32", broken)
    r = CliRunner().invoke(main, ["export", str(run), "--quant", "fp32", "--calibration", str(tiny_calibration)])
    assert r.exit_code == 1
    assert "model_fp32.onnx: RuntimeError: tf2onnx exploded" in r.output
    assert (run / "export" / "model_fp32.tflite").exists() and not (run / "export" / "model_fp32.onnx").exists()
    assert not list((run / "export").glob(".*"))  # no temp files left


def test_int8_missing_the_budget_is_not_written(tiny_run, tiny_calibration, tmp_path, monkeypatch):
    import shutil

    from edgetl.export import exporter as E

    run = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, run)
    shutil.rmtree(run / "export", ignore_errors=True)

    def collapsed(self, data, a):
        from edgetl.stats import PairedDrop

        a.accuracy, a.keras_accuracy, a.agreement, a.drop_points = 0.3, 0.9, 0.3, 60.0
        return PairedDrop(100, 62, 2, 60.0, (50.0, 70.0), 52.0, 1e-15)

    monkeypatch.setattr(E.Exporter, "score", collapsed)
    monkeypatch.setattr(E.Exporter, "larger_calibration", lambda self, factor=2: None)
    lines = []
    res = export(run, ExportOptions(formats="onnx", quants="int8", calibration=str(tiny_calibration)),
                 echo=lines.append)
    a = res[0]
    assert a.status == "failed" and "misses the accuracy budget" in a.reason
    assert not (run / "export" / "model_int8.onnx").exists()
    steps = [r["step"] for r in a.remedies]
    assert any("calibration method entropy" in s for s in steps) and any("sensitive nodes" in s for s in steps)
    man = json.loads((run / "manifest.json").read_text())
    row = next(r for r in man["export"]["artifacts"] if r["file"] == "export/model_int8.onnx")
    assert row["status"] == "failed" and row["remedies"] == a.remedies


def test_bad_export_options(tiny_run):
    r = CliRunner().invoke(main, ["export", str(tiny_run.run_dir), "--formats", "coreml"])
    assert r.exit_code == 2 and "--formats coreml" in r.output
    r = CliRunner().invoke(main, ["export", "/nonexistent/run"])
    assert r.exit_code == 2 and "no such run directory" in r.output


def test_entropy_threshold_is_onnxruntimes_result_for_result():
    """edgetl's vectorised KL search returns exactly onnxruntime's ranges (same window, same
    clipping) on histograms as the entropy calibrator collects them: merged over batches
    whose range grows, ReLU-like (a spike at 0, one-sided), sparse, and at 2,048 bins."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    from edgetl.export.convert import entropy_threshold

    rng = np.random.default_rng(0)
    batches = {
        "growing": [rng.normal(0, s, 4000).astype("float32") for s in (0.5, 1.0, 3.0)],
        "relu": [np.maximum(rng.normal(0.2, 1.0, 5000), 0).astype("float32") for _ in range(2)],
        "sparse": [rng.choice([-2.0, 0.0, 0.1, 5.0], 3000).astype("float32")],
        "heavy tail": [rng.standard_t(2, 6000).astype("float32")],
    }
    for bins in (512, 2048):
        col = HistogramCollector("entropy", symmetric=False, num_bins=bins, num_quantized_bins=128,
                                 percentile=99.99, scenario="same")
        for name, arrays in batches.items():
            for a in arrays:
                col.collect({name: [a]})
        for name, hist in col.histogram_dict.items():
            want = col.get_entropy_threshold(hist, 128)
            got = entropy_threshold(hist, 128)
            assert (float(got[0]), float(got[1])) == (float(want[0]), float(want[1])), (bins, name, got, want)
            assert got[0].dtype == want[0].dtype


def _constant_onnx(size: int, n_classes: int) -> bytes:
    """A valid ONNX classifier with the export's input contract whose answer is always class 0."""
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", size, size, 3])
    y = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", n_classes])
    w = numpy_helper.from_array(np.zeros((size * size * 3, n_classes), np.float32), "w")
    b = numpy_helper.from_array(np.array([10.0] + [0.0] * (n_classes - 1), np.float32), "b")
    nodes = [helper.make_node("Flatten", ["image"], ["flat"], axis=1), helper.make_node("MatMul", ["flat", "w"], ["mm"]),
             helper.make_node("Add", ["mm", "b"], ["logits"]), helper.make_node("Softmax", ["logits"], ["probabilities"])]
    g = helper.make_graph(nodes, "broken", [x], [y], [w, b])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_every_mode_is_scored_and_a_broken_one_is_refused(tiny_run, tmp_path, monkeypatch):
    """fp32/fp16/dynamic are scored on val like int8: a converter that returns a model with
    wrong outputs gets the artifact refused (not written) and the reason recorded."""
    import shutil

    import edgetl.export.convert as C

    run = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, run, ignore=shutil.ignore_patterns("export"))
    real = C.convert

    def convert(src, fmt, quant, *a, **k):
        return _constant_onnx(32, 3) if (fmt, quant) == ("onnx", "dynamic") else real(src, fmt, quant, *a, **k)

    monkeypatch.setattr(C, "convert", convert)
    r = CliRunner().invoke(main, ["export", str(run), "--formats", "onnx", "--quants", "fp32,dynamic"])
    assert r.exit_code == 1, r.output
    assert "model_dynamic.onnx: dynamic misses the accuracy budget" in r.output and "Traceback" not in r.output
    assert not (run / "export" / "model_dynamic.onnx").exists()
    assert not (run / "export" / "model_dynamic.onnx.json").exists()
    man = json.loads((run / "manifest.json").read_text())
    rows = {a["file"]: a for a in man["export"]["artifacts"]}
    bad, good = rows["export/model_dynamic.onnx"], rows["export/model_fp32.onnx"]
    assert bad["status"] == "failed" and "misses the accuracy budget" in bad["reason"]
    assert bad["drop_points"] > 50 and bad["agreement"] < 0.5 and bad["settings"]["scored_on"] == "val"
    assert bad["remedies"][0]["kept"] is False
    # the faithful one is scored too, on the same split, and kept
    assert good["status"] == "written" and good["settings"]["scored_on"] == "val"
    assert good["agreement"] == 1.0 and good["drop_points"] == 0.0 and good["remedies"][0]["kept"] is True
