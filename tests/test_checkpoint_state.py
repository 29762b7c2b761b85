"""An epoch's checkpoint holds everything the next epoch depends on (edgetl/training/callbacks.py AtomicBackup):
the weights with the optimizer's state, EarlyStopping's counters and best weights, ReduceLROnPlateau's
counters, the dropout generators; restored exactly on resume. Small Keras model, no data on disk."""
import json

import keras
import numpy as np
import pytest

from edgetl.training.callbacks import AtomicBackup


def model():
    keras.utils.set_random_seed(3)
    m = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dropout(0.5),
                          keras.layers.Dense(3)])
    m.compile(keras.optimizers.Adam(0.05), keras.losses.CategoricalCrossentropy(from_logits=True))
    return m


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = np.eye(3, dtype="float32")[rng.integers(0, 3, 64)]  # noise labels: val loss rises, the callbacks act
    return x, y


def callbacks(ckpt):
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=50, restore_best_weights=True)
    plateau = keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=1)
    return stop, plateau, AtomicBackup(str(ckpt), stateful=[stop, plateau], seed=1, tag="t")


class Snapshot(keras.callbacks.Callback):
    """What the callbacks and the model hold at the end of epoch ``at`` (after the checkpoint), then stop."""

    def __init__(self, at, stop, plateau, backup, interrupt):
        super().__init__()
        self.at, self.cbs, self.interrupt, self.seen = at, (stop, plateau, backup), interrupt, None

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.at:
            stop, plateau, backup = self.cbs
            self.seen = state_of(stop, plateau, backup, self.model)
            if self.interrupt:
                raise KeyboardInterrupt


def state_of(stop, plateau, backup, m):
    return {"stop": (stop.wait, stop.best, stop.best_epoch), "plateau": (plateau.wait, plateau.best,
                                                                         plateau.cooldown_counter),
            "best_weights": [w.copy() for w in stop.best_weights or []],
            "seeds": [np.asarray(v.numpy()).copy() for v in backup.seed_states()],
            "optimizer": [np.asarray(v.numpy()).copy() for v in m.optimizer.variables],
            "weights": [w.copy() for w in m.get_weights()]}


def same(a, b):
    assert a["stop"] == b["stop"] and a["plateau"] == b["plateau"]
    for k in ("best_weights", "seeds", "optimizer", "weights"):  # every one of them, non-empty
        assert len(a[k]) == len(b[k]) > 0 and all(np.array_equal(x, y) for x, y in zip(a[k], b[k])), k


def test_a_checkpoint_restores_the_callbacks_optimizer_and_generators_exactly(tmp_path):
    x, y = data()
    fit = dict(x=x[:48], y=y[:48], validation_data=(x[48:], y[48:]), batch_size=8, epochs=8, verbose=0, shuffle=False)

    m = model()  # interrupted after epoch 4 (index 3)
    stop, plateau, backup = callbacks(tmp_path / "ckpt")
    snap = Snapshot(3, stop, plateau, backup, interrupt=True)
    with pytest.raises(KeyboardInterrupt):
        m.fit(callbacks=[stop, plateau, backup, snap], **fit)
    record = json.loads((tmp_path / "ckpt" / "training_metadata.json").read_text())
    assert record["epoch"] == 4 and sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "epoch-0004.state.npz", "epoch-0004.weights.h5", "training_metadata.json"]
    assert snap.seen["plateau"][0] > 0 or snap.seen["stop"][0] > 0  # the callbacks were counting

    m2 = model()  # a new process: fresh model and callbacks, the checkpoint on disk
    stop2, plateau2, backup2 = callbacks(tmp_path / "ckpt")

    class Restored(keras.callbacks.Callback):
        seen = None

        def on_train_begin(self, logs=None):
            Restored.seen = state_of(stop2, plateau2, backup2, self.model)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        m2.fit(callbacks=[stop2, plateau2, backup2, Restored()], **fit)
    same(snap.seen, Restored.seen)

    # and the whole run: resumed from epoch 4 it ends where an uninterrupted one ends
    m3 = model()
    stop3, plateau3, backup3 = callbacks(tmp_path / "ckpt")
    m3.fit(callbacks=[stop3, plateau3, backup3], **fit)
    m4 = model()
    m4.fit(callbacks=list(callbacks(tmp_path / "fresh")), **fit)
    assert all(np.array_equal(a, b) for a, b in zip(m3.get_weights(), m4.get_weights()))
