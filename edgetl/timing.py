"""Latency, throughput and memory of a Runner, measured honestly: warm-up first,
then many timed runs, percentiles reported so the noise is visible."""
from __future__ import annotations

import os
import platform
import time

import numpy as np


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
    p50, p90, p99 = np.percentile(t, [50, 90, 99])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "mean_ms": float(t.mean()),
            "runs": runs, "warmup": warmup, "spread_p90_p50": float(p90 / p50) if p50 else None}


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
            "runtimes": {k: v[k] for k in ("tensorflow", "keras", "ai-edge-litert", "onnxruntime") if k in v}}
