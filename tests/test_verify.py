"""Verify, predict and the device bundle, all through the one Runner interface."""
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner

from edgetl.cli import main
from edgetl.config import VerifyOptions
from edgetl.verify.verifier import verify

from common import quiet


@pytest.fixture(scope="module")
def report(tiny_exported, tiny_run, tiny_holdout_dir, tmp_path_factory):
    """verify with its real gates (the defaults: --max-drop 1, --min-agreement 0.95) on the
    60 held-out images of the tiny task, so that an agreement gate can bite (3 of 60)."""
    out = tmp_path_factory.mktemp("report")
    return verify(tiny_run.run_dir, VerifyOptions(threads=1, runs=100, data=str(tiny_holdout_dir), out=str(out)),
                  echo=quiet), out


def test_one_row_per_artifact_with_every_column(report, tiny_run):
    rep, out = report
    names = [r["artifact"] for r in rep["rows"] if not r.get("extra_runtime")]
    assert names[0] == "model.keras" and len(names) == 9
    assert set(names[1:]) == {f"model_{q}.{f}" for q in ("fp32", "fp16", "dynamic", "int8") for f in ("tflite", "onnx")}
    # MediaPipe Tasks runs every .tflite file as an app would: a row each, right after its LiteRT row
    mp = [r for r in rep["rows"] if r.get("extra_runtime")]
    if not rep["skipped"]:
        assert [r["artifact"] for r in mp] == sorted(n for n in names if n.endswith(".tflite"))
        litert = {r["artifact"]: r for r in rep["rows"] if r["artifact"].endswith(".tflite") and not r.get("extra_runtime")}
        for r in mp:  # the app runtime on the same file: as good as the gate asks, within 2 of 60 images of LiteRT
            assert r["runtime"] == "mediapipe" and r["agreement"] >= 0.95, r
            assert abs(r["agreement"] - litert[r["artifact"]]["agreement"]) <= 2 / 60 + 1e-9, r
    else:
        assert not mp and all("mediapipe is not installed" in s for s in rep["skipped"])
    for r in rep["rows"]:
        for k in ("size_bytes", "accuracy", "delta_accuracy_points", "agreement", "max_abs_dprob", "mean_abs_dprob",
                  "p50_ms", "p90_ms", "p99_ms", "throughput_ips", "memory_mb", "status"):
            assert r.get(k) is not None, (r["artifact"], k)
        assert r["runs"] >= 100 and r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
    assert rep["machine"]["cores"] and rep["machine"]["cpu"] and "onnxruntime" in rep["machine"]["runtimes"]
    assert rep["threads"] == 1


def test_every_artifact_passes_the_real_gates(report):
    rep, _ = report
    assert rep["gates"]["max_drop"] == 1.0 and rep["gates"]["min_agreement"] == 0.95
    assert rep["n_images"] == 60 and rep["passed"]
    for r in rep["rows"][1:]:
        assert r["status"] == "pass" and r["failed_gates"] == [], (r["artifact"], r["failed_gates"])
        assert r["agreement"] >= 0.95 and r["paired"]["n"] == 60


