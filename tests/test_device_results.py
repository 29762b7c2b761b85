"""A device's results.json is untrusted input: validated against its schema and the
run's current exports before any row reaches a report (edgetl/verify/device_results.py)."""
import copy
import json
import subprocess
import sys
import zipfile

import pytest
from click.testing import CliRunner

from edgetl.artifacts import sha256_file
from edgetl.cli import main
from edgetl.config import VerifyOptions
from edgetl.errors import EdgetlError
from edgetl.verify.device_results import MAX_BYTES, device_rows
from edgetl.verify.gates import Gates

FILES = ("model_fp32.onnx", "model_int8.tflite")


@pytest.fixture
def run_dir(tmp_path):
    """A fake run: only what the validator reads, export/<file>."""
    d = tmp_path / "myrun"
    (d / "export").mkdir(parents=True)
    for i, f in enumerate(FILES):
        (d / "export" / f).write_bytes(bytes([i + 1]) * (100 + i))
    return d


def good(run_dir) -> dict:
    """A valid schema-2 results.json for ``run_dir``, as edgetl_check.py writes it."""
    shas = {f: sha256_file(run_dir / "export" / f) for f in FILES}
    row = lambda f: {"file": f, "sha256": shas[f], "format": f.rsplit(".", 1)[1], "quant": "fp32",  # noqa
                     "size_bytes": (run_dir / "export" / f).stat().st_size, "runtime": "onnxruntime",
                     "runtime_version": "1.20", "threads": 2, "agreement_reference": 1.0, "agreement_keras": 0.875,
                     "max_abs_dprob_reference": 0.0, "max_abs_dprob_keras": 0.03, "p50_ms": 1.5, "p90_ms": 1.7,
                     "p99_ms": 2.4, "mean_ms": 1.6, "runs": 100, "warmup": 30}
    return {"schema": 2, "created": "2025-01-01T00:00:00", "samples": 8, "threads": 2,
            "bundle": {"run": run_dir.name, "created": "2025-01-01T00:00:00+00:00", "samples": 8,
                       "models": [{"file": f, "sha256": shas[f]} for f in FILES]},
            "device": {"name": "pi5", "hostname": "pi", "cpu": "Cortex-A76", "cores": 4, "machine": "aarch64"},
            "models": [row(f) for f in FILES]}


def refusal(path, run_dir) -> str:
    with pytest.raises(EdgetlError) as e:
        device_rows(path, Gates.of(VerifyOptions()), run_dir)
    assert e.value.exit_code == 2
    msg = e.value.message
    assert "\n" not in msg and msg.startswith(f"{path}: "), msg
    return msg


def write(tmp_path, res) -> str:
    p = tmp_path / "results.json"
    p.write_text(json.dumps(res))
    return p


def test_valid_results_become_gated_device_rows(run_dir, tmp_path):
    p = write(tmp_path, good(run_dir))
    rows = device_rows(p, Gates.of(VerifyOptions(min_agreement=0.5)), run_dir)
    assert [r["artifact"] for r in rows] == list(FILES)
    assert all(r["device"] == "pi5" and r["status"] == "pass" and r["p50_ms"] == 1.5 for r in rows)
    assert rows[0]["sha256"] == sha256_file(run_dir / "export" / FILES[0]) and rows[0]["samples"] == 8
    rows = device_rows(p, Gates.of(VerifyOptions(min_agreement=0.9, max_latency_ms=1.0)), run_dir)
    assert all(r["status"] == "fail" and len(r["failed_gates"]) == 2 for r in rows)


def _set(path, value):
    def mutate(res, run_dir):
        *head, last = path
        o = res
        for k in head:
            o = o[k]
        o[last] = value(run_dir) if callable(value) else value
    return mutate


def _reexported(res, run_dir):
    (run_dir / "export" / FILES[1]).write_bytes(b"re-exported model")


