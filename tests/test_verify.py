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
from edgetl.verify import verify

from common import quiet


@pytest.fixture(scope="module")
def report(tiny_exported, tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return verify(tiny_run.run_dir, VerifyOptions(threads=1, max_drop=100, min_agreement=0.0, runs=100, out=str(out)),
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
        assert all(r["runtime"] == "mediapipe" and r["agreement"] >= 0.99 for r in mp)
    else:
        assert not mp and all("mediapipe is not installed" in s for s in rep["skipped"])
    for r in rep["rows"]:
        for k in ("size_bytes", "accuracy", "delta_accuracy_points", "agreement", "max_abs_dprob", "mean_abs_dprob",
                  "p50_ms", "p90_ms", "p99_ms", "throughput_ips", "memory_mb", "status"):
            assert r.get(k) is not None, (r["artifact"], k)
        assert r["runs"] >= 100 and r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
    assert rep["machine"]["cores"] and rep["machine"]["cpu"] and "onnxruntime" in rep["machine"]["runtimes"]
    assert rep["threads"] == 1


def test_outputs_written(report):
    rep, out = report
    for f in ("report.json", "report.md", "verify_accuracy_latency.png", "verify_sizes.png", "verify_confusion.png"):
        assert (out / f).stat().st_size > 0, f
    md = (out / "report.md").read_text()
    assert "| artifact |" in md and "model_int8.tflite" in md and "Recommended" in md
    assert json.loads((out / "report.json").read_text())["rows"][0]["artifact"] == "model.keras"


def test_recommends_the_fastest_passing_per_runtime(report):
    rep, _ = report
    rec = rep["recommended"]
    passing = [r for r in rep["rows"] if r["status"] == "pass"]
    for rt in ("litert", "onnxruntime"):
        best = min((r for r in passing if r["runtime"] == rt), key=lambda r: r["p50_ms"])
        assert rec["fastest_per_runtime"][rt] == best["artifact"]
    assert rec["fastest"] == min(passing, key=lambda r: r["p50_ms"])["artifact"]


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


def _venv_with(tmp_path, *packages):
    v = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(v)], check=True)
    py = v / "bin" / "python"
    p = subprocess.run([str(py), "-m", "pip", "install", "-q", *packages], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"could not install {packages} into a fresh venv: {p.stderr[-300:]}")
    return py


@pytest.mark.slow
@pytest.mark.parametrize("runtime,fmt", [("onnxruntime", "onnx"), ("ai-edge-litert", "tflite")])
def test_bundle_runs_in_a_bare_venv_and_imports_back(bundle_dir, tiny_run, tmp_path, runtime, fmt):
    import importlib.metadata as md

    py = _venv_with(tmp_path, f"numpy=={np.__version__}", f"{runtime}=={md.version(runtime)}")
    listed = subprocess.run([str(py), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True).stdout
    assert "tensorflow" not in listed and "edgetl" not in listed
    res = tmp_path / "results.json"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    p = subprocess.run([str(py), str(bundle_dir / "edgetl_check.py"), "--threads", "1", "--name", f"venv-{fmt}",
                        "--out", str(res)], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    out = json.loads(res.read_text())
    ran = [m for m in out["models"] if "error" not in m]
    assert ran and all(m["format"] == fmt for m in ran)
    assert all(m["agreement_reference"] == 1.0 and m["p50_ms"] > 0 for m in ran)
    assert out["device"]["name"] == f"venv-{fmt}" and out["device"]["cores"]
    rep = verify(tiny_run.run_dir, VerifyOptions(threads=1, max_drop=100, min_agreement=0.0,
                                                 out=str(tmp_path / "rep")), device_results=[res], echo=quiet)
    dev = [r for r in rep["rows"] if r.get("device") == f"venv-{fmt}" and "p50_ms" in r]
    assert len(dev) == len(ran)
    assert f"@ venv-{fmt}" in (tmp_path / "rep" / "report.md").read_text()