def _rotate_classes(src, dest) -> None:
    """An ONNX model whose outputs are the source's with the classes rotated (blue -> green ->
    red -> blue): a plausible-looking artifact that is wrong on every image."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load(src)
    out = m.graph.output[0].name
    for node in m.graph.node:
        node.output[:] = [o + "_unrotated" if o == out else o for o in node.output]
    m.graph.initializer.append(numpy_helper.from_array(np.array([1, 2, 0], np.int64), "rotation"))
    m.graph.node.append(helper.make_node("Gather", [out + "_unrotated", "rotation"], [out], axis=1))
    onnx.checker.check_model(m)
    onnx.save(m, dest)


def test_a_wrong_artifact_fails_the_accuracy_gates(tiny_exported, tiny_run, tiny_holdout_dir, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, run, ignore=shutil.ignore_patterns("model_*"))
    for f in ("model_fp32.tflite", "model_fp32.onnx"):
        shutil.copyfile(tiny_run.run_dir / "export" / f, run / "export" / f)
    _rotate_classes(tiny_run.run_dir / "export" / "model_fp32.onnx", run / "export" / "model_fp32.onnx")
    r = CliRunner().invoke(main, ["verify", str(run), "--threads", "1", "--data", str(tiny_holdout_dir),
                                  "--out", str(tmp_path / "rep")])
    assert r.exit_code == 1, r.output
    rows = {row["artifact"]: row for row in json.loads((tmp_path / "rep" / "report.json").read_text())["rows"]}
    assert rows["model_fp32.tflite"]["status"] == "pass"
    bad = rows["model_fp32.onnx"]
    assert bad["status"] == "fail" and bad["agreement"] == 0.0
    assert [g.split(" ")[0] for g in bad["failed_gates"]] == ["max-drop", "min-agreement"], bad["failed_gates"]
    assert "gate failed: model_fp32.onnx: max-drop" in r.output and "model_fp32.tflite" not in r.output.split(
        "gate failed")[1]


def test_outputs_written(report):
    rep, out = report
    for f in ("report.json", "report.md", "verify_accuracy_latency.png", "verify_sizes.png", "verify_confusion.png"):
        assert (out / f).stat().st_size > 0, f
    md = (out / "report.md").read_text()
    assert "| artifact |" in md and "model_int8.tflite" in md and "Recommended" in md
    assert json.loads((out / "report.json").read_text())["rows"][0]["artifact"] == "model.keras"


def test_recommends_the_fastest_passing_per_runtime_beyond_the_timing_noise(report):
    """The fastest when its lead is beyond the timing noise, else the smallest of those tied with it."""
    from edgetl.report.recommend import clearly_faster

    rep, out = report
    rec = rep["recommended"]
    passing = [r for r in rep["rows"] if r["status"] == "pass"]
    for rt in ("litert", "onnxruntime"):
        mine = [r for r in passing if r["runtime"] == rt]
        best = min(mine, key=lambda r: r["p50_ms"])
        tied = [r for r in mine if r is best or not clearly_faster(best, r)]
        expect = best if len(tied) == 1 else min(tied, key=lambda r: (r["size_bytes"], r["p50_ms"]))
        assert rec["fastest_per_runtime"][rt] == expect["artifact"]
        assert rec["per_runtime"][rt]["clearly_fastest"] == (len(tied) == 1)
    assert rec["recommended"] == rec["fastest"]
    assert ("tied within timing noise" in rec["why"]) == (not rec["clearly_fastest"])
    assert "timing noise" in (out / "report.md").read_text()


def test_failing_gate_exits_nonzero_and_names_it(tiny_exported, tiny_run, tmp_path):
    r = CliRunner().invoke(main, ["verify", str(tiny_run.run_dir), "--threads", "1", "--max-latency-ms", "0.0001",
                                  "--out", str(tmp_path)])
    assert r.exit_code == 1
    assert "gate failed" in r.output and "max-latency-ms" in r.output
    rep = json.loads((tmp_path / "report.json").read_text())
    assert all(row["status"] == "fail" for row in rep["rows"][1:])
    assert rep["recommended"].get("fastest") is None


def test_predict_same_top1_across_formats(tiny_exported, tiny_run, tiny_data):
    img = sorted((tiny_data / "green").iterdir())[0]
    tops = {}
    for f in ("model.keras", "export/model_fp32.tflite", "export/model_fp32.onnx", "export/model_int8.tflite"):
        r = CliRunner().invoke(main, ["predict", str(tiny_run.run_dir / f), str(img), "--top-k", "2", "--json"])
        assert r.exit_code == 0, r.output
        res = json.loads(r.output)
        assert len(res[0]["top"]) == 2
        tops[f] = res[0]["top"][0]["label"]
    assert set(tops.values()) == {"green"}, tops
    r = CliRunner().invoke(main, ["predict", str(tiny_run.run_dir / "model.keras"), str(img)])
    assert r.exit_code == 0 and "green" in r.output


def test_predict_bad_inputs(tiny_run, tmp_path):
    (tmp_path / "x.jpg").write_text("nope")
    r = CliRunner().invoke(main, ["predict", str(tiny_run.run_dir / "model.keras"), str(tmp_path / "x.jpg")])
    assert r.exit_code == 1 and "not an image file" in r.output  # skipped; nothing else to predict
    r = CliRunner().invoke(main, ["predict", str(tmp_path / "m.pt"), str(tmp_path / "x.jpg")])
    assert r.exit_code == 2 and "no such model file" in r.output


@pytest.fixture(scope="module")
def bundle_dir(tiny_exported, tiny_run, tmp_path_factory):
    d = tmp_path_factory.mktemp("bundle")
    r = CliRunner().invoke(main, ["bundle", str(tiny_run.run_dir), "--out", str(d / "b.zip"), "--samples", "8"])
    assert r.exit_code == 0, r.output
    with zipfile.ZipFile(d / "b.zip") as z:
        z.extractall(d)
    return next(p for p in d.iterdir() if p.is_dir())


def test_bundle_contents(bundle_dir):
    names = {p.name for p in bundle_dir.iterdir()}
    assert {"edgetl_check.py", "samples.npz", "bundle.json", "labels.txt", "README.txt",
            "model_int8.tflite", "model_fp32.onnx", "model_int8.tflite.json"} <= names
    s = np.load(bundle_dir / "samples.npz")
    assert s["images"].shape == (8, 32, 32, 3) and s["images"].dtype == np.uint8


CHECK_ONLY = """
import importlib.abc, json, runpy, sys
BLOCKED = {blocked!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is not on this device")
sys.meta_path.insert(0, Block())
sys.argv = {argv!r}
code = 0
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as e:
    code = e.code or 0
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras", "edgetl", "jax", "torch"))
print("IMPORTED " + json.dumps(heavy))
sys.exit(code)
"""


@pytest.mark.slow
@pytest.mark.parametrize("runtime,fmt", [("onnxruntime", "onnx"), ("ai-edge-litert", "tflite")])
def test_bundle_runs_on_numpy_and_one_runtime_and_imports_back(bundle_dir, tiny_run, tmp_path, runtime, fmt):
    """The device check on a 'device' that has numpy and one runtime only, offline: the script
    runs in an isolated interpreter (python -I: no PYTHONPATH, no user site) where TensorFlow,
    Keras, edgetl and the other runtime cannot be imported, from a copy of the unzipped bundle
    outside the project; its results.json then goes through edgetl verify --device-results."""
    import shutil

    other = {"onnx": ["ai_edge_litert", "tflite_runtime"], "tflite": ["onnxruntime"]}[fmt]
    blocked = ["tensorflow", "keras", "tf_keras", "edgetl", "jax", "torch", *other]
    dev = tmp_path / "device"
    shutil.copytree(bundle_dir, dev)
    res = tmp_path / "results.json"
    argv = [str(dev / "edgetl_check.py"), "--threads", "1", "--name", f"dev-{fmt}", "--out", str(res)]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KERAS_HOME")}
    p = subprocess.run([sys.executable, "-I", "-c", CHECK_ONLY.format(blocked=blocked, argv=argv)],
                       capture_output=True, text=True, cwd=dev, env=env, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    imported = json.loads(p.stdout.split("IMPORTED ")[-1])
    assert imported == [], imported  # numpy and the runtime only
    out = json.loads(res.read_text())
    assert not any("error" in m for m in out["models"])
    ran = [m for m in out["models"] if "skipped" not in m]
    skipped = [m for m in out["models"] if "skipped" in m]
    assert ran and all(m["format"] == fmt for m in ran)
    assert skipped and all(m["format"] != fmt for m in skipped)  # the other runtime is absent: skipped, named
    assert all(m["agreement_reference"] == 1.0 and m["p50_ms"] > 0 for m in ran)
    assert out["device"]["name"] == f"dev-{fmt}" and out["device"]["cores"]
    rep = verify(tiny_run.run_dir, VerifyOptions(threads=1, max_drop=100, min_agreement=0.0,
                                                 out=str(tmp_path / "rep")), device_results=[res], echo=quiet)
    dev_rows = [r for r in rep["rows"] if r.get("device") == f"dev-{fmt}" and "p50_ms" in r]
    assert len(dev_rows) == len(ran)
    dev_skipped = [r for r in rep["rows"] if r.get("device") == f"dev-{fmt}" and r["status"] == "skipped"]
    assert len(dev_skipped) == len(skipped) and not any(r.get("failed_gates") for r in dev_skipped)
    assert f"@ dev-{fmt}" in (tmp_path / "rep" / "report.md").read_text()


def test_the_latency_gate_can_be_limited_to_the_runtimes_a_budget_was_measured_on():
    """`edgetl search` times each candidate under the format's own runtime (LiteRT for .tflite); verify also times
    the file under MediaPipe, 2-2.5x slower here, so a pick within the budget failed `--then verify`. With
    --latency-runtimes the gate applies to those runtimes' rows only; an unknown name is refused, not ignored."""
    from edgetl.config import VerifyOptions
    from edgetl.errors import EdgetlError
    from edgetl.verify.gates import Gates

    rows = {rt: {"runtime": rt, "p50_ms": ms} for rt, ms in (("litert", 1.1), ("mediapipe", 2.4))}
    every = Gates.of(VerifyOptions(max_latency_ms=1.5).validate())
    assert every.check(dict(rows["litert"])) == [] and every.check(dict(rows["mediapipe"])) == [
        "max-latency-ms (2.40 > 1.5 ms)"]
    litert = Gates.of(VerifyOptions(max_latency_ms=1.5, latency_runtimes=("litert",)).validate())
    assert litert.check(dict(rows["mediapipe"])) == []
    assert litert.check({"runtime": "litert", "p50_ms": 1.6}) == ["max-latency-ms (1.60 > 1.5 ms)"]
    with pytest.raises(EdgetlError, match="latency-runtimes.*each must be one of litert"):
        VerifyOptions(max_latency_ms=1.5, latency_runtimes=("tflite",)).validate()
