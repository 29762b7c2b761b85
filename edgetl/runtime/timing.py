"""Latency, throughput and memory of a Runner, measured honestly: warm-up first,
then many timed runs, percentiles reported so the noise is visible."""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np

# The standalone checker (numpy + one runtime): it times models in a fresh process here,
# and travels in the device bundle to do the same on the device.
CHECK_SCRIPT = Path(__file__).parent.parent / "resources" / "edgetl_check.py"


def rss_mb() -> float:
    """Resident memory of this process (MB)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def latency(runner, x1: np.ndarray, runs: int = 100, warmup: int = 10) -> dict:
    """Batch-1 latency percentiles in ms."""
    for _ in range(warmup):
        runner.predict(x1)
    t = np.empty(runs)
    for i in range(runs):
        t0 = time.perf_counter()
        runner.predict(x1)
        t[i] = (time.perf_counter() - t0) * 1000
    return summarize(t, warmup)


def summarize(times_ms, warmup: int = 0) -> dict:
    """Percentiles of timed runs (ms), as every latency row carries them."""
    t = np.asarray(times_ms, float)
    p50, p90, p99 = np.percentile(t, [50, 90, 99])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "mean_ms": float(t.mean()),
            "runs": len(t), "warmup": warmup, "spread_p90_p50": float(p90 / p50) if p50 else None}


def throughput(runner, xb: np.ndarray, seconds: float = 1.0, min_runs: int = 3) -> float:
    """Images per second at batch len(xb)."""
    runner.predict(xb)
    n, t0 = 0, time.perf_counter()
    while n < min_runs or time.perf_counter() - t0 < seconds:
        runner.predict(xb)
        n += 1
    return n * len(xb) / (time.perf_counter() - t0)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    from edgetl.artifacts import package_versions

    v = package_versions()
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "machine": platform.machine(),
            "platform": platform.platform(), "python": platform.python_version(),
            "runtimes": {k: v[k] for k in ("tensorflow", "keras", "ai-edge-litert", "onnxruntime", "mediapipe") if k in v}}


def isolated_timing(path, threads: int, runs: int, size, runtime: str | None = None) -> dict:
    """Latency and peak memory of one model in a fresh process that imports only numpy
    and the runtime (the bundle's edgetl_check.py), so that no other thread pool in this
    process competes for the cores while it is timed. ``memory_mb`` is the model's (loading and
    running it, above the imported runtime); ``import_mb`` is the runtime's import, apart. ``runtime``: another runtime than the
    file's own (``mediapipe`` for a .tflite file)."""
    import json
    import subprocess
    import sys

    from edgetl.errors import EdgetlError

    cmd = [sys.executable, str(CHECK_SCRIPT), "--time", str(path), "--threads", str(threads), "--runs", str(runs),
           "--size", f"{size[0]},{size[1]}"] + (["--runtime", runtime] if runtime else [])
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise EdgetlError(f"{path}: timing failed ({(p.stderr.strip().splitlines() or ['?'])[-1][:150]})", 1)
    res = json.loads(p.stdout.strip().splitlines()[-1])
    res["spread_p90_p50"] = res["p90_ms"] / res["p50_ms"] if res["p50_ms"] else None
    return {k: res[k] for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "runs", "warmup", "spread_p90_p50",
                                "memory_mb", "import_mb", "memory_basis", "peak_rss_mb")}
