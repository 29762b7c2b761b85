"""Keras callbacks: per-epoch progress lines, NaN guard, history persisted for resume."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import keras

from edgetl.artifacts import write_json
from edgetl.errors import TrainingDiverged


class Progress(keras.callbacks.Callback):
    def __init__(self, phase: str, epochs: int, echo):
        super().__init__()
        self.phase, self.epochs, self.echo = phase, epochs, echo

    def on_epoch_begin(self, epoch, logs=None):
        self._t = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        parts = [f"{self.phase} epoch {epoch + 1:>3}/{self.epochs}"]
        for k in ("loss", "accuracy", "val_loss", "val_accuracy"):
            if k in logs:
                parts.append(f"{k.replace('accuracy', 'acc')} {logs[k]:.4f}")
        parts.append(f"lr {lr:.1e}")
        parts.append(f"{time.perf_counter() - self._t:.1f}s")
        self.echo("  ".join(parts))


class NanGuard(keras.callbacks.Callback):
    """Stop at once with a clear message when the loss is NaN or infinite."""

    def __init__(self, phase: str, hint: str):
        super().__init__()
        self.phase, self.hint = phase, hint
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise TrainingDiverged(
                f"{self.phase}: the loss became {float(loss)} at epoch {self.epoch + 1}, batch {batch + 1}; "
                f"{self.hint}")


class HistoryFile(keras.callbacks.Callback):
    """Append each epoch's logs to a JSON file, so a resumed run keeps its curves."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = Path(path)
        self.rows = json.loads(self.path.read_text()) if self.path.exists() else []

    def on_train_begin(self, logs=None):
        start = int(getattr(self.model, "_initial_epoch", 0) or 0)
        self.rows = self.rows[:start]

    def on_epoch_end(self, epoch, logs=None):
        row = {k: float(v) for k, v in (logs or {}).items()}
        row["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        row["epoch"] = epoch + 1
        self.rows = self.rows[:epoch] + [row]
        write_json(self.path, self.rows)
