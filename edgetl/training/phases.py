"""The phase runner: phase 1 (the head on the cached pooled features), phase 2 (the chosen
candidate's layers and the head on the cached activations at the cut), each with its learning
rate and epochs, checkpoints, callbacks and resumption from an earlier run's checkpoints."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from edgetl import artifacts, rundir
from edgetl.config import TrainConfig
from edgetl.training import recipe
from edgetl.training.cache import CutPlan
from edgetl.training.search import RecipeSearch
from edgetl.training.setup import Built, Prepared
from edgetl.training.targets import Targets
from edgetl.types import Echo


class PhaseRunner:
    """Runs the two phases of one run on its view cache. ``timings`` and ``log`` are the run's
    (this writes its entries into them)."""

    def __init__(self, cfg: TrainConfig, bb, p: Prepared, built: Built, cut: CutPlan, cache, targets: Targets,
                 method, run_dir: Path, ckpt: Path, extra_callbacks: list, timings: dict, log: dict, echo: Echo):
        self.cfg, self.bb, self.p, self.built, self.cut, self.cache = cfg, bb, p, built, cut, cache
        self.targets, self.method, self.run_dir, self.ckpt = targets, method, run_dir, ckpt
        self.extra_callbacks, self.timings, self.log, self.echo = extra_callbacks, timings, log, echo
        k = len(p.ds.classes)
        self.loss = lambda: method.loss(cfg, k)
        self.metrics = lambda: method.metrics(k)
        self.search = RecipeSearch(cfg, bb, built.base, cut, p, cache, ckpt, self.loss, self.metrics,
                                   targets.row_targets, log, timings, echo)
        self.chosen: recipe.Candidate | None = None
        self.backup: Any = None  # the phase's AtomicBackup (its elapsed time covers earlier runs)
        self.epoch_key: Any = None  # the shuffled stream's epoch variable (EpochKey sets it)

    def stream(self, part: str, x: str, shuffle: bool, per_epoch: int | None = None):
        """(tf.data pipeline of cached rows for ``fit``, steps per epoch or None); see
        :meth:`ViewCache.dataset`. Multi-worker: each worker reads its own shards of the
        training rows (``--batch-size`` stays the global batch), and all of the validation
        rows (every worker computes the same validation metrics)."""
        cache, cfg = self.cache, self.cfg
        r = self.p.replicas  # multi-replica strategies need batches that split evenly
        targets = self.targets.row_targets if part == "train" else self.targets.row_val_targets
        n = int(cache.rows(part).ok.sum())
        if self.p.num_workers > 1:
            strategy = self.p.strategy
            per = max(1, cfg.batch_size // r)
            local = max(1, r // self.p.num_workers)
            n_shards = len(cache.part(part))
            if shuffle:
                def fn(ctx):
                    k = ctx.num_input_pipelines if n_shards >= ctx.num_input_pipelines else 1
                    return cache.dataset(part, x, per, targets, shuffle=True, seed=cfg.seed,
                                         shard_index=ctx.input_pipeline_id if k > 1 else 0, num_shards=k,
                                         repeat=True, drop_remainder=True)

                return strategy.distribute_datasets_from_function(fn), max(1, n // (per * r))
            return (strategy.distribute_datasets_from_function(lambda ctx: cache.dataset(part, x, per, targets)),
                    max(1, -(-n // (per * local))))
        if shuffle:  # each epoch's order from (seed, epoch): the callbacks set the epoch (EpochKey)
            import tensorflow as tf

            self.epoch_key = tf.Variable(0, dtype=tf.int64, trainable=False)
            return cache.dataset(part, x, cfg.batch_size, targets, shuffle=True, seed=cfg.seed,
                                 drop_remainder=r > 1, epoch=self.epoch_key, per_epoch=per_epoch), None
        return cache.dataset(part, x, cfg.batch_size, targets, take=n - n % r if r > 1 else None), None

    def callbacks(self, phase: str, epochs: int, rows: int | None = None):
        import keras

        from edgetl.training.callbacks import AtomicBackup, EpochKey, HistoryFile, NanGuard, Progress

        key = "lr_head" if phase == "phase 1" else "lr_finetune"
        tag = phase.replace(" ", "")
        stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=self.cfg.patience, restore_best_weights=True)
        plateau = keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.3,
                                                    patience=max(1, self.cfg.patience // 2), min_lr=1e-7)
        # after the two it restores (Keras calls on_train_begin in this order, and theirs resets them)
        self.backup = AtomicBackup(str(self.ckpt / tag), rundir.resume_hint(self.run_dir), writer=self.p.is_chief,
                                   stateful=[stop, plateau], seed=self.cfg.seed, tag=tag)
        key_cb = self.epoch_key
        return [
            NanGuard(phase, f"lower --{key.replace('_', '-')} (now {self.phase_lr(phase)}) or check the data"),
            stop, plateau, self.backup,
            HistoryFile(self.ckpt / f"history_{tag}.json", writer=self.p.is_chief),
            Progress(phase, epochs, self.echo, rows=rows, batch_size=self.cfg.batch_size),
            *([EpochKey(key_cb)] if key_cb is not None else []),
            *self.extra_callbacks,
        ]

    def phase_lr(self, phase: str) -> float:
        if phase == "phase 1":
            return self.cfg.lr_head
        return self.chosen.lr if self.chosen is not None else recipe.fixed_lr(self.cfg)

    def phase_epochs(self, phase: str, epochs: int, rows: int, min_steps: int) -> int:
        """The phase's epochs: as given, or (auto recipe) enough for ``min_steps`` updates."""
        if self.cfg.recipe != "auto" or not epochs:
            return epochs
        n = recipe.budget_epochs(epochs, rows, self.cfg.batch_size, min_steps, self.cfg.accumulate)
        if n > epochs:
            self.echo(f"{phase.replace('phase', 'phase ')}: {n} epochs instead of {epochs}, so that it makes at least "
                      f"{min_steps} optimizer steps on {rows} rows (auto recipe: the epochs given are a minimum; "
                      f"early stopping still applies; --min-steps 0 runs them as given)")
        self.log[f"{phase}_epochs"] = n
        return n

    def record_updates(self, phase: str, opt) -> None:
        """The optimizer updates the phase made (Keras counts updates, not batches: with
        --accumulate N, one per N batches)."""
        self.log.setdefault("updates", {})[phase] = int(opt.iterations.numpy())

    def phase1(self) -> list[dict]:
        """Phase 1: the head on the cached pooled features; returns its history (a resumed run
        whose phase 1 finished loads its best head)."""
        cfg, head = self.cfg, self.built.head
        head_w = self.ckpt / "phase1_head.weights.h5"
        hist_path = self.ckpt / "history_phase1.json"
        if head_w.exists():
            head.load_weights(str(head_w))
            try:  # the earlier run's phase-1 time (and its extraction time, if this run extracted nothing)
                earlier = json.loads((self.ckpt / rundir.TIMINGS).read_text())
                self.timings["phase1_train_s"] = float(earlier["phase1_train_s"])
                self.timings["features_s"] = max(self.timings.get("features_s", 0.0),
                                                 float(earlier.get("features_s", 0.0)))
            except (OSError, ValueError, KeyError, TypeError):
                pass
            self.echo("phase 1: done in an earlier run; loaded its best head")
            return json.loads(hist_path.read_text()) if hist_path.exists() else []
        t0 = time.perf_counter()
        rows = int(self.cache.rows("train").ok.sum())
        with self.p.strategy.scope():
            # the head is tiny: run several batches per call to cut per-step overhead
            head.compile(optimizer=recipe.optimizer(cfg.lr_head, accumulate=cfg.accumulate), loss=self.loss(),
                         metrics=self.metrics(), steps_per_execution=16 if self.p.replicas == 1 else 1)
        epochs = self.phase_epochs("phase1", cfg.epochs_head, rows, cfg.min_steps)
        (tr, tr_steps), (va, va_steps) = self.stream("train", "feats", True), self.stream("val", "feats", False)
        head.fit(tr, steps_per_epoch=tr_steps, validation_data=va, validation_steps=va_steps,
                 epochs=epochs, verbose=0, shuffle=False, callbacks=self.callbacks("phase 1", epochs, rows))
        self.timings["phase1_train_s"] = time.perf_counter() - t0 + self.backup.elapsed  # and earlier runs
        self.record_updates("phase1", head.optimizer)
        if self.p.is_chief:
            artifacts.write_json(self.ckpt / rundir.TIMINGS, self.timings)  # a resumed run reports phase 1's time
            with artifacts.atomic_path(head_w, suffix=".weights.h5") as tmp:
                head.save_weights(str(tmp))
        return json.loads(hist_path.read_text()) if hist_path.exists() else []

    def phase2_model(self, rows: int):
        """The model phase 2 trains: the trained suffix and head on the cached activations at the
        cut, or (no cut) the whole classifier on the cached view images."""
        import keras

        shape = tuple(self.cache.layout.act_shape or ())
        if self.cut.cut_tensor is not None:
            where = "from memory" if self.cache.in_memory(self.cache.part("train"), "acts") else "streamed from disk"
            self.echo(f"phase 2: training on the {rows:,} cached views at the cut {shape} ({where}); "
                      f"the frozen layers before it are not run again")
            with self.p.strategy.scope():
                inp = keras.Input(shape, name="cached")
                z = keras.layers.GlobalAveragePooling2D(name="pool")(self.cut.suffix(inp, training=False))
                for layer in self.built.head_layers:
                    z = layer(z)
                return keras.Model(inp, z, name="edgetl_classifier")
        self.echo(f"phase 2: the graph cannot be cut before the trained layers; training the whole model on "
                  f"the {rows:,} cached view images")
        return self.built.model

    def phase2(self) -> list[dict] | None:
        """Phase 2 on the cached activations at the cut. None when it does not run: no
        fine-tuning epochs, nothing to train, or the auto recipe's search found that no
        candidate beats the phase-1 model on val beyond its noise (phase 2 cannot pay)."""
        cfg = self.cfg
        if cfg.epochs_finetune == 0 or not self.cut.to_train:
            return None
        t0 = time.perf_counter()
        rows = int(self.cache.rows("train").ok.sum())
        model = self.phase2_model(rows)
        # An epoch of phase 2 reads every cached view. Epochs of one image's worth of rows drawn across the
        # views (ViewCache.dataset(per_epoch=)) were tried: early stopping then stops after a quarter of the
        # steps at 4 views, and the digits task lost about half of auto's gain (docs/performance.md).
        tr, va = self.stream("train", "acts", True), self.stream("val", "acts", False)
        given = recipe.given(cfg)
        if cfg.recipe == "auto" and given:
            kept = " and ".join(f"--{k.replace('_', '-')} {v:g}" for k, v in given.items())
            self.echo(f"phase 2: auto recipe: {kept} as given; it searches only what was left open "
                      f"({len(self.cut.candidates)} candidate(s))")
        chosen = self.chosen = self.search.choose(model, tr, va)
        if chosen is None:
            self.timings["phase2_s"] = time.perf_counter() - t0
            return None
        what = (chosen.name if cfg.recipe == "auto" else
                f"last {cfg.unfreeze_blocks} block(s)" if cfg.unfreeze_blocks is not None
                else f"last {cfg.unfreeze if cfg.unfreeze is not None else recipe.DEFAULT_UNFREEZE} layer(s)"
                + (" widened to whole blocks" if self.bb.unit == "block" else ""))
        decay = f", lr x {cfg.lr_decay:g} per unit deeper" if cfg.lr_decay != 1.0 else ""
        n = self.search.compile_chosen(model, chosen)
        self.echo(f"phase 2: fine-tuning the {what}: {len(chosen.layers)} layers, {n} with trainable weights "
                  f"(BatchNorm frozen, inference mode), lr {chosen.lr:g}{decay}")
        epochs = self.phase_epochs("phase2", cfg.epochs_finetune, rows, cfg.min_steps // 2)
        self.log["phase2_unit_lrs"] = recipe.unit_rates(self.built.base, self.bb, chosen.layers, chosen.lr,
                                                        cfg.lr_decay)
        model.fit(tr[0], steps_per_epoch=tr[1], validation_data=va[0], validation_steps=va[1], epochs=epochs,
                  verbose=0, shuffle=False, callbacks=self.callbacks("phase 2", epochs, rows))  # tf.data shuffles
        self.record_updates("phase2", model.optimizer)
        self.timings["phase2_s"] = time.perf_counter() - t0 + self.backup.elapsed  # and earlier runs
        p = self.ckpt / "history_phase2.json"
        return json.loads(p.read_text()) if p.exists() else []
