"""Options as a user types them, end to end from the command line, each asserted by its
effect: --lr-decay and --accumulate (per-unit rates and optimizer updates), distill --student,
run --from / --set / --force (which stages ran)."""
import json

import keras
import numpy as np
from click.testing import CliRunner

from edgetl.cli import main


class WeightWatch(keras.callbacks.Callback):
    """Which training batches moved the weights, and each trainable variable before and after."""

    def on_train_begin(self, logs=None):
        self.start = {v.path: np.array(v.numpy()) for v in self.model.trainable_weights}
        self.last = [np.array(v.numpy()) for v in self.model.trainable_weights]
        self.moved: list[bool] = []

    def on_train_batch_end(self, batch, logs=None):
        now = [np.array(v.numpy()) for v in self.model.trainable_weights]
        self.moved.append(any(not np.array_equal(a, b) for a, b in zip(now, self.last)))
        self.last = now

    def on_train_end(self, logs=None):
        self.end = {v.path: np.array(v.numpy()) for v in self.model.trainable_weights}


def test_lr_decay_and_accumulate_from_the_cli(tiny_data, imagenet_mnv2_100, tmp_path, monkeypatch):
    """`edgetl train --lr-decay 0.1 --accumulate 2`: phase 2's top unit learns at --lr-finetune and
    the next at a tenth of it (recorded, and its weights move about a tenth as far); the weights
    change on every second batch only, and the run records half as many updates as batches."""
    watches = {}
    real_fit = keras.Model.fit

    def fit(self, *a, callbacks=(), **k):
        if self.name == "edgetl_classifier":  # phase 2 (one step per execution: every batch seen)
            watches[self.name] = w = WeightWatch()
            callbacks = [*callbacks, w]
        return real_fit(self, *a, callbacks=callbacks, **k)

    monkeypatch.setattr(keras.Model, "fit", fit)
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", str(tiny_data), "--alpha", "1.0", "--img-size", "32", "--views", "2",
                                  "--batch-size", "8", "--seed", "1", "--recipe", "fixed", "--epochs-head", "4",
                                  "--epochs-finetune", "2", "--patience", "10", "--unfreeze-blocks", "2",
                                  "--lr-finetune", "1e-3", "--lr-decay", "0.1", "--accumulate", "2", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "lr 0.001, lr x 0.1 per unit deeper" in r.output
    rec = json.loads((out / "metrics.json").read_text())["recipe"]
    assert rec["lr_decay"] == 0.1 and rec["accumulate"] == 2
    # 39 training images x 2 views at batch 8: 10 batches an epoch, so 5 updates an epoch
    assert rec["updates"] == {"phase1": 4 * 5, "phase2": 2 * 5}, rec
    w = watches["edgetl_classifier"]
    assert len(w.moved) == 20 and w.moved == [False, True] * 10  # an update on every second batch only
    # the recorded rates: the top unit at --lr-finetune, the one below it at a tenth
    units = rec["phase2_unit_lrs"]
    assert [u["unit"] for u in units] == ["top", "block_16"], units  # MobileNetV2's Conv_1, then its last block
    assert units[0]["lr"] == 1e-3 and abs(units[1]["lr"] - 1e-4) < 1e-12
    # ...and applied: Adam moves each weight by about its rate per update
    step = {unit: np.mean([np.abs(w.end[p] - w.start[p]).mean() for p in w.start if p.startswith(prefix)])
            for unit, prefix in (("top", "Conv_1/"), ("block_16", "block_16_"))}
    ratio = step["top"] / step["block_16"]
    print(f"mean |weight change| top {step['top']:.2e}, block_16 {step['block_16']:.2e}: ratio {ratio:.1f}")
    assert 4 <= ratio <= 25, step  # 10 expected; without the decay about 1


def test_distill_student_from_the_cli(tiny_run, tiny_data, tmp_path):
    """`edgetl distill --student efficientnet_lite0`: the student is that backbone (config, saved
    model, parameter count in the report), trained against the MobileNetV2 teacher."""
    import edgetl.nets.layers  # noqa: F401  (registers the Preprocess layer for loading)

    out = tmp_path / "student"
    r = CliRunner().invoke(main, ["distill", str(tiny_data), "--teacher", str(tiny_run.run_dir), "--student",
                                  "efficientnet_lite0", "--weights", "none", "--img-size", "32", "--epochs-head", "1",
                                  "--epochs-finetune", "0", "--views", "1", "--batch-size", "16", "--seed", "1",
                                  "--recipe", "fixed", "--no-compare", "--out", str(out)])
    assert r.exit_code == 0, r.output
    import yaml

    assert yaml.safe_load((out / "config.yaml").read_text())["backbone"] == "efficientnet_lite0"
    assert json.loads((out / "manifest.json").read_text())["train"]["config"]["backbone"] == "efficientnet_lite0"
    student = keras.models.load_model(out / "model.keras")
    teacher = keras.models.load_model(tiny_run.run_dir / "model.keras")
    assert "efficientnet_lite0" in [layer.name for layer in student.layers]
    assert not any(layer.name.startswith("mobilenetv2") for layer in student.layers)
    assert any(layer.name.startswith("mobilenetv2") for layer in teacher.layers)
    rows = {row["model"]: row for row in json.loads((out / "distill.json").read_text())["rows"]}
    assert rows["teacher"]["params"] == teacher.count_params()
    assert rows["distilled student"]["params"] == student.count_params() != teacher.count_params()
    assert json.loads((out / "distill_config.json").read_text())["teacher"] == str(tiny_run.run_dir)
