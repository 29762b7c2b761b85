"""Keras callbacks: per-epoch progress lines, NaN guard, history persisted for resume."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import keras
import numpy as np

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
        self._t, self._epoch, self._meter = 0.0, 0, None  # the running epoch's (set at its start)

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


# what a callback that watches val_loss keeps between epochs (EarlyStopping, ReduceLROnPlateau)
STATE_FIELDS = ("wait", "best", "best_epoch", "stopped_epoch", "cooldown_counter")
METADATA = "training_metadata.json"


class EpochKey(keras.callbacks.Callback):
    """Sets ``variable`` to the epoch about to run, before its batches are read: the training
    stream's order is a function of it (:meth:`edgetl.data.viewcache.ViewCache.dataset`), so epoch
    k reads the same rows in the same order whether or not the run was resumed."""

    def __init__(self, variable):
        super().__init__()
        self.variable = variable

    def on_epoch_begin(self, epoch, logs=None):
        self.variable.assign(epoch)


def saved_checkpoint(backup_dir) -> dict:
    """The record of the last committed checkpoint in ``backup_dir`` ({} when there is none):
    its epoch, its files, the callbacks' state and the phase's time so far."""
    p = Path(backup_dir) / METADATA
    if not p.exists():
        return {}
    from edgetl.errors import EdgetlError

    try:
        d = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise EdgetlError(f"{p}: unreadable checkpoint record ({e}); remove {Path(backup_dir)} to redo this "
                          f"phase from its start, then resume") from None
    ok = isinstance(d, dict) and isinstance(d.get("epoch"), int) and d["epoch"] >= 0 and all(
        isinstance(d.get(k, ""), str) and "/" not in d.get(k, "") and not d.get(k, "").startswith(".")
        for k in ("weights", "state"))
    if not ok:
        raise EdgetlError(f"{p}: not a checkpoint record written by edgetl (field epoch, weights or state); "
                          f"remove {Path(backup_dir)} to redo this phase from its start, then resume")
    return d


class AtomicBackup(keras.callbacks.BackupAndRestore):
    """Keras' BackupAndRestore, written so that the last good checkpoint survives any
    failure, and so that a resumed run goes on exactly where the interrupted one was.

    Each epoch's checkpoint is a set of files named for the epoch: the weights (with the
    optimizer's state: moments, step count, learning rate) and ``state.npz`` (the best
    weights EarlyStopping keeps, the dropout layers' random-generator states); the record
    ``training_metadata.json`` (epoch, file names, the ``stateful`` callbacks' counters and
    best values, the phase's time so far) is renamed into place last, so that a process
    stopped at any point leaves the previous epoch's checkpoint whole. The free space is
    checked before each write (a full disk makes HDF5 crash, not fail), and a failed write
    becomes a one-line error that says how much space is needed and how to resume.

    With no checkpoint, the random generators of the model's layers (dropout) start from
    ``seed`` and the phase's name: what ran before the phase (another phase, the recipe
    search) does not change what the phase does."""

    def __init__(self, backup_dir: str, resume_hint: str = "", writer: bool = True, stateful=(),
                 seed: int = 0, tag: str = ""):
        super().__init__(backup_dir, double_checkpoint=False)
        self.resume_hint = resume_hint
        self.writer = writer  # multi-worker: every worker restores, only the chief saves and deletes
        self.stateful = list(stateful)
        self.seed, self.tag = int(seed), tag
        self.elapsed = 0.0  # seconds of this phase in earlier runs
        self._t0 = 0.0  # when this run's fit began
        for stale in Path(backup_dir).glob(".*tmp*"):  # left by a process killed mid-write
            stale.unlink(missing_ok=True)

    # ---- what a checkpoint holds besides the weights ----------------------
    def seed_states(self) -> list:
        """The model's random-generator states (Keras keeps them out of the weights)."""
        weights = {id(w) for w in self.model.weights}
        return [v for v in self.model.variables if id(v) not in weights]

    def reset_seeds(self) -> None:
        import zlib

        base = (self.seed * 7919 + zlib.crc32(self.tag.encode())) % (1 << 30)
        for i, v in enumerate(self.seed_states()):
            v.assign(np.array([base + i] + [0] * (int(np.prod(v.shape)) - 1), dtype=v.dtype).reshape(v.shape))

    def state(self) -> tuple[list[dict], dict[str, np.ndarray]]:
        fields, arrays = [], {}
        for j, cb in enumerate(self.stateful):
            f = {}
            for k in STATE_FIELDS:
                if hasattr(cb, k):
                    v = getattr(cb, k)
                    f[k] = None if v is None else (int(v) if k != "best" else float(v))
            best = getattr(cb, "best_weights", None)
            if best is not None:
                f["best_weights"] = len(best)
                arrays.update({f"cb{j}_best{i}": np.asarray(a) for i, a in enumerate(best)})
            fields.append(f)
        for i, v in enumerate(self.seed_states()):
            arrays[f"seed{i}"] = np.asarray(keras.ops.convert_to_numpy(v))
        return fields, arrays

    def restore_state(self, fields: list, arrays) -> None:
        for j, (cb, f) in enumerate(zip(self.stateful, fields)):
            for k in STATE_FIELDS:
                if k in f:
                    setattr(cb, k, f[k])
            if "best_weights" in f:
                cb.best_weights = [arrays[f"cb{j}_best{i}"] for i in range(int(f["best_weights"]))]
        for i, v in enumerate(self.seed_states()):
            if f"seed{i}" in arrays:
                v.assign(arrays[f"seed{i}"])

    # ---- Keras' hooks -------------------------------------------------------
    def on_train_begin(self, logs=None):
        self._t0 = time.perf_counter()
        super().on_train_begin(logs)

    def _load_model(self):
        d = Path(self.backup_dir)
        rec = saved_checkpoint(d)
        if not rec:
            self.reset_seeds()
            return
        opt = self.model.optimizer
        if opt is not None and not opt.built:
            opt.build(self.model.trainable_variables)  # its state is in the weights file
        self.model.load_weights(str(d / rec.get("weights", "latest.weights.h5")))
        if rec.get("state"):
            with np.load(d / rec["state"], allow_pickle=False) as z:
                self.restore_state(rec.get("callbacks", []), {k: z[k] for k in z.files})
        else:  # a checkpoint of an older edgetl: weights and epoch only
            self.reset_seeds()
        self.elapsed = float(rec.get("elapsed", 0.0))
        self.model._initial_epoch = rec["epoch"]

    def needed_bytes(self) -> int:
        """About what the next checkpoint takes: the last one, else the variables (weights
        and optimizer slots) at 4 bytes each and the best weights; plus a margin."""
        d = Path(self.backup_dir)
        rec = saved_checkpoint(d)
        last = [d / rec[k] for k in ("weights", "state") if rec.get(k) and (d / rec[k]).exists()]
        if last:
            size = sum(p.stat().st_size for p in last)
        else:
            n = 2 * sum(int(v.numpy().size) for v in self.model.variables)
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
        epoch = int(self._current_epoch)
        names = {"weights": f"epoch-{epoch:04d}.weights.h5", "state": f"epoch-{epoch:04d}.state.npz"}
        # temporary names keep the suffix (Keras wants .weights.h5) and start with a dot (swept when reopened)
        tmp = {k: d / f".tmp{os.getpid()}.{n}" for k, n in names.items()}
        tmp_w = tmp["weights"]
        tmp_m = d / f".{METADATA}.tmp{os.getpid()}"
        fields, arrays = self.state()
        rec = {"epoch": epoch, "batch": self._last_batch_seen, **names, "callbacks": fields,
               "elapsed": self.elapsed + time.perf_counter() - self._t0}
        try:
            self.write_weights(str(tmp_w))
            with open(tmp["state"], "wb") as f:
                np.savez(f, **arrays)
            tmp_m.write_text(json.dumps(rec))
            for k, n in names.items():
                os.replace(tmp[k], d / n)
            os.replace(tmp_m, d / METADATA)  # the commit: until here the previous checkpoint stands
        except OSError as e:
            raise EdgetlError(f"{d}: writing a checkpoint failed ({e.strerror or e}); it needs about "
                              f"{need / 2**20:.0f} MB free; the previous checkpoint is intact{resume}",
                              exit_code=1) from None
        finally:
            for p in (*tmp.values(), tmp_m):
                p.unlink(missing_ok=True)
        for p in d.iterdir():  # earlier epochs' files (and the old layout's), no longer referenced
            if p.name not in names.values() and p.name != METADATA and not p.name.startswith("."):
                p.unlink(missing_ok=True)