CASES = [
    ("agreement 1.5", _set(("models", 0, "agreement_keras"), 1.5),
     "models[0].agreement_keras = 1.5: must be a number in [0, 1]"),
    ("negative p50", _set(("models", 1, "p50_ms"), -42),
     "models[1].p50_ms = -42: must be a positive number; re-run edgetl_check.py on the device"),
    ("NaN latency", _set(("models", 0, "p90_ms"), float("nan")), "models[0].p90_ms = NaN: must be a positive number"),
    ("infinite latency", _set(("models", 0, "p99_ms"), float("inf")), "models[0].p99_ms = Infinity"),
    ("p50 above p90", _set(("models", 0, "p50_ms"), 1.8), "models[0].p90_ms = 1.7: percentiles must satisfy"),
    ("size -5", _set(("models", 0, "size_bytes"), -5), "models[0].size_bytes = -5: must be an integer >= 0"),
    ("size not the file's", _set(("models", 0, "size_bytes"), 5), "models[0].size_bytes = 5:"),
    ("path traversal", _set(("models", 0, "file"), "../../../etc/passwd"),
     'models[0].file = "../../../etc/passwd": must be a plain .tflite, .onnx, .ort file name'),
    ("never shipped", _set(("models", 1, "file"), "model_fp16.onnx"),
     'models[1].file = "model_fp16.onnx": not a model the bundle shipped'),
    ("sha256 of the file run differs from the bundle's", _set(("models", 0, "sha256"), "0" * 64),
     f"models[0].sha256 = \"{'0' * 64}\": the model_fp32.onnx that ran differs from the bundle's"),
    ("sha256 not hex", _set(("models", 0, "sha256"), "abc"), 'models[0].sha256 = "abc": must be a sha256'),
    ("re-exported since the bundle", _reexported, "models[1].sha256 = "),
    ("sample count", _set(("samples",), 7), "samples = 7: the bundle holds 8 sample images"),
    ("bool for a number", _set(("models", 0, "agreement_reference"), True),
     "models[0].agreement_reference = true: must be a number in [0, 1]"),
    ("string for a number", _set(("models", 0, "mean_ms"), "1.6"), 'models[0].mean_ms = "1.6": must be a positive'),
    ("threads 0", _set(("threads",), 0), "threads = 0: must be a positive integer"),
    ("unknown schema", _set(("schema",), 3), "schema = 3: unknown version (this edgetl reads schema 2)"),
    ("another run", _set(("bundle", "run"), "otherrun"), 'bundle.run = "otherrun": these results are for another'),
    ("models not a list", _set(("models",), {"a": 1}), 'models = {"a": 1}: must be a list'),
    ("device name with a newline", _set(("device", "name"), "pi\n| x"), "device.name = "),
]


