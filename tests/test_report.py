"""verify's report reads right: a recommendation only beyond the timing noise, plots a reader can
read, memory without the runtime's import, near-duplicates between train and the held-out splits."""
import json
from pathlib import Path

import numpy as np
import pytest

from edgetl.data.duplicates import THRESHOLD
from edgetl.report.recommend import choose, clearly_faster, recommend
from edgetl.runtime.timing import summarize


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


def _crowded_rows():
    """Thirteen rows as verify makes them on a small task: equal accuracy, latencies within 0.3 ms."""
    rng = np.random.default_rng(0)
    rows = [{"label": "model.keras", "runtime": "keras", "p50_ms": 6.0, "p90_ms": 9.0, "accuracy": 1.0,
             "ci95": [0.94, 1.0], "size_bytes": 9_000_000}]
    for q in ("fp32", "fp16", "dynamic", "int8"):
        for f, rt in (("tflite", "litert"), ("onnx", "onnxruntime"), ("tflite", "mediapipe")):
            if rt == "mediapipe" and q in ("fp16", "dynamic"):
                continue
            p = float(rng.uniform(0.3, 0.6))
            rows.append({"label": f"model_{q}.{f}" + (" (mediapipe)" if rt == "mediapipe" else ""), "runtime": rt,
                         "p50_ms": p, "p90_ms": 1.3 * p, "accuracy": 1.0 - float(rng.integers(0, 2)) / 60,
                         "ci95": [0.91, 1.0], "size_bytes": 3_000_000})
    return rows


def test_accuracy_latency_plot_has_a_legend_the_gates_intervals_and_no_overlapping_labels():
    import matplotlib.pyplot as plt
    from matplotlib.text import Annotation

    from edgetl.report.plots import accuracy_latency_figure

    rows = _crowded_rows()
    fig = accuracy_latency_figure(rows, "t", max_latency_ms=2.0, accuracy_floor=0.99, floor_label="gate: floor")
    ax = fig.axes[0]
    try:
        legend = ax.get_legend()
        texts = [t.get_text() for t in legend.get_texts()]
        assert [t.split("  ", 1)[1] for t in texts[:len(rows)]] == \
            [f"{r['label']}, {r['size_bytes'] / 1024:.0f} KiB" for r in rows]  # numbered, every row named
        assert "gate: max latency 2 ms" in texts and "gate: floor" in texts
        gates = {ln.get_gid(): ln for ln in ax.get_lines() if ln.get_gid()}
        assert list(gates["gate-latency"].get_xdata()) == [2.0, 2.0]
        assert list(gates["gate-accuracy"].get_ydata()) == [0.99, 0.99]
        # intervals: each row has a vertical bar (its Wilson interval) and a horizontal whisker (p50 to p90)
        segs = [s for c in ax.collections for s in c.get_segments()]
        for r in rows:
            assert any(np.allclose(s, [[r["p50_ms"], r["ci95"][0]], [r["p50_ms"], r["ci95"][1]]]) for s in segs)
            assert any(np.allclose(s, [[r["p50_ms"], r["accuracy"]], [r["p90_ms"], r["accuracy"]]]) for s in segs)
        labels = [a for a in ax.texts if isinstance(a, Annotation)]
        assert sorted(a.get_text() for a in labels) == sorted(str(i) for i in range(1, len(rows) + 1))
        fig.canvas.draw()
        r = fig.canvas.get_renderer()
        boxes = [a.get_window_extent(r) for a in labels]
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                assert not a.overlaps(b), (a, b)
        assert not legend.get_window_extent(r).overlaps(ax.get_window_extent(r))  # the legend beside the data
    finally:
        plt.close(fig)


FAKE_ORT = '''
import numpy as np

__version__ = "0.fake"
_resident = np.ones(300 * 2**20 // 8)  # the import keeps 300 MB, like MediaPipe importing TensorFlow...
_transient = np.ones(200 * 2**20 // 8)  # ...and peaks 200 MB higher for a moment
del _transient


class SessionOptions:
    intra_op_num_threads = inter_op_num_threads = 1


class _Input:
    name, type = "x", "tensor(float)"


class InferenceSession:
    def __init__(self, path, so, providers):
        self.weights = np.ones(64 * 2**20 // 8)  # the model itself: 64 MB

    def get_inputs(self):
        return [_Input()]

    def run(self, names, feed):
        return [np.zeros((1, 3), np.float32)]
'''


