"""Real photos (../shared): ImageNet transfer reaches the bar, random init does not,
and the torchvision import's features separate the classes."""
import json

import pytest
from click.testing import CliRunner

from edgetl.cli import main

from common import HYMENOPTERA

pytestmark = [pytest.mark.shared, pytest.mark.slow]


def test_imagenet_mobilenetv2_035_reaches_085(hym_run):
    m = json.loads((hym_run / "metrics.json").read_text())
    assert m["val_accuracy"] >= 0.85
    # the untouched test split (15% of train/, carved by the auto rule) is the headline; chance is about 0.5
    assert m["headline"]["split"] == "test" and m["test"]["accuracy"] >= 0.80, m["test"]
    # the placeholder GIF among the ants decodes (GIF named .gif, palette -> RGB): nothing skipped
    assert m["data"]["skipped"] == []
    train, test = m["data"]["train_counts"], m["data"]["test_counts"]
    assert [a + b for a, b in zip(train, test)] == [124, 121] and m["data"]["val_counts"] == [70, 83]


def test_random_init_stays_far_below(imagenet_mnv2_035, tmp_path):
    out = tmp_path / "none"
    r = CliRunner().invoke(main, ["train", str(HYMENOPTERA), "--alpha", "0.35", "--img-size", "128",
                                  "--weights", "none", "--epochs-head", "10", "--epochs-finetune", "3",
                                  "--recipe", "fixed", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "metrics.json").read_text())["val_accuracy"] <= 0.70


def test_imported_torchvision_features_separate_hymenoptera(shared, imagenet_mnv2_100):
    from sklearn.linear_model import LogisticRegression

    from edgetl import backbones
    from edgetl.data.dataset import scan
    from edgetl.data.tfdata import load_array
    from edgetl.nets.weights import build_base

    ds = scan(HYMENOPTERA)
    base = build_base(backbones.get("mobilenetv2"), 128, 1.0, "imagenet")

    def feats(split):
        x = load_array(split.paths, 128).astype("float32") / 127.5 - 1.0
        return base.predict(x, verbose=0, batch_size=32).mean(axis=(1, 2))

    clf = LogisticRegression(C=0.5, max_iter=3000).fit(feats(ds.train), ds.train.labels)
    acc = clf.score(feats(ds.val), ds.val.labels)
    assert acc >= 0.85, acc  # chance is 0.54


@pytest.fixture(scope="module")
def hym_heldout_run(imagenet_mnv2_035, tmp_path_factory):
    """`edgetl train` (MobileNetV2 0.35 ImageNet, 128 px) on hymenoptera laid out as
    train/val/test: train/ and val/ split 4:1 from hymenoptera's own train/ (each class's
    every fifth file to val/), and test/ = hymenoptera's val/ (153 photos) untouched, so that
    nothing (early stopping, the phase choice, export's budget ladder) is chosen on it.
    Per-file symbolic links: nothing is copied."""
    from click.testing import CliRunner

    from edgetl.cli import main

    data = tmp_path_factory.mktemp("hym-heldout") / "data"
    for cls in ("ants", "bees"):
        files = sorted((HYMENOPTERA / "train" / cls).iterdir())
        for i, f in enumerate(files):
            dest = data / ("val" if i % 5 == 4 else "train") / cls / f.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.symlink_to(f)
        for f in sorted((HYMENOPTERA / "val" / cls).iterdir()):
            dest = data / "test" / cls / f.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.symlink_to(f)
    out = data.parent / "run"
    r = CliRunner().invoke(main, ["train", str(data), "--alpha", "0.35", "--img-size", "128", "--out", str(out)])
    assert r.exit_code == 0, r.output
    return data, out


def test_int8_on_real_photos_within_one_point(hym_heldout_run, tmp_path):
    """int8 (TFLite and ONNX) loses at most one point of accuracy against fp32 on 153 real photos
    that chose nothing (not the validation split the budget ladder picked its attempt on)."""
    import numpy as np

    from edgetl.data.calibrate import calibrate
    from edgetl.data.tfdata import load_array
    from edgetl.export.exporter import ExportOptions, export
    from edgetl.runtime.runners import open_runner

    data, run = hym_heldout_run
    calib = calibrate(data, size=200, out=tmp_path / "calibration", echo=lambda *a: None)
    res = {(a.format, a.quant): a for a in export(run, ExportOptions(
        formats="tflite,onnx", quants="fp32,int8", calibration=str(calib), max_drop=1.0, force=True), echo=lambda *a: None)}
    split = json.loads((run / "split.json").read_text())
    test = split["test"]
    assert len(test) == 153 and {r["file"] for r in test}.isdisjoint(r["file"] for r in split["val"])
    y = np.array([r["label"] for r in test])
    x = load_array([r["file"] for r in test], 128)
    for fmt in ("tflite", "onnx"):
        a = res[(fmt, "int8")]
        assert a.status == "written", a.reason
        kept = [r for r in a.remedies if r.get("kept")]
        assert len(kept) == 1 and kept[0]["agreement"] == a.agreement, a.remedies
        ref = open_runner(run / "export" / f"model_fp32.{fmt}").predict(x).argmax(1)
        q = open_runner(run / "export" / f"model_int8.{fmt}").predict(x).argmax(1)
        lost, gained = int(((ref == y) & (q != y)).sum()), int(((ref != y) & (q == y)).sum())
        drop = 100 * (lost - gained) / len(y)
        print(f"{fmt} int8 on 153 held-out photos: fp32 {np.mean(ref == y):.3f}, int8 {np.mean(q == y):.3f}, "
              f"lost {lost}, gained {gained}, drop {drop:+.2f} points, agreement {np.mean(ref == q):.3f}")
        assert drop <= 1.0, (fmt, lost, gained)  # one point of 153 photos: at most 1 image net
        # measured on val by the ladder: TFLite int8 agrees >= 0.95 at once; ONNX minmax agreed 0.908
        # and the ladder kept entropy calibration at 0.935; on held-out photos, the same floors
        assert np.mean(ref == q) >= (0.95 if fmt == "tflite" else 0.93), fmt
    # per-channel scales and zero points (12 bytes per output channel of every kernel and bias)
    # put a floor of about 0.37x under int8 TFLite at alpha 0.35; see the README
    assert res[("tflite", "int8")].size_bytes <= 0.42 * res[("tflite", "fp32")].size_bytes
    assert res[("onnx", "int8")].size_bytes <= 0.35 * res[("onnx", "fp32")].size_bytes
