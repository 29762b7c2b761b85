"""Faults that grow with the data: many classes (bounded plots, metrics and memory),
images in subfolders of class folders, unreadable images and model files in predict."""
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgetl.cli import main
from edgetl.data.dataset import scan
from edgetl.runtime.evaluate import INLINE_MAX, classification_metrics, confusion_of, move_confusions

from synth import make_dataset

ROOT = Path(__file__).resolve().parents[1]
MB = 1 << 20


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "TF_CPP_MIN_LOG_LEVEL": "3", "MPLBACKEND": "Agg"}


def _one_line_error(output: str, text: str) -> None:
    assert "Traceback" not in output
    err = [l for l in output.splitlines() if l.startswith("error:")]
    assert len(err) == 1 and text in err[0], output


# ---- many classes -----------------------------------------------------------

REPORTS_300 = textwrap.dedent("""
    import json, resource, sys, time
    from pathlib import Path
    import numpy as np
    from edgetl import artifacts
    from edgetl.report import plots
    from edgetl.runtime.evaluate import classification_metrics, confusion_of, move_confusions

    def peak_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    out, n = Path(sys.argv[1]), 300
    classes = [f"class_{i:04d}_{'x' * 12}" for i in range(n)]
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(n), 2)
    probs = rng.random((len(y), n))
    probs[np.arange(len(y)), y] += rng.random(len(y)) * 1.5  # about half right, the rest anywhere
    before, t0 = peak_mb(), time.perf_counter()
    m1 = classification_metrics(y, probs, classes)
    m2 = classification_metrics(y, probs + rng.random(probs.shape) * 0.1, classes)
    metrics = {"phase1": m1, "phase2": m2, "selected_phase": "phase2", "val_accuracy": m2["accuracy"],
               "final": m2, "data": {"classes": classes, "train_counts": [1] * n, "val_counts": [2] * n}}
    cm = confusion_of(metrics["final"])
    move_confusions(metrics, out)
    artifacts.write_json(out / "metrics.json", metrics)
    t1 = time.perf_counter()
    plots.confusion(cm, classes, out / "confusion.png", "val confusion (phase2)", metrics["final"]["top_confusions"])
    t2 = time.perf_counter()
    np.save(out / "expected.npy", cm)
    print(json.dumps({"metrics_s": t1 - t0, "plot_s": t2 - t1, "growth_mb": peak_mb() - before}))
""")


def test_300_classes_reports_stay_small_and_bounded(tmp_path):
    """Metrics, side file and plot of 300 classes, in a fresh process so its peak memory is
    its own: the matrix goes to confusion.npz, metrics.json keeps a reference."""
    p = subprocess.run([sys.executable, "-c", REPORTS_300, str(tmp_path)], capture_output=True, text=True,
                       env=_env(), timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["plot_s"] < 10 and res["metrics_s"] < 10, res
    assert res["growth_mb"] < 300, res
    assert (tmp_path / "confusion.png").stat().st_size <= 2 * MB
    assert (tmp_path / "metrics.json").stat().st_size <= 200 * 1024
    m = json.loads((tmp_path / "metrics.json").read_text())
    final = m["final"]
    assert "confusion_matrix" not in final and final["confusion_matrix_file"] == "confusion.npz"
    assert len(final["per_class"]) == 300 and "per_class" not in m["phase1"]  # the unselected phase's follows
    assert len(final["top_confusions"]) == 20                                   # from its matrix in the npz
    assert set(final["top_confusions"][0]) == {"true", "predicted", "count"}
    expected = np.load(tmp_path / "expected.npy")
    back = confusion_of(final, tmp_path)
    assert back.dtype == np.int32 and back.shape == (300, 300) and (back == expected).all()
    assert confusion_of(m["phase1"], tmp_path).shape == (300, 300)
    with np.load(tmp_path / "confusion.npz") as z:
        assert sorted(z.files) == ["phase1", "phase2"]
    assert not list(tmp_path.glob(".*"))  # no temp files left by the atomic writes


def test_few_classes_keep_the_matrix_inline(tmp_path):
    m = classification_metrics([0, 1, 2, 2], np.eye(3)[[0, 2, 2, 1]], ["a", "b", "c"])
    metrics = {"phase1": m, "phase2": None, "selected_phase": "phase1", "final": m}
    assert move_confusions(metrics, tmp_path) is None and not (tmp_path / "confusion.npz").exists()
    assert m["confusion_matrix"] == [[1, 0, 0], [0, 0, 1], [0, 1, 1]]
    assert m["top_confusions"] == [{"true": "b", "predicted": "c", "count": 1},
                                   {"true": "c", "predicted": "b", "count": 1}]
    assert confusion_of(json.loads(json.dumps(m))).tolist() == m["confusion_matrix"]


def test_verify_report_keeps_top_pairs_not_matrix_above_30_classes(tmp_path):
    from edgetl.verify.verifier import recommend, write_report

    n = INLINE_MAX + 10
    classes = [f"c{i}" for i in range(n)]
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(n), 3)
    m = classification_metrics(y, rng.random((len(y), n)), classes)
    row = {"artifact": "model.keras", "format": "keras", "runtime": "keras", "quant": "fp32", "size_bytes": 1000,
           "accuracy": m["accuracy"], "p50_ms": 1.0, "status": "reference", "failed_gates": [],
           "confusion_matrix": m["confusion_matrix"], "top_confusions": m["top_confusions"]}
    report = {"run": str(tmp_path), "data": "synthetic", "n_images": len(y), "labels": classes,
              "gates": {"max_drop": 1.0, "min_agreement": 0.95, "max_latency_ms": None},
              "machine": {"cpu": "cpu", "cores": 2, "machine": "x86_64", "runtimes": {}}, "threads": 1,
              "created": "now", "rows": [row], "recommended": recommend([row])}
    write_report(report, tmp_path)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert "confusion_matrix" not in saved["rows"][0] and saved["rows"][0]["top_confusions"]
    png = tmp_path / "verify_confusion.png"
    assert png.exists() and png.stat().st_size <= 2 * MB


