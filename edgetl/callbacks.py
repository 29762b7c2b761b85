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
    """One line per epoch (metrics, learning rate, time, rows per second); within an epoch
    that runs long, a line every ``every`` seconds with rows per second and the epoch's ETA."""

    def __init__(self, phase: str, epochs: int, echo, rows: int | None = None, batch_size: int | None = None,
                 every: float = 30.0):
        super().__init__()
        self.phase, self.epochs, self.echo = phase, epochs, echo
        self.rows, self.batch_size, self.every = rows, batch_size, every

    def on_epoch_begin(self, epoch, logs=None):
        from edgetl.progress import Throughput

        self._t = time.perf_counter()
        self._epoch = epoch
        self._meter = Throughput(f"{self.phase} epoch {epoch + 1}/{self.epochs}", self.rows or 0, self.echo,
                                 unit="rows", every=self.every) if self.rows and self.batch_size else None

    def on_train_batch_end(self, batch, logs=None):
        m = self._meter
        if m is not None:
            done = min(m.total, (batch + 1) * int(self.batch_size or 0))
            if done < m.total:
                m.update(done)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        parts = [f"{self.phase} epoch {epoch + 1:>3}/{self.epochs}"]
        for k in ("loss", "accuracy", "val_loss", "val_accuracy"):
            if k in logs:
                parts.append(f"{k.replace('accuracy', 'acc')} {logs[k]:.4f}")
        parts.append(f"lr {lr:.1e}")
        dt = time.perf_counter() - self._t
        parts.append(f"{dt:.1f}s")
        if self.rows and dt > 0:
            parts.append(f"{self.rows / dt:,.0f} rows/s")
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

    def __init__(self, path: Path, writer: bool = True):
        super().__init__()
        self.path = Path(path)
        self.writer = writer  # multi-worker: only the chief writes
        self.rows = json.loads(self.path.read_text()) if self.path.exists() else []

    def on_train_begin(self, logs=None):
        start = int(getattr(self.model, "_initial_epoch", 0) or 0)
        self.rows = self.rows[:start]

    def on_epoch_end(self, epoch, logs=None):
        row = {k: float(v) for k, v in (logs or {}).items()}
        row["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        row["epoch"] = epoch + 1
        self.rows = self.rows[:epoch] + [row]
        if self.writer:
            write_json(self.path, self.rows)


class AtomicBackup(keras.callbacks.BackupAndRestore):
    """Keras' BackupAndRestore, written so that the last good checkpoint survives any
    failure: the weights and the epoch counter go to temporary files beside the
    checkpoint and are renamed into place; the free space is checked before each write
    (a full disk makes HDF5 crash, not fail), and a failed write becomes a one-line
    error that says how much space is needed and how to resume."""

    def __init__(self, backup_dir: str, resume_hint: str = "", writer: bool = True):
        super().__init__(backup_dir, double_checkpoint=False)
        self.resume_hint = resume_hint
        self.writer = writer  # multi-worker: every worker restores, only the chief saves and deletes
        for stale in Path(backup_dir).glob(".*.tmp*"):  # left by a process killed mid-write
            stale.unlink(missing_ok=True)

    def needed_bytes(self) -> int:
        """About what the next checkpoint takes: the last one, else the variables (weights
        and optimizer slots) at 4 bytes each, plus a margin."""
        last = Path(self._weights_path)
        if last.exists():
            size = last.stat().st_size
        else:
            n = sum(int(v.numpy().size) for v in self.model.variables)
            opt = getattr(self.model, "optimizer", None)
            n += sum(int(v.numpy().size) for v in getattr(opt, "variables", [])) if opt is not None else 0
            size = 4 * n
        return int(size * 1.2) + (4 << 20)

    def write_weights(self, path: str) -> None:
        self.model.save_weights(filepath=path, overwrite=True)

    def on_train_end(self, logs=None):
        if self.writer:
            super().on_train_end(logs)

    def _save_model(self):
        import os
        import shutil

        from edgetl.errors import EdgetlError

        if not self.writer:
            return
        d = Path(self.backup_dir)
        d.mkdir(parents=True, exist_ok=True)
        need, free = self.needed_bytes(), shutil.disk_usage(d).free
        resume = f"; then resume: {self.resume_hint}" if self.resume_hint else ""
        if free < need:
            raise EdgetlError(f"{d}: not enough free space for a checkpoint (needs about {need / 2**20:.0f} MB, "
                              f"{free / 2**20:.0f} MB free); free some space{resume}", exit_code=1)
        tmp_w = d / f".latest.tmp{os.getpid()}.weights.h5"
        tmp_m = d / f".training_metadata.tmp{os.getpid()}.json"
        try:
            self.write_weights(str(tmp_w))
            tmp_m.write_text(json.dumps({"epoch": self._current_epoch, "batch": self._last_batch_seen}))
            os.replace(tmp_w, self._weights_path)
            os.replace(tmp_m, self._training_metadata_path)
        except OSError as e:
            raise EdgetlError(f"{d}: writing a checkpoint failed ({e.strerror or e}); it needs about "
                              f"{need / 2**20:.0f} MB free; the previous checkpoint is intact{resume}",
                              exit_code=1) from None
        finally:
            tmp_w.unlink(missing_ok=True)
            tmp_m.unlink(missing_ok=True)
