"""Two-phase transfer learning, as a schedule over explicit state.

Phase 1 (feature extraction): the frozen base runs once per image and cached
view; the head trains on those features. Phase 2 (fine-tuning): the last N
layers (or K blocks) of the base are unfrozen, BatchNorm stays in inference
mode, the whole model trains on augmented batches at a low learning rate,
starting from the best phase-1 head.

:class:`Trainer` runs the parts in order, each with one job, and passes their
results on as typed objects: :func:`setup.prepare` (data, seed, strategy:
:class:`~edgetl.training.setup.Prepared`), :func:`setup.build` (the model:
:class:`~edgetl.training.setup.Built`), the view cache's plan and builder
(:mod:`edgetl.training.cache`), the phase runner with the recipe search
(:mod:`edgetl.training.phases`, :mod:`edgetl.training.search`), evaluation
(:mod:`edgetl.training.evaluation`) and the run's files
(:mod:`edgetl.training.outputs`). What varies between train, distill and adapt
is a training method (:mod:`edgetl.training.methods`).

Every epoch is checkpointed under ``RUN/checkpoints``; ``resume=True`` goes on
from there. The finished model, labels, metrics, curves and manifest are
written atomically at the end; ``manifest.json`` is written last.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetl import backbones, rundir
from edgetl.config import TrainConfig
from edgetl.errors import EdgetlError, TrainingInterrupted
from edgetl.rundir import load_run_config, read_labels  # noqa: F401  (part of this module's API)
from edgetl.training import outputs, recipe, setup
from edgetl.training.cache import CacheBuilder, CutPlan, ViewPlan, plan_cut, plan_views
from edgetl.training.evaluation import Evaluator
from edgetl.training.methods import Method, TrainMethod
from edgetl.training.phases import PhaseRunner
from edgetl.training.setup import (  # noqa: F401  (part of this module's API)
    Built,
    Prepared,
    absolute_paths,
    default_run_dir,
    get_strategy,
    resolve_saved_paths,
    set_seed,
)
from edgetl.training.targets import Targets
from edgetl.types import Echo, PathLike


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict
    model: object = None
    history: dict = field(default_factory=dict)


class Trainer:
    """Runs the schedule for one config and training method: prepare → build → start →
    view cache → phase 1 → phase 2 → evaluation → outputs. Each step's result is an attribute
    set to None here and filled by that step (:attr:`prepared`, :attr:`built`, :attr:`cut`,
    :attr:`view_plan`, :attr:`cache`, :attr:`runner`, :attr:`evaluator`)."""

    kind: str | None = None  # a subclass may name its kind (the lock's message, the manifest); else the method's

    def __init__(self, config: TrainConfig, resume: bool = False, callbacks=(), echo=print, root="models",
                 force: bool = False, method: Method | None = None):
        self.echo = echo
        self.force = force
        self.extra_callbacks = list(callbacks)
        self.resume = resume
        self.method: Method = method if method is not None else TrainMethod()
        self.kind = type(self).kind or self.method.kind
        if resume:
            if not config.out:
                raise EdgetlError("--resume needs --out RUN_DIR: the run directory to continue")
            run_dir = Path(config.out)
            if rundir.is_finished(run_dir) and not (run_dir / rundir.CHECKPOINTS).exists():
                raise EdgetlError(f"{run_dir}: this run already finished; nothing to resume")
            saved = load_run_config(run_dir)
            saved.out = str(run_dir)
            config = resolve_saved_paths(saved, run_dir)
        self.cfg = absolute_paths(config.validate().resolved())
        self.bb = backbones.get(self.cfg.backbone)
        self.run_dir = Path(self.cfg.out) if self.cfg.out else default_run_dir(self.cfg, root)
        self.cfg.out = str(self.run_dir)
        from edgetl.training.distributed import tf_config_is_chief

        self.chief = self.cfg.strategy != "multiworker" or tf_config_is_chief()
        self.ckpt = self.run_dir / rundir.CHECKPOINTS
        self.timings: dict[str, float] = {}
        self.cache_stats: dict = {}
        self.recipe_log: dict = {"recipe": self.cfg.recipe, "lr_decay": self.cfg.lr_decay,
                                 "accumulate": self.cfg.accumulate, "min_steps": self.cfg.min_steps,
                                 "given": recipe.given(self.cfg)}  # explicit options: used by either recipe
        # the schedule's state: each filled by its step
        self.prepared: Prepared | None = None
        self.targets: Targets | None = None
        self.built: Built | None = None
        self.cut: CutPlan | None = None
        self.view_plan: ViewPlan | None = None
        self.cache: Any = None
        self.runner: PhaseRunner | None = None
        self.evaluator: Evaluator | None = None

    # ---- the state, once its step ran -----------------------------------
    @property
    def p(self) -> Prepared:
        if self.prepared is None:
            raise RuntimeError("Trainer.prepare() has not run")
        return self.prepared

    @property
    def b(self) -> Built:
        if self.built is None:
            raise RuntimeError("Trainer.build() has not run")
        return self.built

    @property
    def ds(self):
        return self.p.ds

    @property
    def is_chief(self) -> bool:
        return self.p.is_chief if self.prepared is not None else self.chief

    # ---- the steps ------------------------------------------------------
    def prepare(self) -> Prepared:
        self.prepared = setup.prepare(self.cfg, lambda ds: self.method.check_inputs(ds, self.echo), self.echo)
        self.targets = Targets(len(self.prepared.ds.classes), self.prepared.class_weight, self.method)
        return self.prepared

    def build(self) -> Built:
        """The model, the cut before phase 2's deepest candidate and the view cache's plan (a cache
        over the disk budget is refused before anything is written)."""
        self.built = setup.build(self.cfg, self.bb, self.p)
        self.cut = plan_cut(self.cfg, self.bb, self.built.base, self.p.strategy)
        self.view_plan = plan_views(self.cfg, self.method, self.p.ds, self.cut, self.built.n_features, self.run_dir,
                                    self.ckpt)
        self.evaluator = Evaluator(self.cfg, self.p.ds, self.built.model, self.built.extractor,
                                   self.built.n_features, self.echo)
        return self.built

    def start(self) -> None:
        """Write the run's config, labels and split (and the method's extra files): only once every
        input was checked and the model built (weights loaded), so that a refused run leaves nothing."""
        setup.start(self.cfg, self.p.ds, self.run_dir, self.ckpt, self.p.is_chief, self.force, self.resume, self.echo)
        if self.p.is_chief:
            self.method.write_extra(self.run_dir)

    def cached_views(self):
        """Make (or reuse) the view cache; returns it."""
        assert self.cut is not None and self.view_plan is not None, "Trainer.build() has not run"
        got = CacheBuilder(self.cfg, self.bb, self.method, self.p, self.b, self.cut, self.view_plan, self.run_dir,
                           self.ckpt, self.echo).cached_views()
        self.timings["features_s"] = self.timings.get("features_s", 0.0) + got.seconds
        self.cache, self.cache_stats = got.cache, got.stats
        return self.cache

    def phases_runner(self) -> PhaseRunner:
        if self.runner is None:
            if self.cache is None:
                self.cached_views()
            assert self.cut is not None and self.targets is not None
            self.runner = PhaseRunner(self.cfg, self.bb, self.p, self.b, self.cut, self.cache, self.targets,
                                      self.method, self.run_dir, self.ckpt, self.extra_callbacks, self.timings,
                                      self.recipe_log, self.echo)
        return self.runner

    def phase1(self) -> list[dict]:
        return self.phases_runner().phase1()

    def phase2(self) -> list[dict] | None:
        return self.phases_runner().phase2()

    # ---- evaluation (a subclass may leave a split unread: edgetl search) --
    def ev(self) -> Evaluator:
        if self.evaluator is None:
            raise RuntimeError("Trainer.build() has not run")
        return self.evaluator

    def predict_split(self, split) -> np.ndarray:
        return self.ev().predict_split(split)

    def evaluate(self) -> dict:
        return self.ev().evaluate()

    def evaluate_test(self) -> dict | None:
        return self.ev().evaluate_test()

    def near_duplicates(self) -> dict | None:
        return self.ev().near_duplicates(self.cache)

    def head_targets(self) -> np.ndarray:
        """The training targets of the cached views, as numpy (see :class:`Targets`)."""
        assert self.targets is not None
        return self.targets.head_targets(self.cache)

    def write_outputs(self, metrics: dict, history: dict) -> None:
        """Write the finished run (:func:`edgetl.training.outputs.write_outputs`); removes the
        checkpoints and the view cache."""
        assert self.view_plan is not None
        outputs.write_outputs(self.cfg, self.kind or self.method.kind, self.p.ds, self.b.model, metrics, history,
                              self.run_dir, self.ckpt, self.view_plan.cache_dir, self.p.num_workers)

    # ---- the schedule ---------------------------------------------------
    def run(self) -> TrainResult:
        """Train under the run directory's lock (the chief's: in a cluster the other workers
        share the directory)."""
        lock = rundir.writing(self.run_dir, f"edgetl {self.kind}", echo=self.echo) if self.chief \
            else contextlib.nullcontext()
        with lock:
            setup.claim(self.run_dir, self.resume, self.chief, self.force)
            return self._run()

    def _run(self) -> TrainResult:
        from edgetl import signals

        t_start = time.perf_counter()
        if self.cfg.strategy == "multiworker":  # every worker is up before TensorFlow connects (see the function)
            from edgetl.training import distributed

            try:
                distributed.announce_before_connect(self.ckpt / rundir.WORKERS, "--out", self.echo)
            except KeyboardInterrupt:
                raise TrainingInterrupted(f"interrupted by {signals.name()} while waiting for the other workers to "
                                          f"announce themselves; nothing was kept: start every worker again") from None
        # multiworker: connecting and building wait for every worker inside TensorFlow's C++ code, where no
        # Python signal handler runs; HardStop ends the process there on SIGINT/SIGTERM (nothing is written yet)
        guard = signals.HardStop("while connecting to the other workers (TF_CONFIG); nothing was written: start "
                                 "every worker again") \
            if self.cfg.strategy == "multiworker" else contextlib.nullcontext()
        with guard:
            self.prepare()
            self.build()
        self.start()
        try:
            return self.phases(t_start)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM (edgetl/signals.py), at any stage after the run began
            raise TrainingInterrupted(
                f"interrupted by {signals.name()}; every finished epoch is checkpointed in {self.ckpt}. Resume with: "
                f"{rundir.resume_hint(self.run_dir)}") from None

    def phases(self, t_start: float) -> TrainResult:
        p = self.p
        h1 = self.phase1()
        model = self.b.model
        if not p.is_chief:  # trains in step with the chief; the chief scores and writes the run
            self.phase2()
            self.echo(f"worker {p.worker_index} of {p.num_workers}: done; the chief writes the run")
            return TrainResult(self.run_dir, {"worker": p.worker_index, "num_workers": p.num_workers,
                                              "view_cache": self.cache_stats, "timings": self.timings})
        m1 = self.evaluate()
        self.echo(f"phase 1: val accuracy {m1['accuracy']:.4f}")
        w1 = model.get_weights()
        h2 = self.phase2()
        m2 = self.evaluate() if h2 is not None else None
        if m2 is not None:
            self.echo(f"phase 2: val accuracy {m2['accuracy']:.4f}")
        selected = "phase2" if m2 is not None and m2["accuracy"] >= m1["accuracy"] else "phase1"
        if selected == "phase1" and m2 is not None:
            self.echo("phase 2 did not improve val accuracy; keeping the phase-1 model")
            model.set_weights(w1)
        final = m2 if selected == "phase2" and m2 is not None else m1
        test = self.evaluate_test()  # after every choice: test never steers one
        dups = self.near_duplicates()  # reads the test images too: only once nothing is left to choose
        head = test or final
        self.timings["total_s"] = time.perf_counter() - t_start
        metrics = {
            "phase1": m1, "phase2": m2, "selected_phase": selected,
            "val_accuracy": final["accuracy"], "final": final, "test": test,
            "headline": {"split": head["split"], "accuracy": head["accuracy"], "ci95": head["ci95"], "n": head["n"],
                         "note": "test split: held out, never used for any choice" if test else
                         "validation split: used for model selection (early stopping, phase choice), so optimistic"},
            "recipe": self.recipe_log,
            "timings": self.timings,
            "view_cache": self.cache_stats,
            "near_duplicates": dups,
        }
        history = {"phase1": h1, "phase2": h2 or []}
        self.write_outputs(metrics, history)
        outputs.summary(metrics, history, self.timings, self.run_dir, self.echo)
        return TrainResult(self.run_dir, metrics, model, history)


def train(config: TrainConfig, resume: bool = False, callbacks: tuple = (), echo: Echo = print,
          root: PathLike = "models", force: bool = False, method: Method | None = None) -> TrainResult:
    """Train a classifier; see :class:`Trainer`. Returns the run directory and metrics.
    ``force`` retrains a finished run in place (its exports and reports are removed)."""
    return Trainer(config, resume=resume, callbacks=callbacks, echo=echo, root=root, force=force,
                   method=method).run()