@pytest.mark.parametrize("mutate,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refused_naming_the_field(run_dir, tmp_path, mutate, expected):
    res = good(run_dir)
    mutate(res, run_dir)
    msg = refusal(write(tmp_path, res), run_dir)
    assert expected in msg, msg


def test_reexported_model_asks_to_rebundle(run_dir, tmp_path):
    p = write(tmp_path, good(run_dir))
    _reexported(None, run_dir)
    msg = refusal(p, run_dir)
    assert "does not match the run's current" in msg and "model_int8.tflite" in msg
    assert msg.endswith("re-run edgetl_check.py on the device") and f"edgetl bundle {run_dir}" in msg


def test_missing_field_and_missing_schema(run_dir, tmp_path):
    res = good(run_dir)
    del res["models"][0]["p99_ms"]
    assert "models[0].p99_ms: missing" in refusal(write(tmp_path, res), run_dir)
    res = good(run_dir)
    del res["schema"]
    assert "schema: missing (written by an older edgetl_check.py); re-bundle" in refusal(write(tmp_path, res),
                                                                                            run_dir)


def test_not_json_wrong_top_level_and_huge(run_dir, tmp_path):
    p = tmp_path / "results.json"
    p.write_text("{'schema': 2,")
    assert "not valid JSON" in refusal(p, run_dir)
    p.write_bytes(b"\xff\xfe\x00")
    assert "not valid JSON" in refusal(p, run_dir)
    p.write_text("[1, 2]")
    assert "(top level) = [1, 2]: must be a JSON object" in refusal(p, run_dir)
    p.write_text("[" * 100000)
    assert "not valid JSON" in refusal(p, run_dir)
    with open(p, "wb") as f:  # sparse: refused by size, never read
        f.truncate(MAX_BYTES + 1)
    assert "larger than any results.json (10 MB at most)" in refusal(p, run_dir)


def _strip(m: dict) -> None:
    for k in list(m):
        if k not in ("file", "sha256", "format", "quant", "size_bytes"):
            del m[k]


def test_error_rows_are_failures_but_still_checked(run_dir, tmp_path):
    res = good(run_dir)
    m = res["models"][1]
    _strip(m)
    m["error"] = "the runtime could not load it: RuntimeError: unsupported op"
    rows = device_rows(write(tmp_path, res), Gates.of(VerifyOptions()), run_dir)
    assert rows[1]["status"] == "fail" and "unsupported op" in rows[1]["failed_gates"][0]
    bad = copy.deepcopy(res)
    bad["models"][1]["file"] = "/etc/passwd"
    assert 'models[1].file = "/etc/passwd"' in refusal(write(tmp_path, bad), run_dir)


@pytest.mark.parametrize("field,text", [
    ("skipped", "runtime not installed on this device (No module named 'onnxruntime')"),  # this check script
    ("error", "No module named 'onnxruntime'"),  # check scripts bundled before "skipped" existed
    ("error", "no TFLite runtime: pip install ai-edge-litert (or tflite-runtime)"),
])
def test_a_runtime_missing_on_the_device_is_skipped_not_failed(run_dir, tmp_path, field, text):
    res = good(run_dir)
    m = res["models"][0]
    _strip(m)
    m[field] = text
    rows = device_rows(write(tmp_path, res), Gates.of(VerifyOptions(min_agreement=0.5)), run_dir)
    assert rows[0]["status"] == "skipped" and rows[0]["failed_gates"] == []
    assert text in rows[0]["skipped_reason"] and rows[1]["status"] == "pass"
    still_checked = copy.deepcopy(res)
    still_checked["models"][0]["sha256"] = "0" * 64
    assert "models[0].sha256" in refusal(write(tmp_path, still_checked), run_dir)
    both = copy.deepcopy(res)
    both["models"][0]["error"] = both["models"][0]["skipped"] = "x"
    assert "models[0].skipped" in refusal(write(tmp_path, both), run_dir)


def test_cli_refuses_a_tampered_device_file_and_accepts_the_real_one(tiny_exported, tiny_run, tmp_path):
    """bundle -> edgetl_check.py (this venv's python) -> verify: tampered exits 2 in one line; the real one joins."""
    run = str(tiny_run.run_dir)
    r = CliRunner().invoke(main, ["bundle", run, "--out", str(tmp_path / "b.zip"), "--formats", "onnx",
                                  "--samples", "4"])
    assert r.exit_code == 0, r.output
    with zipfile.ZipFile(tmp_path / "b.zip") as z:
        z.extractall(tmp_path / "b")
    folder = next((tmp_path / "b").iterdir())
    res = tmp_path / "results.json"
    p = subprocess.run([sys.executable, str(folder / "edgetl_check.py"), "--threads", "1", "--runs", "20",
                        "--warmup", "2", "--name", "e2e-device", "--out", str(res)],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    real = json.loads(res.read_text())
    assert real["schema"] == 2 and real["samples"] == real["bundle"]["samples"] == 4
    assert real["bundle"]["run"] == tiny_run.run_dir.name and len(real["models"]) == 4

    tampered = copy.deepcopy(real)
    tampered["models"][2]["p50_ms"] = -42
    (tmp_path / "tampered.json").write_text(json.dumps(tampered))
    args = ["verify", run, "--threads", "1", "--runs", "100", "--max-drop", "100", "--min-agreement", "0",
            "--out", str(tmp_path / "rep")]
    r = CliRunner().invoke(main, args + ["--device-results", str(tmp_path / "tampered.json")])
    assert r.exit_code == 2, r.output
    assert r.output.strip().splitlines() == [
        f"error: {tmp_path / 'tampered.json'}: models[2].p50_ms = -42: must be a positive number; "
        f"re-run edgetl_check.py on the device"]
    assert not (tmp_path / "rep").exists()  # refused before anything was timed or written

    # one model skipped on the device (its runtime is not installed there), as edgetl_check.py writes it
    one_skipped = copy.deepcopy(real)
    gone = one_skipped["models"][0]
    _strip(gone)
    gone["skipped"] = "runtime not installed on this device (No module named 'onnxruntime')"
    (tmp_path / "skipped.json").write_text(json.dumps(one_skipped))
    r = CliRunner().invoke(main, args + ["--device-results", str(tmp_path / "skipped.json")])
    assert r.exit_code == 0, r.output
    assert f"skipped {gone['file']} on e2e-device: runtime not installed on this device" in r.output
    assert "FAIL" not in r.output and "No module named 'onnxruntime'" in r.output
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    dev = [x for x in rep["rows"] if x.get("device") == "e2e-device"]
    assert sorted(x["artifact"] for x in dev) == sorted(m["file"] for m in real["models"])
    assert [x["status"] for x in dev] == ["skipped"] + ["pass"] * (len(dev) - 1) and rep["passed"]
    assert all(x["p50_ms"] > 0 for x in dev[1:])
    assert "## Skipped on devices" in (tmp_path / "rep" / "report.md").read_text()


def test_ort_bundle_round_trip(tiny_run, tmp_path):
    """`edgetl bundle --formats ort` -> edgetl_check.py -> `verify --device-results`: the .ort rows join the report
    (they were refused with exit 2: device_results knew only .tflite and .onnx)."""
    import shutil

    from edgetl.export.exporter import ExportOptions, export

    run = tmp_path / tiny_run.run_dir.name  # a copy: the shared run keeps its exports
    shutil.copytree(tiny_run.run_dir, run, ignore=shutil.ignore_patterns("export"))
    export(run, ExportOptions(formats="ort", quants="fp32", max_drop=100.0), echo=lambda *a, **k: None)
    assert (run / "export" / "model_fp32.ort").is_file()
    r = CliRunner().invoke(main, ["bundle", str(run), "--out", str(tmp_path / "b.zip"), "--formats", "ort",
                                  "--samples", "4"])
    assert r.exit_code == 0, r.output
    with zipfile.ZipFile(tmp_path / "b.zip") as z:
        z.extractall(tmp_path / "b")
    folder = next((tmp_path / "b").iterdir())
    res = tmp_path / "results.json"
    p = subprocess.run([sys.executable, str(folder / "edgetl_check.py"), "--threads", "1", "--runs", "10",
                        "--warmup", "1", "--name", "ort-device", "--out", str(res)],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    real = json.loads(res.read_text())
    assert [(m["file"], m["format"]) for m in real["models"]] == [("model_fp32.ort", "ort")]
    r = CliRunner().invoke(main, ["verify", str(run), "--threads", "1", "--runs", "100", "--max-drop", "100",
                                  "--min-agreement", "0", "--out", str(tmp_path / "rep"),
                                  "--device-results", str(res)])
    assert r.exit_code == 0, r.output
    rows = json.loads((tmp_path / "rep" / "report.json").read_text())["rows"]
    dev = [x for x in rows if x.get("device") == "ort-device"]
    assert [(x["artifact"], x["format"], x["status"]) for x in dev] == [("model_fp32.ort", "ort", "pass")]
    assert dev[0]["agreement"] >= 0.75 and dev[0]["p50_ms"] > 0
