"""Two-phase training: run directory, metrics, frozen BatchNorm, cached features,
resume after an interruption, NaN guard, determinism, distribution."""
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from click.testing import CliRunner

from edgetl.cli import main
from edgetl.config import TrainConfig
from edgetl.errors import EdgetlError, TrainingDiverged, TrainingInterrupted
from edgetl.training.methods import TrainMethod
from edgetl.training.train import Trainer, train

from common import HOLDOUT_FLOOR, TINY, holdout_accuracy, quiet


def test_run_directory_holds_everything(tiny_run):
    d = tiny_run.run_dir
    for f in ["model.keras", "labels.txt", "config.yaml", "split.json", "history.json", "metrics.json",
              "curves.png", "confusion.png", "manifest.json"]:
        assert (d / f).is_file(), f
    assert not (d / "checkpoints").exists()
    assert (d / "labels.txt").read_text().split() == ["blue", "green", "red"]
    man = json.loads((d / "manifest.json").read_text())
    assert man["train"]["seed"] == 1 and len(man["train"]["data_fingerprint"]) == 64
    assert set(man["train"]["files"]) >= {"model.keras", "labels.txt", "metrics.json"}
    assert "tensorflow" in man["versions"]
    m = json.loads((d / "metrics.json").read_text())
    for phase in ("phase1", "phase2"):
        assert set(m[phase]) >= {"accuracy", "per_class", "confusion_matrix"}
        assert np.asarray(m[phase]["confusion_matrix"]).shape == (3, 3)
        assert set(m[phase]["per_class"]["red"]) >= {"precision", "recall"}


def test_accuracy_well_above_chance(tiny_run, tiny_holdout):
    # 3 colour classes, chance 0.33; scored on 60 fresh images (not the 9 val images that chose the epochs)
    from edgetl.stats import wilson

    acc, k, n = holdout_accuracy(tiny_run.run_dir / "model.keras", tiny_holdout)
    print(f"tiny run: {k}/{n} held-out images right")
    assert acc >= HOLDOUT_FLOOR and wilson(k, n)[0] > 0.33 + 0.4, (k, n)


def test_saved_model_reloads_and_takes_0_255_rgb(tiny_run, tiny_data):
    from edgetl.data.images import load_batch

    model = keras.models.load_model(tiny_run.run_dir / "model.keras")
    x = load_batch(sorted((tiny_data / "red").iterdir())[:4], 32).astype("float32")
    logits = model.predict(x, verbose=0)
    assert logits.shape == (4, 3)
    assert model.get_layer("preprocess").mode == "tf"


def test_batchnorm_frozen_and_in_inference_mode_in_phase2(tiny_data, imagenet_mnv2_100, tmp_path):
    t = Trainer(TrainConfig(data=str(tiny_data), out=str(tmp_path / "r"), **TINY), echo=quiet)
    t.prepare()
    t.build()
    t.phase1()
    bns = [l for l in t.b.base.layers if isinstance(l, keras.layers.BatchNormalization)]
    before = [np.array(w) for l in bns for w in l.weights]
    t.phase2()
    after = [np.array(w) for l in bns for w in l.weights]
    assert all(np.array_equal(a, b) for a, b in zip(before, after)), "BatchNorm statistics moved"
    assert not any(l.trainable for l in bns)
    trainable = [l.name for l in t.b.base.layers if l.trainable and l.weights]
    assert trainable and all(n.startswith(("block_16", "block_15", "Conv_1")) for n in trainable)


def test_frozen_base_runs_once_per_image_and_view(tiny_data, imagenet_mnv2_100, tmp_path, monkeypatch):
    """Neither phase re-runs the frozen layers per epoch: phase 1 fits on pooled
    features, phase 2 on cached activations at the cut, one row per image and view."""
    seen, fits = [], []

    class Counting(TrainMethod):  # the training method sees every batch of every view once
        def sources(self, part, view, images):
            if part == "train":
                seen.append((view, int(images.shape[0])))

    real_fit = keras.Model.fit

    def fit(self, x=None, *a, **k):
        spec = x.element_spec[0]
        fits.append((self.name, tuple(spec.shape[1:]), sum(int(b[0].shape[0]) for b in x)))
        return real_fit(self, x, *a, **k)

    monkeypatch.setattr(keras.Model, "fit", fit)
    cfg = TrainConfig(data=str(tiny_data), out=str(tmp_path / "r"), **{**TINY, "epochs_head": 6, "epochs_finetune": 3})
    t = Trainer(cfg, echo=quiet, method=Counting())
    t.run()
    n_train = len(t.ds.train)
    assert n_train == 39
    assert sum(n for v, n in seen) == TINY["views"] * n_train and {v for v, _ in seen} == {0, 1}
    (h_name, h_shape, h_rows), (t_name, t_shape, t_rows) = fits
    assert h_name == "head" and h_shape == (1280,) and h_rows == TINY["views"] * n_train
    assert t_shape != (32, 32, 3) and len(t_shape) == 3 and t_rows == TINY["views"] * n_train
    assert t.cut is not None and t.cut.cut_tensor is not None


