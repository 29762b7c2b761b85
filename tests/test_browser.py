"""The browser device check in a real browser: headless Chromium (Debian's chromium, driven
through its chromedriver by Selenium) opens the page `edgetl serve` serves for the tiny run,
runs every exported model with LiteRT.js / onnxruntime-web on WASM, and posts its results,
which `edgetl verify --device-results` merges into report.json and the model card.

Skips, with the reason, where the browser, selenium or the npm packages are missing; with
EDGETL_BROWSER_TESTS=require (CI) it fails instead."""
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from common import quiet

TIMEOUT_S = 600
SCREENSHOT = os.environ.get("EDGETL_SCREENSHOT")  # e.g. docs/img/browser-check.png


def _missing() -> str | None:
    from edgetl.web import vendor

    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    if not shutil.which("chromium") or not shutil.which("chromedriver"):
        return "needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)"
    return vendor.missing()


@pytest.fixture(scope="module")
def browser():
    why = _missing()
    if why:
        if os.environ.get("EDGETL_BROWSER_TESTS") == "require":
            pytest.fail(f"EDGETL_BROWSER_TESTS=require, but {why}")
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="edgetl-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1000,760"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def run_page(driver, url: str) -> dict:
    """Open the page, wait for the check to finish, return window.edgetl's results."""
    driver.get(url)
    t0 = time.monotonic()
    while time.monotonic() - t0 < TIMEOUT_S:
        if driver.execute_script("return !!(window.edgetl && window.edgetl.done)"):
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"the page did not finish in {TIMEOUT_S} s: "
                    + driver.execute_script("return document.getElementById('status').textContent"))
    return json.loads(driver.execute_script(
        "const s = window.edgetl; return JSON.stringify({results: s.results, posted: s.posted, errors: s.errors,"
        " status: document.getElementById('status').textContent})"))


def test_browser_check_matches_python_runtimes_and_joins_the_report(browser, tiny_exported, tiny_run, tmp_path):
    from edgetl.card import write_card
    from edgetl.cli import main
    from edgetl.data.tfdata import load_array
    from edgetl.rundir import DEVICE_RESULTS, open_run
    from edgetl.runtime.runners import open_runner
    from edgetl.web.server import WebCheckServer

    run_dir = Path(tiny_run.run_dir)
    run = open_run(run_dir)
    _, files, labels = run.held_out()
    n = len(files)
    with WebCheckServer(run_dir, "127.0.0.1", 0, samples=1000, echo=quiet) as srv:
        srv.start()
        out = run_page(browser, srv.urls()[0] + "?autorun=1&backends=wasm&warmup=3&runs=20&name=ci-chromium")
        if SCREENSHOT:
            browser.save_screenshot(SCREENSHOT)
        # the page's own SHA-256 (used where crypto.subtle is absent: a phone on a LAN address) and its
        # numpy-compatible rounding (int8 inputs) and percentiles
        for size in (0, 3, 55, 56, 63, 64, 65, 1000, 100_003):
            data = bytes((i * 7 + 3) % 256 for i in range(size))
            got = browser.execute_script("return window.edgetl.helpers.sha256Js(new Uint8Array(arguments[0]))", list(data))
            assert got == hashlib.sha256(data).hexdigest(), size
        v = [0.5, 1.5, 2.5, -0.5, -1.5, 2.4999, 2.5001, 254.5, 7.0]
        assert browser.execute_script("return arguments[0].map(window.edgetl.helpers.rint)", v) == np.round(v).tolist()
        t = sorted(np.random.default_rng(0).random(37).tolist())
        for q in (0.5, 0.9, 0.99):
            got = browser.execute_script("return window.edgetl.helpers.percentile(arguments[0], arguments[1])", t, q)
            assert got == pytest.approx(float(np.percentile(t, q * 100)), rel=1e-12)
    assert not out["errors"], out
    assert len(out["results"]) == 1, "one results document for the one backend asked for (wasm)"
    doc = out["results"][0]
    assert doc["device"]["name"] == "ci-chromium [wasm]" and doc["samples"] == n
    exported = {Path(a.file).name for a in tiny_exported.values()}
    rows = {m["file"]: m for m in doc["models"]}
    assert set(rows) == exported, "a row for every exported artifact"
    assert not [m for m in rows.values() if "error" in m], [m.get("error") for m in rows.values()]

    # the Python runtimes on the same files, decoded by edgetl (what verify scores)
    x = load_array(files, run.img_size, run.resize)
    y = np.asarray(labels)
    keras = open_runner(run_dir / "model.keras").predict(x).argmax(1)
    for a in tiny_exported.values():
        m = rows[Path(a.file).name]
        py = open_runner(run_dir / a.file, 1).predict(x).argmax(1)
        page = np.asarray(m["predictions"])
        assert abs(float((page == y).mean()) - float((py == y).mean())) <= 0.01, (Path(a.file).name, "accuracy")
        assert m["agreement_reference"] == pytest.approx(float((page == py).mean()))
        assert m["agreement_keras"] == pytest.approx(float((page == keras).mean()))
        if a.quant == "fp32":
            assert m["agreement_keras"] >= 0.99, (Path(a.file).name, m["agreement_keras"])
            assert m["max_abs_dprob_keras"] < 1e-3, (Path(a.file).name, m["max_abs_dprob_keras"])
        for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms"):
            assert math.isfinite(m[k]) and m[k] > 0, (Path(a.file).name, k, m[k])
        assert m["p50_ms"] <= m["p90_ms"] <= m["p99_ms"]

    # the server wrote the posted document inside the run, and verify merges it
    assert len(out["posted"]) == 1
    saved = run_dir / DEVICE_RESULTS / "browser-ci-chromium-wasm.json"
    assert saved.is_file() and json.loads(saved.read_text())["models"] == doc["models"]
    r = CliRunner().invoke(main, ["verify", str(run_dir), "--device-results", str(saved), "--runs", "100",
                                  "--out", str(tmp_path / "verify")])
    assert r.exit_code in (0, 1), r.output  # 1: a gate failed (tiny model); the report is still written
    report = json.loads((tmp_path / "verify" / "report.json").read_text())
    local = {row["artifact"]: row for row in report["rows"] if not row.get("device")}
    device = {row["artifact"]: row for row in report["rows"] if row.get("device") == "ci-chromium [wasm]"}
    assert set(device) == exported
    for name, row in device.items():
        assert row["runtime"] in ("litert.js", "onnxruntime-web") and row["p50_ms"] == rows[name]["p50_ms"]
        if "int8" in name:  # int8 agrees with Keras in the browser as it does in verify (one image either way)
            assert abs(row["agreement"] - local[name]["agreement"]) <= 1.0 / n + 1e-9, (name, row, local[name])
    shutil.copyfile(tmp_path / "verify" / "report.json", run_dir / "report.json")
    card = write_card(run_dir, echo=quiet).read_text()
    # names reach Markdown escaped (edgetl/escape.py): the device's "[wasm]" is written \\[wasm\\]
    assert "model_fp32.tflite @ ci-chromium \\[wasm\\]" in card and "model_int8.onnx @ ci-chromium \\[wasm\\]" in card
