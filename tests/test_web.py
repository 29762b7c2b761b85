"""`edgetl serve` and `edgetl bundle --web` without a browser: what the page is given (the
model's own preprocessing, references, pinned runtimes), and what the server accepts (only
results for the run it serves, with its token, bounded, schema-checked, inside the run)."""
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from common import quiet


@pytest.fixture(scope="module")
def vendored():
    from edgetl.web import vendor

    why = vendor.missing()
    if why:
        pytest.skip(why)


@pytest.fixture(scope="module")
def server(vendored, tiny_exported, tiny_run):
    from edgetl.web.server import WebCheckServer

    with WebCheckServer(tiny_run.run_dir, "127.0.0.1", 0, samples=6, echo=quiet) as srv:
        yield srv.start()


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def _post(srv, body: bytes, token=None, path="/results"):
    req = urllib.request.Request(srv.urls()[0].rstrip("/") + path, data=body, method="POST",
                                 headers={"Content-Type": "application/json", "X-Edgetl-Token": token or srv.token})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _post_announcing(srv, length: int, token):
    import http.client

    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    c.putrequest("POST", "/results")
    c.putheader("Content-Length", str(length))
    c.putheader("X-Edgetl-Token", token)
    c.endheaders()
    c.send(b"{}")
    r = c.getresponse()
    return r.status, json.loads(r.read())


def _results(srv, name="phone"):
    """A results document as the page writes it, from the spec the server built."""
    spec = srv.spec
    rows = [{"file": m["file"], "sha256": m["sha256"], "format": m["format"], "quant": m["quant"],
             "size_bytes": m["size_bytes"], "runtime": "onnxruntime-web", "runtime_version": "1.31.1 wasm",
             "threads": 1, "agreement_reference": 1.0, "agreement_keras": 1.0, "max_abs_dprob_reference": 0.0,
             "max_abs_dprob_keras": 0.001, "p50_ms": 1.0, "p90_ms": 1.5, "p99_ms": 2.0, "mean_ms": 1.1,
             "runs": 20, "warmup": 3} for m in spec["models"]]
    return {"schema": 2, "created": "2026-12-04T10:00:00", "samples": spec["samples"], "threads": 1,
            "bundle": {"run": spec["run"], "created": spec["created"], "samples": spec["samples"],
                       "models": [{"file": m["file"], "sha256": m["sha256"]} for m in spec["models"]]},
            "device": {"name": f"{name} [wasm]"}, "models": rows}


def test_the_page_gets_edgetls_own_preprocessing_and_the_python_references(server, tiny_run):
    """samples.bin holds exactly the tensors edgetl's decoder makes of the shipped originals
    (EXIF, crop, resize: edgetl.data.images), and each model's reference is its Python runtime's output."""
    from edgetl.data.images import load_rgb
    from edgetl.runtime.runners import open_runner

    spec = json.loads(_get(server.urls()[0] + "check.json")[1])
    n, h, w, c = spec["tensors"]["shape"]
    assert n == 6 and (h, w, c) == (32, 32, 3)
    x = np.frombuffer(_get(server.urls()[0] + "samples.bin")[1], np.uint8).reshape(n, h, w, c)
    for i, im in enumerate(spec["images"]):
        status, body, _ = _get(server.urls()[0] + im["file"])
        assert status == 200
        p = server.site / im["file"]
        assert p.read_bytes() == body
        assert np.array_equal(load_rgb(p, 32, spec["resize"]), x[i]), f"image {i}: the page's tensor is not edgetl's decoding"
    for m in spec["models"]:
        ref = open_runner(Path(tiny_run.run_dir) / "export" / m["file"], 1).predict(x)
        assert np.allclose(np.asarray(m["reference_probs"]), ref, atol=1e-6), m["file"]
        if m["file"] == "model_int8.tflite":
            assert m["io"]["input"]["dtype"] in ("uint8", "float32")
    assert set(spec["runtimes"]) == {"@litertjs/core", "onnxruntime-web"}


def test_server_serves_the_page_files_only(server):
    url = server.urls()[0]
    status, body, headers = _get(url)
    assert status == 200 and b"edgetl device check" in body and headers["Content-Type"].startswith("text/html")
    assert _get(url + "vendor/litert/wasm/litert_wasm_internal.wasm")[2]["Content-Type"] == "application/wasm"
    for bad in ("../config.yaml", "%2e%2e/config.yaml", "export/model_fp32.onnx", "node_modules/onnxruntime-web/package.json",
                "..%2f..%2fetc%2fpasswd"):
        assert _get(url + bad)[0] == 404, bad


def test_server_accepts_results_for_its_run_and_writes_them_inside_it(server, tiny_run):
    from edgetl.rundir import DEVICE_RESULTS

    status, body = _post(server, json.dumps(_results(server, "Pixel 7/../../x")).encode())
    assert status == 200, body
    saved = Path(tiny_run.run_dir) / DEVICE_RESULTS / "browser-Pixel-7-x-wasm.json"
    assert saved.is_file() and body["saved"].endswith("browser-Pixel-7-x-wasm.json")
    assert json.loads(saved.read_text())["device"]["name"] == "Pixel 7/../../x [wasm]"