def test_interrupt_then_resume(tiny_data, imagenet_mnv2_100, tmp_path):
    out = tmp_path / "run"

    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1 and self.model.name == "edgetl_classifier":
                raise KeyboardInterrupt

    cfg = TrainConfig(data=str(tiny_data), out=str(out), **{**TINY, "epochs_finetune": 4, "patience": 10})
    with pytest.raises(TrainingInterrupted, match="--resume") as e:
        train(cfg, callbacks=[Stop()], echo=quiet)
    assert e.value.exit_code == 130
    assert not (out / "model.keras").exists() and not (out / "manifest.json").exists()
    assert (out / "checkpoints" / "phase1_head.weights.h5").exists()
    h2 = json.loads((out / "checkpoints" / "history_phase2.json").read_text())
    assert [r["epoch"] for r in h2] == [1, 2]
    # a fresh run into the same folder is refused; --resume goes on
    with pytest.raises(EdgetlError, match="--resume"):
        train(cfg, echo=quiet)
    lines = []
    r = train(TrainConfig(out=str(out)), resume=True, echo=lines.append)
    assert any("done in an earlier run" in l for l in lines)
    assert [h["epoch"] for h in r.history["phase2"]] == [1, 2, 3, 4]
    assert (out / "model.keras").exists() and not (out / "checkpoints").exists()
    with pytest.raises(EdgetlError, match="already finished"):
        train(TrainConfig(out=str(out)), resume=True, echo=quiet)


def test_ctrl_c_message_from_cli(tiny_data, tmp_path, monkeypatch):
    import edgetl.training.train as T

    def boom(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(T.Trainer, "phase1", boom)
    monkeypatch.setattr(T.Trainer, "build", lambda self: None)
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", str(tiny_data), "--weights", "none", "--out", str(out)])
    assert r.exit_code == 130
    assert f"--out {out} --resume" in r.output and "Traceback" not in r.output


def test_nan_loss_stops_with_a_clear_message(tiny_data, imagenet_mnv2_100, tmp_path):
    cfg = TrainConfig(data=str(tiny_data), out=str(tmp_path / "r"), **{**TINY, "lr_head": 1e38})
    with pytest.raises(TrainingDiverged, match=r"phase 1: the loss became (nan|inf).*lower --lr-head"):
        train(cfg, echo=quiet)


def test_same_seed_same_result(tiny_data, imagenet_mnv2_100, tmp_path):
    kw = {**TINY, "epochs_finetune": 1, "epochs_head": 4}
    a = train(TrainConfig(data=str(tiny_data), out=str(tmp_path / "a"), **kw), echo=quiet)
    b = train(TrainConfig(data=str(tiny_data), out=str(tmp_path / "b"), **kw), echo=quiet)
    wa, wb = a.model.get_weights(), b.model.get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(wa, wb))
    assert a.history["phase1"] == b.history["phase1"]