RUN_TRAIN = textwrap.dedent("""
    import resource, subprocess, sys
    p = subprocess.run(sys.argv[1:])
    print("peak_mb", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
    sys.exit(p.returncode)
""")


def test_train_300_classes_end_to_end(tmp_path):
    """`edgetl train` on 300 classes of two 16-px images (one class's images in a dated
    subfolder): bounded outputs and memory, and the subfolder warning."""
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    for c in range(300):
        d = data / f"class_{c:04d}" / ("2019" if c == 0 else "")
        d.mkdir(parents=True)
        base = rng.integers(0, 255, 3)
        for i in range(2):
            a = np.clip(base + rng.normal(0, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(d / f"{i}.png")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "edgetl.cli", "train", str(data), "--weights", "none", "--alpha", "0.35",
           "--img-size", "32", "--epochs-head", "1", "--epochs-finetune", "0", "--views", "1", "--out", str(out)]
    p = subprocess.run([sys.executable, "-c", RUN_TRAIN, *cmd], capture_output=True, text=True, env=_env(),
                       timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "Traceback" not in p.stdout + p.stderr
    assert ("warning: 2 images in subfolders of class folders were included in their class: "
            f"class_0000{os.sep}2019 (2)") in p.stdout
    peak_mb = float(p.stdout.strip().splitlines()[-1].split()[-1])
    assert peak_mb < 3000, peak_mb  # 500 classes needed 21 GB when the plot was annotated
    # the per-class counts are a summary and the 20 extremes, not 300 lines
    assert "train images per class: min 1, median 1, max 1" in p.stdout
    assert sum(line.startswith("  class_") for line in p.stdout.splitlines()) == 20
    assert (out / "confusion.png").stat().st_size <= 2 * MB
    assert (out / "metrics.json").stat().st_size <= 200 * 1024
    m = json.loads((out / "metrics.json").read_text())
    assert confusion_of(m["final"], out).shape == (300, 300)
    assert m["data"]["nested"] == [{"folder": f"class_0000{os.sep}2019", "images": 2}]
    assert "confusion.npz" in json.loads((out / "manifest.json").read_text())["train"]["files"]

    from edgetl.card import write_card

    card = write_card(out, echo=lambda *a: None).read_text()
    assert "more classes in metrics.json" in card and "Most-confused pairs" in card


# ---- images in subfolders of class folders -----------------------------------

def test_scan_lists_nested_subfolders(tmp_path):
    root = make_dataset(tmp_path / "data", per_class=3, classes=("red", "green"))
    make_dataset(root / "red" / "2019", per_class=2, classes=("red",))  # red/2019/red/*.png: deeper still
    (root / "green" / "2020").mkdir()
    Image.new("RGB", (20, 20), (0, 200, 0)).save(root / "green" / "2020" / "g.png")
    (root / "green" / "2020" / "broken.png").write_bytes(b"not a png")
    ds = scan(root)
    assert ds.nested == [(f"green{os.sep}2020", 1), (f"red{os.sep}2019", 2)]  # usable images only
    assert len(ds.train) + len(ds.val) == 3 + 2 + 3 + 1
    assert ds.classes == ["green", "red"]
    flat = scan(make_dataset(tmp_path / "flat", per_class=3, classes=("red", "green")))
    assert flat.nested == []

    split = tmp_path / "split"
    make_dataset(split / "train", per_class=3, classes=("red", "green"))
    make_dataset(split / "val", per_class=2, classes=("red", "green"))
    make_dataset(split / "val" / "red" / "old", per_class=1, classes=("red",))
    assert scan(split).nested == [(f"val{os.sep}red{os.sep}old", 1)]


# ---- predict -------------------------------------------------------------------

def _tiny_run(d: Path, resize: str) -> Path:
    """A run directory holding a small classifier whose output depends on where each
    pixel is, so a central crop and a squash of a wide image give different answers."""
    import keras

    from edgetl.artifacts import write_yaml
    from edgetl.config import TrainConfig

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    z = keras.layers.Rescaling(1 / 255.0)(inp)
    out = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(z))
    d.mkdir(parents=True)
    keras.Model(inp, out).save(d / "model.keras")
    (d / "labels.txt").write_text("a\nb\nc\n")
    write_yaml(d / "config.yaml", TrainConfig(data="x", img_size=8, resize=resize).to_dict())
    return d / "model.keras"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("predict")
    return {r: _tiny_run(base / r, r) for r in ("squash", "crop")}


def _wide(path) -> Path:
    a = np.zeros((16, 48, 3), np.uint8)
    a[:, :16] = (255, 0, 0)
    a[:, 32:] = (0, 0, 255)
    a[:, 16:32] = (0, 255, 0)
    Image.fromarray(a).save(path)
    return path


def test_predict_keras_in_a_run_uses_the_runs_resize(runs, tmp_path):
    from edgetl.data.images import fit_size
    from edgetl.runtime.runners import open_runner
    from edgetl.verify.predict import predict

    img = _wide(tmp_path / "wide.png")
    for mode, model in runs.items():
        r = open_runner(model)
        assert r.meta["input"]["resize"] == mode
        probs = {m: r.predict(np.asarray(fit_size(Image.open(img).convert("RGB"), (8, 8), m), np.uint8)[None])[0]
                 for m in ("squash", "crop")}
        assert not np.allclose(probs["squash"], probs["crop"], atol=1e-4)
        top = predict(model, [img], top_k=3)[0]["top"]
        got = np.zeros(3)
        for t in top:
            got[t["index"]] = t["probability"]
        np.testing.assert_allclose(got, probs[mode], atol=1e-6)


def test_predict_skips_unreadable_images(runs, tmp_path):
    from edgetl.verify.predict import predict, unreadable

    good = _wide(tmp_path / "good.png")
    bad = tmp_path / "x.jpg"
    bad.write_text("not an image")
    good2 = _wide(tmp_path / "good2.png")
    res = predict(runs["squash"], [good, bad, good2], top_k=2)
    assert [r["image"] for r in res] == [str(good), str(bad), str(good2)]
    assert unreadable(res) == [{"image": str(bad), "model": str(runs["squash"]), "error": "not an image file"}]

    r = CliRunner().invoke(main, ["predict", str(runs["squash"]), str(good), str(bad), str(good2), "--top-k", "2"])
    assert r.exit_code == 1, r.output
    _one_line_error(r.output, f"1 of 3 image(s) could not be read: {bad}")
    assert f"warning: {bad}: not an image file; skipped" in r.output
    assert f"{good}\n" in r.stdout and f"{good2}\n" in r.stdout  # both good images predicted
    r = CliRunner().invoke(main, ["predict", str(runs["squash"]), str(bad), str(good), "--json"])
    assert r.exit_code == 1
    assert json.loads(r.stdout)[0] == {"image": str(bad), "model": str(runs["squash"]), "error": "not an image file"}
    assert "could not be read" in r.stderr


@pytest.mark.parametrize("kind", ["truncated", "random", "empty"])
def test_predict_corrupt_keras_file(runs, tmp_path, kind):
    blob = runs["crop"].read_bytes()
    bad = tmp_path / "model.keras"
    bad.write_bytes({"truncated": blob[: len(blob) // 2], "random": np.random.default_rng(0).bytes(4000),
                     "empty": b""}[kind])
    assert not zipfile.is_zipfile(bad)
    img = _wide(tmp_path / "i.png")
    r = CliRunner().invoke(main, ["predict", str(bad), str(img)])
    assert r.exit_code == 2, r.output
    why = "zero-byte file" if kind == "empty" else "corrupt or truncated zip"
    _one_line_error(r.output, f"{bad}: not a loadable Keras model ({why}")
    assert "File not found" not in r.output


def test_predict_refuses_lambda_layer(tmp_path):
    import keras

    inp = keras.Input((8, 8, 3))
    z = keras.layers.Lambda(lambda x: x / 255.0)(inp)
    out = keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(z))
    path = tmp_path / "lam.keras"
    keras.Model(inp, out).save(path)
    (tmp_path / "labels.txt").write_text("a\nb\n")
    r = CliRunner().invoke(main, ["predict", str(path), str(_wide(tmp_path / "i.png"))])
    assert r.exit_code == 2, r.output
    _one_line_error(r.output, f"{path}: refused: the model contains a Lambda layer, whose Python code would run "
                              "on load; rebuild it without Lambda layers (edgetl never loads code from model files)")