@pytest.mark.parametrize("why, body, token, status, message", [
    ("wrong token", None, "not-the-token", 403, "wrong token"),
    ("not JSON", b"{not json", None, 400, "not valid JSON"),
    ("too large", "large", None, 413, "more than 1048576"),
    ("another run", "run", None, 400, "these results are for another run"),
    ("schema violation", "nan", None, 400, "models[0].p50_ms = NaN: must be a positive number"),
])
def test_server_refuses_untrusted_results(server, tiny_run, why, body, token, status, message):
    from edgetl.rundir import DEVICE_RESULTS

    before = sorted((Path(tiny_run.run_dir) / DEVICE_RESULTS).glob("*")) if (Path(tiny_run.run_dir) / DEVICE_RESULTS).exists() else []
    if body in ("run", "nan"):
        doc = _results(server, "refused")
        if body == "run":
            doc["bundle"]["run"] = "someone-elses-run"
        else:
            doc["models"][0]["p50_ms"] = float("nan")
        body = json.dumps(doc).encode()
    if token is None and why != "wrong token":
        token = server.token
    if body == "large":  # announced over the bound: refused before the body is read
        got, answer = _post_announcing(server, 1024 * 1024 + 1, token)
    else:
        got, answer = _post(server, body, token=token)
    assert got == status and message in answer.get("error", ""), (why, got, answer)
    after = sorted((Path(tiny_run.run_dir) / DEVICE_RESULTS).glob("*")) if (Path(tiny_run.run_dir) / DEVICE_RESULTS).exists() else []
    assert after == before, "nothing written"


def test_bundle_web_is_a_static_site_with_pinned_runtimes_and_no_server(vendored, tiny_exported, tiny_run, tmp_path):
    from edgetl.cli import main
    from edgetl.web import vendor

    out = tmp_path / "web.zip"
    r = CliRunner().invoke(main, ["bundle", str(tiny_run.run_dir), "--web", "--out", str(out), "--samples", "4"])
    assert r.exit_code == 0, r.output
    with zipfile.ZipFile(out) as z:
        names = set(z.namelist())
        root = next(iter(names)).split("/")[0] + "/"
        spec = json.loads(z.read(root + "check.json"))
    assert {root + f for f in ("index.html", "check.js", "style.css", "samples.bin", "README.txt")} <= names
    assert {root + to for _, _, to in vendor.FILES} <= names
    assert not [n for n in names if "node_modules" in n]
    assert {root + "models/" + Path(a.file).name for a in tiny_exported.values()} <= names
    assert spec["post"] is None and spec["token"] is None and spec["samples"] == 4
    assert spec["runtimes"] == vendor.pinned()


def test_serve_without_the_npm_packages_says_what_to_run(tiny_exported, tiny_run, tmp_path, monkeypatch):
    from edgetl.cli import main
    from edgetl.web import vendor

    monkeypatch.setattr(vendor, "NODE_MODULES", tmp_path / "node_modules")
    r = CliRunner().invoke(main, ["bundle", str(tiny_run.run_dir), "--web", "--out", str(tmp_path / "w.zip")])
    assert r.exit_code == 2 and "make install" in r.output and "npm ci --prefix edgetl/web" in r.output, r.output
    assert not (tmp_path / "w.zip").exists()


@pytest.mark.parametrize("sig,code,name", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "SIGINT (Ctrl-C)")])
def test_serve_as_a_user_types_it_prints_url_and_qr_and_stops_on_a_signal(vendored, tiny_exported, tiny_run, sig, code,
                                                                          name):
    """A real signal to a real `edgetl serve`: it stops within seconds, says what it wrote, and ends like
    every command does on that signal (one `error:` line, exit 143 / 130), no traceback."""
    import time

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    p = subprocess.Popen([sys.executable, "-m", "edgetl", "serve", str(tiny_run.run_dir), "--port", "0", "--samples", "3"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    try:
        for line in p.stdout:
            lines.append(line)
            if "Ctrl-C stops the server" in line:
                break
        text = "".join(lines)
        url = next(l.split("open ", 1)[1].strip() for l in lines if l.strip().startswith("open http"))
        assert "on 127.0.0.1:" in text and "(this machine only)" in text and "--host 0.0.0.0" in text
        assert "█" in text or "▀" in text, "a QR code"
        assert _get(url)[0] == 200
        t0 = time.monotonic()
        p.send_signal(sig)
        rest = p.communicate(timeout=60)[0]
        dt = time.monotonic() - t0
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == code and "stopped; 0 results file(s) written" in rest, rest
    assert dt < 10, f"{dt:.1f}s from the signal to the exit"
    assert rest.strip().splitlines()[-1] == (f"error: interrupted by {name}; every file is written atomically, so "
                                             "nothing is half-written: run the same command again"), rest
    assert "Traceback" not in rest


def test_serve_on_a_taken_port_says_so_in_one_line(server, tiny_run):
    from edgetl.cli import main

    r = CliRunner().invoke(main, ["serve", str(tiny_run.run_dir), "--port", str(server.port)])
    assert r.exit_code == 2, r.output
    assert r.output.startswith(f"error: --host 127.0.0.1 --port {server.port}: cannot listen there (")
    assert "choose another --port (0: any free port)" in r.output and "Traceback" not in r.output