def test_head_options_reach_the_model(tiny_data, imagenet_mnv2_100, tmp_path, monkeypatch):
    """--dense, --dropout, --label-smoothing and --l2 from the command line reach the model that
    trains: the compiled loss smooths the labels (its value on a known batch) and the head's
    kernels carry the L2 penalty, counted in the loss that training minimises."""
    compiled = {}
    real_fit = keras.Model.fit

    def fit(self, *a, **k):
        compiled[self.name] = self
        return real_fit(self, *a, **k)

    monkeypatch.setattr(keras.Model, "fit", fit)
    out = tmp_path / "r"
    r = CliRunner().invoke(main, ["train", str(tiny_data), "--alpha", "1.0", "--img-size", "32", "--epochs-head", "2",
                                  "--epochs-finetune", "0", "--views", "1", "--recipe", "fixed",
                                  "--dense", "8", "--dropout", "0.3", "--label-smoothing", "0.1", "--l2", "1e-4",
                                  "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "phase     epochs" in r.output and f"run directory: {out}" in r.output
    m = keras.models.load_model(out / "model.keras")
    assert m.get_layer("head_dense").units == 8
    assert m.get_layer("head_dropout").rate == pytest.approx(0.3)
    assert json.loads((out / "metrics.json").read_text())["phase2"] is None
    # label smoothing: on a known batch the loss is the cross-entropy against (1 - 0.1) y + 0.1 / 3
    head = compiled["head"]
    y = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], np.float32)
    z = np.array([[4.0, 0.0, -2.0], [1.0, 0.5, 3.0]], np.float32)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    smoothed = float(np.mean(-((0.9 * y + 0.1 / 3) * logp).sum(1)))
    plain = float(np.mean(-(y * logp).sum(1)))
    assert abs(smoothed - plain) > 0.1  # the batch tells them apart
    assert float(head.loss(y, z)) == pytest.approx(smoothed, rel=1e-5)
    # L2: both head kernels carry it, in the trained head and in the saved model, and the
    # penalty training adds to the loss is 1e-4 x the sum of squared kernel weights
    kernels = [head.get_layer(n).kernel for n in ("head_dense", "logits")]
    want = 1e-4 * sum(float(np.sum(np.square(k.numpy()))) for k in kernels)
    assert want > 0 and float(sum(head.losses)) == pytest.approx(want, rel=1e-4)
    for name in ("head_dense", "logits"):
        reg = m.get_layer(name).kernel_regularizer
        assert reg is not None and reg.get_config()["l2"] == pytest.approx(1e-4), name


@pytest.mark.slow
def test_class_weights_auto_raises_minority_recall(imagenet_mnv2_100, tmp_path):
    """5:1 imbalance on two classes whose colours overlap: trained without weights the head
    leans on the prior and misses the minority; --class-weights auto must recover it, scored
    on a balanced set of fresh images (50 per class)."""
    from synth import make_jittered

    bases = {"major": (180, 70, 60), "minor": (110, 70, 140)}
    data = make_jittered(tmp_path / "d", {"major": 60, "minor": 12}, bases, jitter=30, seed=0)
    hold = make_jittered(tmp_path / "h", {"major": 50, "minor": 50}, bases, jitter=30, seed=1)
    from edgetl.data.tfdata import load_array

    paths = sorted(str(p) for p in hold.rglob("*.png"))
    y = np.array([int("/minor/" in p) for p in paths])
    x = load_array(paths, 32)
    recall, balanced = {}, {}
    for cw in ("none", "auto"):
        out = tmp_path / cw
        r = CliRunner().invoke(main, ["train", str(data), "--alpha", "1.0", "--img-size", "32", "--epochs-head", "10",
                                      "--epochs-finetune", "0", "--views", "2", "--batch-size", "16", "--seed", "1",
                                      "--test-split", "0", "--class-weights", cw, "--out", str(out)])
        assert r.exit_code == 0, r.output
        assert ("--class-weights auto balances the loss" in r.output) == (cw == "none")  # the imbalance warning
        from edgetl.runtime.runners import KerasRunner

        p = KerasRunner(out / "model.keras").predict(x).argmax(1)
        recall[cw] = float((p[y == 1] == 1).mean())
        balanced[cw] = (recall[cw] + float((p[y == 0] == 0).mean())) / 2
    print(f"minority recall {recall}, balanced accuracy {balanced}")
    assert recall["auto"] >= recall["none"] + 0.3, recall
    assert balanced["auto"] >= balanced["none"] + 0.15, balanced


@pytest.mark.parametrize("args,msg", [
    (["--alpha", "0.5", "--backbone", "resnet50"], "width multipliers apply to mobilenetv2"),
    (["--backbone", "vgg99"], "unknown backbone 'vgg99'"),
    (["--img-size", "16"], "needs at least 32 px"),
    (["--dropout", "1.5"], "--dropout 1.5"),
    (["--augment", "flip,warp"], "unknown 'warp'"),
    (["--weights", "/nope.h5"], "weights file not found"),
])
def test_bad_options_are_one_line_errors(tiny_data, tmp_path, args, msg):
    r = CliRunner().invoke(main, ["train", str(tiny_data), "--out", str(tmp_path / "r"), *args])
    assert r.exit_code == 2 and msg in r.output and "Traceback" not in r.output, r.output


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus(tiny_data, tiny_holdout, imagenet_mnv2_100, keras_home, tmp_path):
    script = textwrap.dedent(f"""
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from edgetl.config import TrainConfig
        from edgetl.training.train import train
        r = train(TrainConfig(data={str(tiny_data)!r}, out={str(tmp_path / 'm')!r}, strategy="mirrored",
                  alpha=1.0, img_size=32, epochs_head=10, epochs_finetune=1, views=2, batch_size=16,
                  seed=1, recipe="fixed"),
                  echo=lambda *a: None)
        import edgetl.training.train as T
        print("replicas", T.get_strategy("mirrored").num_replicas_in_sync, "acc", r.metrics["val_accuracy"])
    """)
    env = {**os.environ, "KERAS_HOME": str(keras_home)}
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "replicas 2" in p.stdout
    # it learned: 3 classes (chance 0.33), scored on 60 fresh images
    acc, k, n = holdout_accuracy(tmp_path / "m" / "model.keras", tiny_holdout)
    print(f"mirrored: {k}/{n} held-out images right")
    assert acc >= HOLDOUT_FLOOR, (k, n)