def test_memory_excludes_the_runtimes_import(tmp_path, monkeypatch):
    """A fake onnxruntime whose import costs 300 MB (after a 500 MB peak) and whose model costs
    64 MB: the model's memory reads 64 MB, the import's 300 MB is reported apart."""
    import os

    from edgetl.runtime.timing import isolated_timing

    (tmp_path / "fake" / "onnxruntime").mkdir(parents=True)
    (tmp_path / "fake" / "onnxruntime" / "__init__.py").write_text(FAKE_ORT)
    (tmp_path / "m.onnx").write_bytes(b"not read by the fake runtime")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "fake"), os.environ.get("PYTHONPATH", "")]))
    res = isolated_timing(tmp_path / "m.onnx", threads=1, runs=3, size=(8, 8))
    assert res["memory_basis"] == "peak"
    assert 280 <= res["import_mb"] <= 330, res
    assert 60 <= res["memory_mb"] <= 80, res  # the model's 64 MB, neither the import's 300 nor its 500 MB peak


def _split_dataset(root, seed, plant: bool):
    """DATA/{train,val,test}/<colour>/ of photo-like synthetic scenes; with ``plant``, edited copies of training
    photos among the held-out ones: test gets an exact copy (renamed) and a 90% crop, val a JPEG
    re-encode, so 2 test and 1 val image have a near-duplicate in train."""
    from PIL import Image

    from synth import make_scenes

    root = Path(root)
    for i, split in enumerate(("train", "val", "test")):
        make_scenes(root / split, per_class={"train": 12, "val": 4, "test": 4}[split], size=64, seed=seed + i)
    planted = {}
    if plant:
        src = sorted((root / "train" / "red").iterdir())
        a, b, c = (Image.open(p).convert("RGB") for p in src[:3])
        a.save(root / "test" / "red" / "copy_of_train.png")
        b.crop((3, 3, 61, 61)).resize((64, 64)).save(root / "test" / "red" / "crop_of_train.png")
        c.save(root / "val" / "red" / "jpeg_of_train.jpg", quality=60)
        planted = {"test/red/copy_of_train.png": "train/red/" + src[0].name,
                   "test/red/crop_of_train.png": "train/red/" + src[1].name,
                   "val/red/jpeg_of_train.jpg": "train/red/" + src[2].name}
    return root, planted


@pytest.mark.parametrize("plant", [True, False], ids=["planted", "none"])
def test_near_duplicates_between_train_and_held_out_are_found_and_warned(plant, imagenet_mnv2_100, tmp_path):
    from edgetl.config import TrainConfig
    from edgetl.training.train import train

    from common import TINY

    data, planted = _split_dataset(tmp_path / "data", seed=5, plant=plant)
    said = []
    cfg = {**TINY, "img_size": 64, "epochs_head": 1, "epochs_finetune": 0, "views": 1}
    res = train(TrainConfig(data=str(data), out=str(tmp_path / "run"), **cfg), echo=said.append)
    rec = json.loads((res.run_dir / "metrics.json").read_text())["near_duplicates"]
    found = {p["image"]: p["train"] for s in rec["splits"].values() for p in s["pairs"]}
    assert found == planted, rec  # every planted pair, its training original, nothing else
    assert rec["threshold"] == THRESHOLD and "cosine" in rec["method"]
    assert [rec["splits"][s]["n"] for s in ("val", "test")] == [12 + plant, 12 + 2 * plant]
    warned = [line for line in said if "near-duplicate" in line]
    if plant:
        assert warned[0] == ("warning: 2 of 14 test images have a near-duplicate in train (e.g. "
                             f"test/red/copy_of_train.png ~ {planted['test/red/copy_of_train.png']}, "
                             f"test/red/crop_of_train.png ~ {planted['test/red/crop_of_train.png']}); "
                             "test accuracy may be optimistic (it is the headline)")
        assert warned[1].startswith("warning: 1 of 13 val images have a near-duplicate in train (e.g. val/red/")
    else:
        assert warned == [] and [s["count"] for s in rec["splits"].values()] == [0, 0]


def test_nearest_is_exact_and_chunked():
    """The k most similar training rows, most similar first, whatever the chunking."""
    from edgetl.data.duplicates import flag, nearest

    rng = np.random.default_rng(0)
    train, other = rng.normal(size=(50, 8)), rng.normal(size=(7, 8))
    u = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    full = u(other) @ u(train).T
    for chunk in (1, 3, 1024):
        idx, sim = nearest(train, other, k=5, chunk=chunk)
        assert (idx == np.argsort(-full, axis=1)[:, :5]).all()
        assert np.allclose(sim, -np.sort(-full, axis=1)[:, :5], atol=1e-6)
    other[2] = 3 * train[17] + 0.01 * rng.normal(size=8)  # a scaled, slightly changed copy
    j, s, dup = flag(train, other)
    assert dup.tolist() == [i == 2 for i in range(7)] and j[2] == 17 and s[2] > 0.99
