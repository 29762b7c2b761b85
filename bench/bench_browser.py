"""Each exported artifact of a run in headless Chromium (the page of `edgetl serve`: LiteRT.js /
onnxruntime-web, one thread, WASM and WebGPU where the browser exposes an adapter) beside the
same file in Python (ai-edge-litert / onnxruntime, one thread), on this machine, with the
browser's agreement figures. Rounds alternate browser and Python (A B A B); every round is printed.

    python bench/bench_browser.py RUN [--runs 200] [--warmup 20] [--rounds 2] [--webgpu]

Needs Debian's chromium + chromium-driver, selenium and `make web`. Prints a markdown table and
the load average (`uptime`) before and after: on a shared machine the latencies are noisy.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FLAGS = ["--headless", "--no-sandbox", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def browser_round(run: Path, runs: int, warmup: int, webgpu: bool) -> list[dict]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from edgetl.web.server import WebCheckServer

    profile = tempfile.mkdtemp(prefix="edgetl-bench-chromium-")
    o = webdriver.ChromeOptions()
    o.binary_location = shutil.which("chromium")
    gpu = ["--enable-unsafe-webgpu", "--enable-features=Vulkan", "--use-webgpu-adapter=swiftshader"] if webgpu \
        else ["--disable-gpu"]
    for a in [*FLAGS, *gpu, f"--user-data-dir={profile}"]:
        o.add_argument(a)
    d = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=o)
    try:
        with WebCheckServer(run, "127.0.0.1", 0, samples=10_000, echo=lambda *a: None) as srv:
            srv.start()
            d.get(srv.urls()[0] + f"?autorun=1&warmup={warmup}&runs={runs}&name=bench")
            t0 = time.monotonic()
            while not d.execute_script("return !!(window.edgetl && window.edgetl.done)"):
                if time.monotonic() - t0 > 3600:
                    raise SystemExit("the page did not finish in an hour")
                time.sleep(1)
            out = json.loads(d.execute_script("return JSON.stringify({r: window.edgetl.results, w: window.edgetl.webgpu})"))
    finally:
        d.quit()
        shutil.rmtree(profile, ignore_errors=True)
    print(f"  browser: WebGPU {out['w']}", flush=True)
    return [{**m, "backend": doc["page"]["backend"]} for doc in out["r"] for m in doc["models"]]


def python_round(run: Path, runs: int, warmup: int) -> dict[str, dict]:
    from edgetl.data.tfdata import load_array
    from edgetl.rundir import list_artifacts, open_run
    from edgetl.runtime.runners import open_runner
    from edgetl.runtime.timing import latency

    r = open_run(run)
    _, files, _ = r.held_out()
    x1 = load_array(files[:1], r.img_size, r.resize)
    out = {}
    for a in list_artifacts(run):
        if a["format"] == "keras":
            continue
        runner = open_runner(a["path"], 1)
        out[a["name"]] = {"runtime": runner.runtime, **latency(runner, x1, runs, warmup)}
        runner.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--webgpu", action="store_true", help="Ask Chromium for a software WebGPU adapter (SwiftShader).")
    a = ap.parse_args()
    run = Path(a.run)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"bench_browser {run} runs={a.runs} warmup={a.warmup} rounds={a.rounds} commit {commit}")
    print("load before:", os.getloadavg())
    rounds = []
    for i in range(a.rounds):
        print(f"round {i + 1}: browser", flush=True)
        b = browser_round(run, a.runs, a.warmup, a.webgpu)
        print(f"round {i + 1}: python", flush=True)
        p = python_round(run, a.runs, a.warmup)
        rounds.append((b, p))
    print("load after:", os.getloadavg())
    print()
    print("| artifact | round | browser backend | browser p50 / p90 ms | Python runtime | Python p50 / p90 ms | "
          "agree Keras (browser) | agree Python (browser) |")
    print("|---|---|---|---|---|---|---|---|")
    for i, (b, p) in enumerate(rounds):
        for m in sorted(b, key=lambda m: (m["file"], m["backend"])):
            py = p.get(m["file"], {})
            if "error" in m:
                print(f"| {m['file']} | {i + 1} | {m['backend']} | {m['error'][:60]} | | | | |")
                continue
            print(f"| {m['file']} | {i + 1} | {m['backend']} | {m['p50_ms']:.2f} / {m['p90_ms']:.2f} | "
                  f"{py.get('runtime', '-')} | {py.get('p50_ms', float('nan')):.2f} / {py.get('p90_ms', float('nan')):.2f} | "
                  f"{m['agreement_keras']:.3f} | {m['agreement_reference']:.3f} |")
    print(f"\nimages per agreement figure: {rounds[0][0][0].get('predictions') and len(rounds[0][0][0]['predictions'])}")


if __name__ == "__main__":
    main()