def test_mixup_views_blend_images_and_labels(tiny_data, tiny_holdout, imagenet_mnv2_100, tmp_path):
    """--mixup: each augmented view blends two images with weight lam >= 0.5 drawn from
    Beta(a, a); the view's label blends the same way; the plain view is left alone."""
    blended = []

    class Seeing(TrainMethod):
        def sources(self, part, view, images):
            if part == "train":
                blended.append((view, np.asarray(images)))

    cfg = TrainConfig(data=str(tiny_data), out=str(tmp_path / "m"), mixup=0.4,
                      **{**TINY, "views": 3, "epochs_finetune": 1})
    t = Trainer(cfg, echo=quiet, method=Seeing())
    r = t.run()
    n = len(t.ds.train)
    rows = t.cache.rows("train")  # the typed rows of the view cache
    y, y2, lam, view = rows.y, rows.y2, rows.lam, rows.view
    assert lam.shape == (3 * n,) and np.all(lam[view == 0] == 1.0) and np.all(y2[view == 0] == y[view == 0])
    assert np.all((lam >= 0.5) & (lam <= 1.0)) and np.mean(lam[view > 0] < 0.99) > 0.3
    soft = t.targets.view_labels(rows)
    np.testing.assert_allclose(soft.sum(1), 1.0, rtol=1e-6)
    mixed = (view > 0) & (y2 != y)
    assert mixed.any()
    idx = np.flatnonzero(mixed)
    np.testing.assert_allclose(soft[idx, y[idx]], lam[idx], rtol=1e-6)
    np.testing.assert_allclose(soft[idx, y2[idx]], 1 - lam[idx], rtol=1e-6)
    # the plain view's images are the decoded images; mixed views are not
    plain = np.concatenate([im for v, im in blended if v == 0])
    from edgetl.data.tfdata import load_array

    np.testing.assert_array_equal(plain, load_array(t.ds.train.paths, 32).astype(np.float32))
    acc, k, n = holdout_accuracy(r.run_dir / "model.keras", tiny_holdout)
    print(f"mixup: {k}/{n} held-out images right")
    assert acc >= HOLDOUT_FLOOR, (k, n)
    with pytest.raises(EdgetlError, match="--mixup -1"):
        TrainConfig(data=str(tiny_data), mixup=-1).validate()


def test_resume_from_another_directory_with_a_relative_data_path(tiny_data, imagenet_mnv2_100, tmp_path,
                                                                 monkeypatch):
    """A run started with a relative DATA path and interrupted at a phase-2 epoch resumes from another working
    directory (the config records absolute paths; a config from before that is resolved through split.json), and
    the summary shows phase 1's time from the earlier run instead of `nan`."""
    import shutil

    import yaml

    work = tmp_path / "project"
    shutil.copytree(tiny_data, work / "photos")
    monkeypatch.chdir(work)

    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1 and self.model.name == "edgetl_classifier":
                raise KeyboardInterrupt

    cfg = TrainConfig(data="photos", out="run", **{**TINY, "epochs_finetune": 3, "patience": 10})
    with pytest.raises(TrainingInterrupted):
        train(cfg, callbacks=[Stop()], echo=quiet)
    saved = yaml.safe_load((work / "run" / "config.yaml").read_text())
    assert saved["data"] == str(work / "photos")  # recorded absolute
    saved["data"] = "photos"  # as a run written before: relative to a working directory now gone
    (work / "run" / "config.yaml").write_text(yaml.safe_dump(saved))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    lines = []
    r = train(TrainConfig(out=str(work / "run")), resume=True, echo=lines.append)
    assert (work / "run" / "manifest.json").exists() and [h["epoch"] for h in r.history["phase2"]] == [1, 2, 3]
    table = [x for x in lines if x.startswith(("1 head", "2 tune"))]
    assert len(table) == 2 and not any("nan" in x for x in table), table
    assert table[0].endswith("s") and float(table[0].split()[-1].rstrip("s")) > 0
