"""verify's report reads right: a recommendation only beyond the timing noise, plots a reader can
read, memory without the runtime's import, near-duplicates between train and the held-out splits."""
import numpy as np
import pytest

from edgetl.recommend import choose, clearly_faster, recommend
from edgetl.timing import summarize


def _row(name, times, size_kib, runtime="litert", accuracy=0.95):
    return {"artifact": name, "runtime": runtime, "status": "pass", "size_bytes": size_kib * 1024,
            "accuracy": accuracy, **summarize(times)}


def _noisy(rng, median_ms, n=100):
    """Timed runs on a loaded machine: a median, and a heavy right tail (p90/p50 about 6.5)."""
    t = median_ms * np.exp(rng.normal(0, 0.05, n))
    slow = rng.random(n) < 0.2
    t[slow] *= rng.uniform(5, 12, slow.sum())
    return t


def test_a_lead_inside_the_timing_noise_is_a_tie_and_the_smaller_artifact_is_recommended():
    rng = np.random.default_rng(0)
    fp32 = _row("model_fp32.tflite", _noisy(rng, 1.000), 2300)
    int8 = _row("model_int8.tflite", _noisy(rng, 1.002), 700)
    fp32["p50_ms"], int8["p50_ms"] = 1.000, 1.002  # the 0.002 ms lead of the issue
    assert fp32["p90_ms"] / fp32["p50_ms"] > 4  # as noisy as the runs
    assert not clearly_faster(fp32, int8)
    rec = recommend([fp32, int8])
    assert rec["recommended"] == rec["fastest"] == "model_int8.tflite"  # the smaller of the tied two
    assert not rec["clearly_fastest"] and rec["tied"] == ["model_fp32.tflite", "model_int8.tflite"]
    assert "tied within timing noise" in rec["why"] and "smallest" in rec["why"]
    assert "fastest model" not in rec["why"]
    assert rec["per_runtime"]["litert"] == {"artifact": "model_int8.tflite", "clearly_fastest": False,
                                            "tied": ["model_fp32.tflite", "model_int8.tflite"]}


def test_a_lead_beyond_the_timing_noise_is_fastest_even_when_larger():
    rng = np.random.default_rng(1)
    quiet = lambda m: m * np.exp(rng.normal(0, 0.02, 100))  # noqa: E731 - p90/p50 about 1.03
    fast = _row("model_fp32.onnx", quiet(2.0), 2300, "onnxruntime")
    slow = _row("model_int8.onnx", quiet(2.5), 700, "onnxruntime")
    assert clearly_faster(fast, slow) and not clearly_faster(slow, fast)
    rec = recommend([slow, fast])
    assert rec["recommended"] == "model_fp32.onnx" and rec["clearly_fastest"] and rec["tied"] == []
    assert "fastest model that passes every gate" in rec["why"] and "more than the timing noise" in rec["why"]


def test_the_rule_is_the_larger_p90_minus_p50_of_the_pair():
    a = {"artifact": "a", "p50_ms": 1.0, "p90_ms": 1.1, "size_bytes": 2}
    b = {"artifact": "b", "p50_ms": 1.3, "p90_ms": 1.5, "size_bytes": 1}  # lead 0.3 > 0.2 (b's noise)
    assert clearly_faster(a, b) and choose([a, b])["row"] is a
    b["p90_ms"] = 1.65  # b's noise 0.35 > lead 0.3: tie, the smaller wins
    assert not clearly_faster(a, b) and choose([a, b])["row"] is b


def test_nothing_passing_recommends_nothing():
    rec = recommend([{**_row("m.onnx", [1.0, 1.1], 10), "status": "fail"}])
    assert "recommended" not in rec and rec.get("fastest") is None and rec["fastest_per_runtime"] == {}
