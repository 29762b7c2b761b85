"""Two-phase transfer learning.

Phase 1 (feature extraction): the frozen base runs once per image and cached
view; the head trains on those features. Phase 2 (fine-tuning): the last N
layers (or K blocks) of the base are unfrozen, BatchNorm stays in inference
mode, the whole model trains on augmented batches at a low learning rate,
starting from the best phase-1 head.

Every epoch is checkpointed under ``RUN/checkpoints``; ``resume=True`` goes on
from there. The finished model, labels, metrics, curves and manifest are
written atomically at the end; ``manifest.json`` is written last.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from edgetl import artifacts, backbones, recipe, rundir
from edgetl.config import TrainConfig, parse_augment
from edgetl.data.dataset import Dataset, class_weights, scan
from edgetl.errors import EdgetlError, TrainingInterrupted
from edgetl.rundir import load_run_config, read_labels  # noqa: F401  (part of this module's API)
from edgetl.types import Echo, PathLike

CLASS_LINES = 20  # above this many classes the per-class counts print as a summary and the extremes


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict
    model: object = None
    history: dict = field(default_factory=dict)


def default_run_dir(cfg: TrainConfig, root="models", prefix: str | None = None) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = prefix or (cfg.backbone + (f"-a{cfg.alpha:g}" if cfg.alpha is not None else ""))
    d = Path(root) / f"{name}-{stamp}"
    i = 2
    while d.exists():
        d = Path(root) / f"{name}-{stamp}-{i}"
        i += 1
    return d


def get_strategy(name: str):
    import tensorflow as tf

    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored":
        if gpus:
            return tf.distribute.MirroredStrategy()
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=cpus)
    return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()


def set_seed(seed: int) -> None:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    try:
        tf.config.experimental.enable_op_determinism()
    except Exception:  # pragma: no cover - older TF
        pass


def absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """The config with its file paths made absolute (the data, a weights file, the cache folder): a
    run records them so, and resumes from any working directory."""
    import os

    if cfg.data:
        cfg.data = os.path.abspath(cfg.data)
    if cfg.cache_dir:
        cfg.cache_dir = os.path.abspath(cfg.cache_dir)
    if cfg.weights not in ("imagenet", "none"):
        cfg.weights = os.path.abspath(cfg.weights)
    return cfg


def resolve_saved_paths(cfg: TrainConfig, run_dir: Path) -> TrainConfig:
    """A saved config's relative paths (runs written before paths were recorded absolute), taken
    from the run itself: the data folder from split.json's absolute root, others against the run's
    parent folder when they exist there; never from the current working directory alone."""
    if cfg.data and not Path(cfg.data).is_absolute():
        try:
            root = json.loads((run_dir / rundir.SPLIT).read_text()).get("root")
        except (OSError, ValueError, AttributeError):
            root = None
        if isinstance(root, str) and Path(root).is_dir():
            cfg.data = root
    for key in ("cache_dir", "weights"):
        v = getattr(cfg, key)
        if v and v not in ("imagenet", "none") and not Path(v).is_absolute() and not Path(v).exists():
            near = run_dir.resolve().parent / v
            if near.exists():
                setattr(cfg, key, str(near))
    return cfg


class Trainer:
    """Runs the two phases for one config. Subclasses (distillation) change the
    loss and the targets; the schedule, checkpoints and outputs stay the same."""

    kind = "train"

    def __init__(self, config: TrainConfig, resume: bool = False, callbacks=(), echo=print, root="models",
                 force: bool = False):
        self.echo = echo
        self.force = force
        self.extra_callbacks = list(callbacks)
        self.resume = resume
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
        from edgetl.distributed import tf_config_is_chief

        self.chief = self.cfg.strategy != "multiworker" or tf_config_is_chief()
        self.ckpt = self.run_dir / rundir.CHECKPOINTS
        self.timings: dict[str, float] = {}
        self.worker_index, self.num_workers, self.is_chief = 0, 1, True  # multi-worker: set by prepare()
        self.cache_stats: dict = {}
        self.chosen: recipe.Candidate | None = None
        self._search_opt: Any = None  # the auto recipe search's switchable optimizer (see compile_search)
        self.recipe_log: dict = {"recipe": self.cfg.recipe, "lr_decay": self.cfg.lr_decay,
                                 "accumulate": self.cfg.accumulate, "min_steps": self.cfg.min_steps,
                                 "given": recipe.given(self.cfg)}  # explicit options: used by either recipe

    # ---- set-up ---------------------------------------------------------
    def prepare(self) -> None:
        cfg = self.cfg
        if cfg.strategy == "multiworker":
            # collective ops are configured when TensorFlow starts: before anything else runs
            from edgetl import distributed

            self.echo(f"multiworker: connecting to the other workers ({distributed.describe_cluster()}, TF_CONFIG); "
                      f"this waits until every worker has started")
            self.strategy = get_strategy("multiworker")
            distributed.patch_keras()
            self.worker_index, self.num_workers, self.is_chief = distributed.worker_of(self.strategy)
            if self.num_workers > 1:
                self.echo(f"multiworker: worker {self.worker_index} of {self.num_workers} "
                          f"({distributed.describe_cluster()}){', the chief' if self.is_chief else ''}")
        self.ds: Dataset = scan(cfg.data, cfg.val_split, cfg.seed, cfg.strict, test_split=cfg.test_split)
        ds = self.ds
        k = len(ds.classes)
        self.echo(f"data: {ds.root} ({ds.layout}), {k} classes, "
                  f"{len(ds.train)} train / {len(ds.val)} val"
                  + (f" / {len(ds.test)} test" if ds.test is not None else ""))
        n_te = ds.test.counts(k) if ds.test is not None else [None] * k
        lines = [f"  {c:<20} {n_tr:>6} train {n_va:>6} val" + (f" {n_t:>6} test" if n_t is not None else "")
                 for c, n_tr, n_va, n_t in zip(ds.classes, ds.train.counts(k), ds.val.counts(k), n_te)]
        if k > CLASS_LINES:  # hundreds of classes: the extremes and a summary, not a line each
            tr = np.asarray(ds.train.counts(k))
            self.echo(f"  train images per class: min {tr.min()}, median {int(np.median(tr))}, max {tr.max()} "
                      f"(every class's counts are in metrics.json); the smallest and largest:")
            order, half = np.argsort(tr, kind="stable"), CLASS_LINES // 2
            lines = [lines[i] for i in order[:half]] + ["  ..."] + [lines[i] for i in order[-half:]]
        for line in lines:
            self.echo(line)
        if ds.test is not None:
            self.echo(f"test split: {ds.test_source}; held out: never used for any choice, reported at the end")
        else:
            self.echo("test split: none (too few images for the auto rule, or --test-split 0); the val accuracy "
                      "below is the one selection used, so it is optimistic")
        if ds.skipped:
            self.echo(f"warning: skipped {len(ds.skipped)} unusable file(s):")
            for f, why in ds.skipped:
                self.echo(f"  {f}: {why}")
        if ds.nested:
            listed = ", ".join(f"{f} ({n})" for f, n in ds.nested[:10]) + (", ..." if len(ds.nested) > 10 else "")
            self.echo(f"warning: {sum(n for _, n in ds.nested)} images in subfolders of class folders were "
                      f"included in their class: {listed}")
        ratio = ds.imbalance()
        if ratio >= 1.5:
            hint = "" if cfg.class_weights == "auto" else "; --class-weights auto balances the loss"
            self.echo(f"warning: classes are imbalanced (largest/smallest = {ratio:.1f}){hint}")
        self.class_weight = class_weights(ds) if cfg.class_weights == "auto" else None
        self.check_inputs()  # before anything is written: a refused input leaves no half-made run
        set_seed(cfg.seed)
        if cfg.strategy != "multiworker":
            self.strategy = get_strategy(cfg.strategy)
        from edgetl import signals

        signals.reinstall()  # a TensorFlow cluster runtime may have taken SIGTERM over
        self.replicas = int(self.strategy.num_replicas_in_sync)
        if self.replicas > 1:
            self.echo(f"strategy: {type(self.strategy).__name__} over {self.replicas} replicas")

    def start(self) -> None:
        """Write the run's config, labels and split: only once every input was checked and the
        model built (weights loaded), so that a refused run leaves nothing behind."""
        cfg, ds = self.cfg, self.ds
        if self.force and not self.resume and self.is_chief and rundir.is_finished(self.run_dir):
            gone = rundir.clear_derived(self.run_dir)
            self.echo(f"--force: retraining {self.run_dir} in place; removed what the old model made: "
                      + ", ".join(gone))
        self.ckpt.mkdir(parents=True, exist_ok=True)
        if not self.is_chief:  # only the chief writes the run's files
            return
        artifacts.write_yaml(self.run_dir / rundir.CONFIG, cfg.to_dict())
        artifacts.write_text(self.run_dir / rundir.LABELS, "\n".join(ds.classes) + "\n")
        root = ds.root
        artifacts.write_json(self.run_dir / rundir.SPLIT, {
            "root": str(root.resolve()),
            "classes": ds.classes,
            **{name: [{"file": str(Path(p).resolve()), "label": int(y)} for p, y in zip(s.paths, s.labels)]
               for name, s in (("train", ds.train), ("val", ds.val), ("test", ds.test)) if s is not None},
        })

    def build(self) -> None:
        from edgetl.nets import model as M
        from edgetl.nets.weights import build_base

        cfg = self.cfg
        with self.strategy.scope():
            self.base = build_base(self.bb, cfg.size, cfg.alpha, cfg.weights)
            self.base.trainable = False
            n_feat = int(self.base.output_shape[-1])
            self.head_layers = M.build_head(n_feat, len(self.ds.classes), cfg.dropout, cfg.dense, cfg.l2)
            self.model, self.extractor = M.assemble(self.base, self.bb, cfg.size, self.head_layers)
            self.head = M.head_model(n_feat, self.head_layers)
        self.n_features = n_feat
        self.plan_views()  # a view cache over the disk budget is refused before anything is written

    def check_inputs(self) -> None:
        """Checks of further inputs once the data is scanned (distillation: the teacher)."""

    # ---- losses and targets (overridden by distillation) ----------------
    def loss(self):
        import keras

        return keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=self.cfg.label_smoothing)

    def metrics(self):
        import keras

        return [keras.metrics.CategoricalAccuracy(name="accuracy")]

    # ---- targets of the cached rows (overridden by distillation) ---------
    def view_labels(self) -> np.ndarray:
        """Soft labels of the cached training views: one-hot, or for a mixup view the blend of
        its two images' labels (lam * y + (1 - lam) * y2); zero for unlabelled images."""
        r = self.cache.rows("train")
        eye = np.eye(len(self.ds.classes), dtype=np.float32)
        soft = r.lam[:, None] * eye[r.y] + (1.0 - r.lam[:, None]) * eye[r.y2]
        return soft * r.labeled[:, None]

    def head_targets(self) -> np.ndarray:
        """Training targets of the cached views, as numpy (distillation appends the teacher's
        logits); training computes the same in the tf.data graph (:meth:`row_targets`)."""
        return self.view_labels()

    def val_targets(self, labels: np.ndarray) -> np.ndarray:
        return np.eye(len(self.ds.classes), dtype=np.float32)[labels]

    def extend_targets(self, y, teacher):
        """Targets of a batch from its label vectors (distillation appends the teacher's logits)."""
        return y

    def row_targets(self, meta, teacher):
        """(targets,) or (targets, sample weights) of a batch of cached training rows, in the
        tf.data graph: soft labels from ``meta``; under --class-weights auto each row's class
        weight, blended like its label, 1 for unlabelled rows (passed as sample weights:
        Keras' class_weight reads a class from argmax(y), wrong for blended labels and for
        distillation's [labels | teacher logits] targets)."""
        import tensorflow as tf

        from edgetl.data.viewcache import META

        k = len(self.ds.classes)
        col = {name: meta[:, i] for i, name in enumerate(META)}
        lam, labeled = col["lam"][:, None], col["labeled"][:, None]
        soft = (lam * tf.one_hot(tf.cast(col["y"], tf.int32), k)
                + (1.0 - lam) * tf.one_hot(tf.cast(col["y2"], tf.int32), k)) * labeled
        t = self.extend_targets(soft, teacher)
        if self.class_weight is None:
            return (t,)
        cw = tf.constant([self.class_weight[i] for i in range(k)], tf.float32)
        w = tf.where(col["labeled"] > 0.5, tf.linalg.matvec(soft, cw), 1.0)
        return (t, w)

    def row_val_targets(self, meta, teacher):
        import tensorflow as tf

        from edgetl.data.viewcache import META

        y = tf.one_hot(tf.cast(meta[:, META.index("y")], tf.int32), len(self.ds.classes))
        return (self.extend_targets(y, teacher),)

    def row_weights(self) -> np.ndarray | None:
        """The sample weights of :meth:`row_targets`, as numpy (None without class weights)."""
        if self.class_weight is None:
            return None
        cw = np.array([self.class_weight[i] for i in range(len(self.ds.classes))], np.float32)
        return np.where(self.cache.rows("train").labeled, self.view_labels() @ cw, 1.0).astype(np.float32)

    # ---- the frozen prefix: run once per image and view ----------------
    def plan_cut(self):
        """Split the base at the start of the first unit that phase 2 trains.

        Everything before the cut stays frozen in both phases, so its output is
        computed once per image and cached view; phase 1 trains the head on the
        pooled features of the frozen suffix, phase 2 trains the suffix and head on
        the cached activations. Returns the layers to unfreeze."""
        import keras

        if getattr(self, "_planned", False):
            return self.to_train
        cfg = self.cfg
        self.candidates = recipe.candidates(self.base, self.bb, cfg)
        self.deepest = max(self.candidates, key=lambda c: len(c.layers))
        to_train = self.deepest.layers  # the cut serves every candidate: it is before the deepest one
        self.cut_tensor, self.cut_layer = None, None
        if to_train:
            first = to_train[0]
            for _, layers in backbones.units(self.base, self.bb):
                if first in layers:
                    first = layers[0]
                    break
            try:
                cut = first.input
                if isinstance(cut, (list, tuple)) or cut is self.base.inputs[0]:
                    raise ValueError("no single tensor before the first trained unit")
                with self.strategy.scope():
                    self.suffix = keras.Model(cut, self.base.output, name="trained_suffix")
                    self.prefix = keras.Model(self.base.inputs, cut, name="frozen_prefix")
                self.cut_tensor, self.cut_layer = cut, first.name
            except Exception:  # graph can't be cut there: the cache holds the views' images instead
                self.cut_tensor = None
        self.to_train, self._planned = to_train, True
        return to_train

    def cache_layout(self):
        """What each cached row holds: pooled features; for phase 2 the activations at the cut
        (or, where the graph cannot be cut, the view's image itself, uint8)."""
        from edgetl.data.viewcache import Layout

        cfg = self.cfg
        if not cfg.epochs_finetune or not self.to_train:
            act_shape, act_dtype = None, cfg.cache_dtype
        elif self.cut_tensor is not None:
            act_shape, act_dtype = tuple(int(d) for d in self.cut_tensor.shape[1:]), cfg.cache_dtype
        else:
            act_shape, act_dtype = (cfg.size, cfg.size, 3), "uint8"
        return Layout(act_shape, self.n_features, self.teacher_dim(), cfg.cache_dtype, act_dtype)

    def teacher_dim(self) -> int:
        """Width of the teacher column of the cache (distillation: the teacher's logits)."""
        return 0

    def n_views(self) -> int:
        return self.cfg.views if self._augment_names() else 1

    def extra_paths(self) -> list[str]:
        """Unlabelled images added to every view (distillation's transfer set; none here):
        they get the same views as the training images and no hard label (their rows' label
        vectors are zero)."""
        return []

    def n_extra(self) -> int:
        return len(self.extra_paths())

    def _augment_names(self):
        return parse_augment(self.cfg.augment)

    def view_size(self) -> int:
        """Side of the cached views before they are resized to the input (distillation makes
        them at the teacher's size when that is larger, so the teacher sees full detail)."""
        return self.cfg.size

    def view_hook(self, view: int, images) -> dict | None:
        """Called with each batch of each view's images (0-255 float); distillation returns the
        teacher's logits here ({"teacher": ...}), once per image and view."""
        return None

    def val_hook(self, images) -> dict | None:
        """The same for each batch of validation images (plain view)."""
        return None

    def plan_views(self):
        """The view cache's layout, shards, folder and key; refuses a cache over the disk
        budget before anything is written."""
        from edgetl.data import viewcache as V

        cfg = self.cfg
        self.plan_cut()
        layout = self.cache_layout()
        bs = self.extract_batch()
        shards = V.plan(len(self.ds.train), self.n_extra(), len(self.ds.val), self.n_views(),
                        V.shard_rows_for(layout, batch=bs))
        self.cache_dir = (Path(cfg.cache_dir) / f"{self.run_dir.name}.{rundir.VIEW_CACHE}" if cfg.cache_dir
                          else self.ckpt / rundir.VIEW_CACHE)
        key = V.ViewCache.make_key(
            layout=layout, shards=len(shards), seed=cfg.seed, views=self.n_views(), mixup=cfg.mixup,
            augment=self._augment_names(), size=cfg.size, view_size=self.view_size(), resize=cfg.resize,
            backbone=cfg.backbone, alpha=cfg.alpha, weights=cfg.weights, cut=self.cut_layer,
            train=V.ViewCache.make_key(p=list(self.ds.train.paths), y=self.ds.train.labels.tolist()),
            extra=V.ViewCache.make_key(p=self.extra_paths()), val=V.ViewCache.make_key(p=list(self.ds.val.paths)),
            teacher=self.teacher_key())
        have = sum(f.stat().st_size for f in self.cache_dir.rglob("*.npy")) if self.cache_dir.exists() else 0
        V.check_budget(self.cache_dir, V.estimate_bytes(layout, shards), cfg.cache_budget, have)
        self.view_plan = (layout, shards, key)
        return self.view_plan

    def teacher_key(self) -> str | None:
        return None

    def extract_batch(self) -> int:
        return max(self.cfg.batch_size, 64)  # inference only: larger batches use the CPU better

    def mix_plan(self) -> list[tuple[np.ndarray, np.ndarray] | None]:
        """Per view: (partner of each training image, weight lam) for mixup views, else None.
        Drawn from the seed alone, so any shard can be (re)made on its own."""
        cfg = self.cfg
        n = len(self.ds.train)
        rng = np.random.default_rng(cfg.seed + 7)
        out: list[tuple[np.ndarray, np.ndarray] | None] = []
        for v in range(self.n_views()):
            if v > 0 and cfg.mixup > 0:
                partner = rng.permutation(n)
                lam = np.maximum(rng.beta(cfg.mixup, cfg.mixup, n), 0.5).astype(np.float32)
                out.append((partner, lam))
            else:
                out.append(None)
        return out

    def my_shards(self, shards):
        """The shards this worker extracts (all of them on one machine)."""
        return shards[self.worker_index::self.num_workers]

    def cached_views(self):
        """The view cache: frozen-prefix outputs of every training view and of the validation
        images, computed once, on disk (a resumed run reuses every finished shard)."""
        from edgetl.data.viewcache import ViewCache
        from edgetl.progress import fmt_bytes

        layout, shards, key = getattr(self, "view_plan", None) or self.plan_views()
        if self.num_workers > 1:  # before any work: every worker must see the others on the shared storage
            from edgetl import distributed

            distributed.announce(self.ckpt / rundir.WORKERS, self.worker_index, self.num_workers, "--out", self.echo,
                                 distributed.peer_timeout())
            if self.cfg.cache_dir:
                distributed.announce(self.cache_dir.parent / f"{self.run_dir.name}.{rundir.WORKERS}", self.worker_index,
                                     self.num_workers, "--cache-dir", self.echo, distributed.peer_timeout())
        if not self.is_chief:  # the chief creates (or clears) the shared cache folder
            from edgetl import distributed

            distributed.wait_for(lambda: 0 if distributed.key_ready(self.cache_dir, key) else 1,
                                 f"{self.cache_dir}: the chief's view cache", self.echo, distributed.shard_timeout())
        cache = ViewCache.open(self.cache_dir, layout, shards, key, writer=self.is_chief, echo=self.echo)
        mine = self.my_shards(shards)
        todo = cache.missing(mine)
        if cache.reused:
            self.echo(f"phase 1: view cache: reusing {cache.reused} of {len(shards)} finished shards in {self.cache_dir}")
        t0 = time.perf_counter()
        if todo:
            self.echo(f"phase 1: frozen base over {sum(s.rows for s in todo):,} views and val images "
                      f"({len(todo)} shard(s)) into {self.cache_dir}")
            self.extract(cache, todo, done_rows=sum(s.rows for s in mine) - sum(s.rows for s in todo),
                         total_rows=sum(s.rows for s in mine))
        self.wait_for_shards(cache)
        cache.rows("train"), cache.rows("val")  # the small per-row columns stay in memory
        self.timings["features_s"] = self.timings.get("features_s", 0.0) + time.perf_counter() - t0
        self.cache_stats = {"dir": str(self.cache_dir), "shards": len(shards), "reused": cache.reused,
                            "written": cache.written, "written_rows": sum(s.rows for s in todo),
                            "disk_bytes": cache.disk_bytes(), "dtype": layout.dtype,
                            "act_shape": list(layout.act_shape) if layout.act_shape else None,
                            "rows": sum(s.rows for s in cache.part("train")), "val_rows": len(self.ds.val)}
        who = f" (worker {self.worker_index} of {self.num_workers})" if self.num_workers > 1 else ""
        self.echo(f"phase 1: view cache ready: {self.cache_stats['rows']:,} training views + {len(self.ds.val):,} val "
                  f"images, {fmt_bytes(self.cache_stats['disk_bytes'])} on disk ({layout.dtype}), "
                  f"{cache.written} shard(s) / {self.cache_stats['written_rows']:,} rows written here{who}, "
                  f"{cache.reused} reused")
        return cache

    def wait_for_shards(self, cache) -> None:
        """Multi-worker: wait until every worker's shards are on the shared storage."""
        if self.num_workers > 1:
            from edgetl import distributed

            distributed.wait_for(lambda: len(cache.missing()), f"{self.cache_dir}: view cache shards", self.echo,
                                 distributed.shard_timeout())

    def extract(self, cache, todo, done_rows: int = 0, total_rows: int | None = None) -> None:
        """Run the frozen layers over the views of the shards in ``todo`` and write each shard."""
        import tensorflow as tf

        from edgetl.data.tfdata import DecodeMemo, augmenter, decode_batches
        from edgetl.data.viewcache import meta_rows
        from edgetl.progress import Throughput, fmt_bytes

        cfg = self.cfg
        memo = DecodeMemo()  # later views replay the first view's decoded batches (augmentation comes after)
        layout = cache.layout
        aug = augmenter(self._augment_names(), cfg.seed)
        size = self.view_size()
        spec = [tf.TensorSpec([None, size, size, 3], tf.float32)]
        cut = self.cut_tensor is not None

        def to_input(x):
            return tf.image.resize(x, (cfg.size, cfg.size), antialias=True) if size != cfg.size else x

        if cut:
            from edgetl.nets.layers import Preprocess

            pre = Preprocess(self.bb.preprocess)

            def encode_at_cut(x):
                x = to_input(x)
                a = self.prefix(pre(x), training=False)
                return a, tf.reduce_mean(self.suffix(a, training=False), axis=(1, 2))

            encode_fn = encode_at_cut
        else:
            def encode_whole(x):
                x = to_input(x)
                return tf.clip_by_value(x, 0.0, 255.0), self.extractor(x, training=False)

            encode_fn = encode_whole

        # traced once each; plain TensorFlow ops, nothing for AutoGraph to convert
        encode = tf.function(encode_fn, input_signature=spec, autograph=False)
        augmented = tf.function(lambda x: tf.clip_by_value(aug(x, training=True), 0.0, 255.0), input_signature=spec,
                                autograph=False)
        gens = [layer.generator for layer in aug.layers if hasattr(layer, "generator")]
        bs = self.extract_batch()
        train_paths, labels = list(self.ds.train.paths), np.asarray(self.ds.train.labels)
        sources = {"train": train_paths, "extra": self.extra_paths(), "val": list(self.ds.val.paths)}
        mix = self.mix_plan()
        total = total_rows if total_rows is not None else sum(s.rows for s in todo)
        meter = Throughput("phase 1: frozen base over the views", total, self.echo, unit="img",
                           start=done_rows)
        done = done_rows
        views = self.n_views()
        for s in todo:
            for j, g in enumerate(gens):  # augmentation seeded per shard: any shard can be redone alone
                g.state.assign(np.array([cfg.seed * 1_000_003 + s.index * 101 + j + (s.part == "val") * 7919, 0],
                                        np.int64))
            paths = sources[s.source][s.lo:s.hi]
            plan = mix[s.view] if s.source == "train" else None
            mixed = plan is not None
            partner = plan[0][s.lo:s.hi] if plan is not None else np.arange(s.lo, s.hi)
            lam = plan[1][s.lo:s.hi] if plan is not None else np.ones(s.rows, np.float32)
            pstream = decode_batches([train_paths[i] for i in partner], size, cfg.resize, bs) if mixed else None
            cols: dict[str, list] = {"feats": [], "acts": [], "teacher": []}
            oks = []
            for b in memo.batches(paths, size, cfg.resize, bs):
                for f, why in b.errors:
                    self.echo(f"warning: {f}: {why}; skipped")
                    self.ds.skipped.append((f, why))
                imgs = tf.convert_to_tensor(b.images.astype(np.float32))
                ok = b.ok
                if s.view > 0:
                    imgs = augmented(imgs)
                if pstream is not None:
                    pb = next(pstream)
                    w = lam[b.start:b.start + len(b.ok), None, None, None]
                    imgs = w * imgs + (1.0 - w) * augmented(tf.convert_to_tensor(pb.images.astype(np.float32)))
                    ok = ok & pb.ok
                extra = self.val_hook(imgs) if s.part == "val" else self.view_hook(s.view, imgs)
                a, f = encode(imgs)
                cols["feats"].append(f.numpy())
                if layout.act_shape is not None:
                    cols["acts"].append(np.round(a.numpy()) if layout.act_dtype == "uint8" else a.numpy())
                if layout.teacher_dim:
                    cols["teacher"].append(np.asarray((extra or {})["teacher"], np.float32))
                oks.append(ok)
                done += len(b.ok)
                meter.update(done, lambda: f"cache {fmt_bytes(cache.disk_bytes())}")
            idx = np.arange(s.lo, s.hi)
            if s.source == "train":
                y = labels[idx]
                meta = meta_rows(idx, s.view, y, labels[partner], lam, ok=np.concatenate(oks))
            elif s.source == "extra":
                z = np.zeros(s.rows)
                meta = meta_rows(idx, s.view, z, z, labeled=z, ok=np.concatenate(oks))
            else:
                meta = meta_rows(idx, 0, np.asarray(self.ds.val.labels)[idx], ok=np.concatenate(oks))
            out = {"feats": np.concatenate(cols["feats"]), "meta": meta}
            if layout.act_shape is not None:
                out["acts"] = np.concatenate(cols["acts"])
            if layout.teacher_dim:
                out["teacher"] = np.concatenate(cols["teacher"])
            cache.write(s, out)
            if s.part == "train" and s.source == "train" and s.hi == len(train_paths) or s.source == "extra" and \
                    s.hi == len(sources["extra"]):
                kind = "plain" if s.view == 0 else "augmented" + (", mixup" if mixed else "")
                self.echo(f"phase 1: view {s.view + 1}/{views} ({kind}) of the "
                          + ("training images" if s.source == "train" else "unlabelled images") + " cached")
        meter.update(done, lambda: f"cache {fmt_bytes(cache.disk_bytes())}", force=meter.done < meter.total)

    def stream(self, part: str, x: str, shuffle: bool, per_epoch: int | None = None):
        """(tf.data pipeline of cached rows for ``fit``, steps per epoch or None); see
        :meth:`ViewCache.dataset`. Multi-worker: each worker reads its own shards of the
        training rows (``--batch-size`` stays the global batch), and all of the validation
        rows (every worker computes the same validation metrics)."""
        cache, cfg = self.cache, self.cfg
        r = self.replicas  # multi-replica strategies need batches that split evenly
        targets = self.row_targets if part == "train" else self.row_val_targets
        n = int(cache.rows(part).ok.sum())
        if self.num_workers > 1:
            strategy = self.strategy
            per = max(1, cfg.batch_size // r)
            local = max(1, r // self.num_workers)
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

        from edgetl.callbacks import AtomicBackup, EpochKey, HistoryFile, NanGuard, Progress

        key = "lr_head" if phase == "phase 1" else "lr_finetune"
        tag = phase.replace(" ", "")
        stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=self.cfg.patience, restore_best_weights=True)
        plateau = keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.3,
                                                    patience=max(1, self.cfg.patience // 2), min_lr=1e-7)
        # after the two it restores (Keras calls on_train_begin in this order, and theirs resets them)
        self.backup = AtomicBackup(str(self.ckpt / tag), rundir.resume_hint(self.run_dir), writer=self.is_chief,
                                   stateful=[stop, plateau], seed=self.cfg.seed, tag=tag)
        key_cb = getattr(self, "epoch_key", None)
        return [
            NanGuard(phase, f"lower --{key.replace('_', '-')} (now {self.phase_lr(phase)}) or check the data"),
            stop, plateau, self.backup,
            HistoryFile(self.ckpt / f"history_{tag}.json", writer=self.is_chief),
            Progress(phase, epochs, self.echo, rows=rows, batch_size=self.cfg.batch_size),
            *([EpochKey(key_cb)] if key_cb is not None else []),
            *self.extra_callbacks,
        ]

    def phase_lr(self, phase: str) -> float:
        if phase == "phase 1":
            return self.cfg.lr_head
        return self.chosen.lr if self.chosen is not None else recipe.fixed_lr(self.cfg)

    # ---- phase 1 ---------------------------------------------------------
    def phase_epochs(self, phase: str, epochs: int, rows: int, min_steps: int) -> int:
        """The phase's epochs: as given, or (auto recipe) enough for ``min_steps`` updates."""

        if self.cfg.recipe != "auto" or not epochs:
            return epochs
        n = recipe.budget_epochs(epochs, rows, self.cfg.batch_size, min_steps, self.cfg.accumulate)
        if n > epochs:
            self.echo(f"{phase.replace('phase', 'phase ')}: {n} epochs instead of {epochs}, so that it makes at least "
                      f"{min_steps} optimizer steps on {rows} rows (auto recipe: the epochs given are a minimum; "
                      f"early stopping still applies; --min-steps 0 runs them as given)")
        self.recipe_log[f"{phase}_epochs"] = n
        return n

    def phase1(self) -> list[dict]:

        cfg = self.cfg
        self.plan_cut()
        self.cache = self.cached_views()
        head_w = self.ckpt / "phase1_head.weights.h5"
        hist_path = self.ckpt / "history_phase1.json"
        if head_w.exists():
            self.head.load_weights(str(head_w))
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
        with self.strategy.scope():
            # the head is tiny: run several batches per call to cut per-step overhead
            self.head.compile(optimizer=recipe.optimizer(cfg.lr_head, accumulate=cfg.accumulate), loss=self.loss(),
                              metrics=self.metrics(), steps_per_execution=16 if self.replicas == 1 else 1)
        epochs = self.phase_epochs("phase1", cfg.epochs_head, rows, cfg.min_steps)
        (tr, tr_steps), (va, va_steps) = self.stream("train", "feats", True), self.stream("val", "feats", False)
        self.head.fit(tr, steps_per_epoch=tr_steps, validation_data=va, validation_steps=va_steps,
                      epochs=epochs, verbose=0, shuffle=False, callbacks=self.callbacks("phase 1", epochs, rows))
        self.timings["phase1_train_s"] = time.perf_counter() - t0 + self.backup.elapsed  # and earlier runs
        self.record_updates("phase1", self.head.optimizer)
        if self.is_chief:
            artifacts.write_json(self.ckpt / rundir.TIMINGS, self.timings)  # a resumed run reports phase 1's time
            with artifacts.atomic_path(head_w, suffix=".weights.h5") as tmp:
                self.head.save_weights(str(tmp))
        return json.loads(hist_path.read_text()) if hist_path.exists() else []

    def record_updates(self, phase: str, opt) -> None:
        """The optimizer updates the phase made (Keras counts updates, not batches: with
        --accumulate N, one per N batches)."""
        self.recipe_log.setdefault("updates", {})[phase] = int(opt.iterations.numpy())

    # ---- phase 2 ---------------------------------------------------------
    def phase2(self) -> list[dict] | None:
        """Phase 2 on the cached activations at the cut. None when it does not run: no
        fine-tuning epochs, nothing to train, or the auto recipe's search found that no
        candidate beats the phase-1 model on val beyond its noise (phase 2 cannot pay)."""
        import keras

        from edgetl import recipe
        from edgetl.nets import model as M

        cfg = self.cfg
        if cfg.epochs_finetune == 0 or not self.to_train:
            return None
        t0 = time.perf_counter()
        shape = tuple(self.cache.layout.act_shape or ())
        rows = int(self.cache.rows("train").ok.sum())
        if self.cut_tensor is not None:
            where = "from memory" if self.cache.in_memory(self.cache.part("train"), "acts") else "streamed from disk"
            self.echo(f"phase 2: training on the {rows:,} cached views at the cut {shape} ({where}); "
                      f"the frozen layers before it are not run again")
            with self.strategy.scope():
                inp = keras.Input(shape, name="cached")
                z = keras.layers.GlobalAveragePooling2D(name="pool")(self.suffix(inp, training=False))
                for layer in self.head_layers:
                    z = layer(z)
                model = keras.Model(inp, z, name="edgetl_classifier")
        else:
            self.echo(f"phase 2: the graph cannot be cut before the trained layers; training the whole model on "
                      f"the {rows:,} cached view images")
            model = self.model
        # An epoch of phase 2 reads every cached view. Epochs of one image's worth of rows drawn across the
        # views (ViewCache.dataset(per_epoch=)) were tried: early stopping then stops after a quarter of the
        # steps at 4 views, and the digits task lost about half of auto's gain (docs/performance.md).
        tr, va = self.stream("train", "acts", True), self.stream("val", "acts", False)
        given = recipe.given(cfg)
        if cfg.recipe == "auto" and given:
            kept = " and ".join(f"--{k.replace('_', '-')} {v:g}" for k, v in given.items())
            self.echo(f"phase 2: auto recipe: {kept} as given; it searches only what was left open "
                      f"({len(self.candidates)} candidate(s))")
        chosen = self.chosen = self.choose_candidate(model, tr, va)
        if chosen is None:
            self.timings["phase2_s"] = time.perf_counter() - t0
            return None
        what = (chosen.name if cfg.recipe == "auto" else
                f"last {cfg.unfreeze_blocks} block(s)" if cfg.unfreeze_blocks is not None
                else f"last {cfg.unfreeze if cfg.unfreeze is not None else recipe.DEFAULT_UNFREEZE} layer(s)"
                + (" widened to whole blocks" if self.bb.unit == "block" else ""))
        decay = f", lr x {cfg.lr_decay:g} per unit deeper" if cfg.lr_decay != 1.0 else ""
        if self.searched():
            # the search's compiled step serves the final fit too (no second tracing): the deepest
            # candidate's layers stay trainable in the graph, those the chosen one leaves frozen at factor 0.
            # A resumed run that chose in an earlier process compiles the same step, so its optimizer
            # state has the same variables as the checkpoint's.
            if self._search_opt is None or model.optimizer is not self._search_opt:
                self._search_opt = self.compile_search(model)
            n = M.count_trainable(self.base, chosen.layers)
            self._search_opt.switch(chosen.lr, recipe.search_factors(self.base, self.bb, chosen, self.deepest.layers,
                                                                     cfg.lr_decay))
        else:
            n = M.set_trainable(self.base, chosen.layers)
            with self.strategy.scope():
                model.compile(optimizer=self.finetune_optimizer(chosen), loss=self.loss(), metrics=self.metrics(),
                              steps_per_execution=self.steps_per_execution())
        self.echo(f"phase 2: fine-tuning the {what}: {len(chosen.layers)} layers, {n} with trainable weights "
                  f"(BatchNorm frozen, inference mode), lr {chosen.lr:g}{decay}")
        epochs = self.phase_epochs("phase2", cfg.epochs_finetune, rows, cfg.min_steps // 2)
        self.recipe_log["phase2_unit_lrs"] = recipe.unit_rates(self.base, self.bb, chosen.layers, chosen.lr,
                                                               cfg.lr_decay)
        model.fit(tr[0], steps_per_epoch=tr[1], validation_data=va[0], validation_steps=va[1], epochs=epochs,
                  verbose=0, shuffle=False, callbacks=self.callbacks("phase 2", epochs, rows))  # tf.data shuffles
        self.record_updates("phase2", model.optimizer)
        self.timings["phase2_s"] = time.perf_counter() - t0 + self.backup.elapsed  # and earlier runs
        p = self.ckpt / "history_phase2.json"
        return json.loads(p.read_text()) if p.exists() else []

    def searched(self) -> bool:
        """Whether phase 2 trains through the search's switchable step (auto recipe, a grid, a cut)."""
        return self.cfg.recipe == "auto" and len(self.candidates) > 1 and self.cut_tensor is not None

    def compile_search(self, model):
        """Compile ``model`` with the deepest candidate's layers trainable and a switchable
        optimizer (:func:`edgetl.recipe.optimizer`): one traced step for every candidate."""
        from edgetl.nets import model as M

        M.set_trainable(self.base, self.deepest.layers)
        with self.strategy.scope():
            opt = recipe.optimizer(self.candidates[0].lr, accumulate=self.cfg.accumulate, switchable=True)
            model.compile(optimizer=opt, loss=self.loss(), metrics=self.metrics(),
                          steps_per_execution=self.steps_per_execution())
            opt.build(model.trainable_variables)
        return opt

    def steps_per_execution(self) -> int:
        """Batches per call into phase 2's compiled step: 1. (8 was tried: no faster for phase 2's
        heavier step here, and batch callbacks then see one batch in 8.)"""
        return 1

    def finetune_optimizer(self, cand):

        mult = recipe.lr_multipliers(self.base, self.bb, cand.layers, self.cfg.lr_decay)
        return recipe.optimizer(cand.lr, mult, self.cfg.accumulate)

    def choose_candidate(self, model, tr, va):
        """The phase-2 setting: the only one (fixed recipe), or the grid's best on validation.
        None: phase 2 cannot pay (see :func:`edgetl.recipe.pays`). The choice is kept in the
        checkpoints, so a resumed run does not search again.

        The search (one worker) is successive halving on the plain view of each image: every
        candidate trains ``RUNG_STEPS`` updates from the phase-1 model and is scored on val
        against that model, image by image; if none beats it beyond the noise of the val set,
        phase 2 is skipped. Otherwise the better half continue to ``PROBE_STEPS`` and the best
        of them is chosen. One compiled step serves the whole search and the final fit."""

        cands = self.candidates
        saved = self.ckpt / "recipe_choice.json"
        if len(cands) == 1:
            self.recipe_log["phase2"] = {"chosen": cands[0].record(), "grid": []}
            return cands[0]
        earlier = json.loads(saved.read_text()) if saved.exists() else None
        if earlier and earlier.get("skipped"):
            self.recipe_log["phase2"] = earlier
            self.echo("phase 2: skipped in an earlier run (no candidate beat the phase-1 model on val)")
            return None
        found = [c for c in cands if earlier and c.name == (earlier.get("chosen") or {}).get("name")]
        if earlier and found:
            self.recipe_log["phase2"] = earlier
            self.echo(f"phase 2: recipe chosen in an earlier run: {found[0].name}")
            return found[0]
        if self.cut_tensor is None:  # on images a search costs whole trainings: use the middle setting
            chosen = cands[len(cands) // 2]
            self.recipe_log["phase2"] = {"chosen": chosen.record(), "grid": [], "note": "no search: no cached cut"}
            return chosen
        t0 = time.perf_counter()
        start = model.get_weights()
        r = self.cache.rows("train")
        n_plain = int((r.ok & (r.view == 0)).sum())
        # one compiled step for the whole grid: the deepest candidate's layers are trainable, and each
        # candidate sets its learning rate and per-variable factors (0 for the layers it leaves frozen)
        opt = self.compile_search(model)
        if self.num_workers > 1:
            chosen = self._search_in_step(model, opt, start, tr, va, n_plain)
            skipped = None
        else:
            chosen, skipped = self._search_halving(model, opt, start, va, n_plain)
        model.set_weights(start)
        self._search_opt = opt
        self.timings["recipe_search_s"] = time.perf_counter() - t0
        log = {"chosen": chosen.record() if chosen else None, "grid": [c.record() for c in cands],
               "scored_on": "val", "probe_rows": n_plain, **(skipped or {})}
        self.recipe_log["phase2"] = log
        if self.is_chief:
            artifacts.write_json(saved, log)
        if chosen is None:
            self.echo(f"phase 2: skipped: no candidate beats the phase-1 model on val beyond its noise "
                      f"({self.timings['recipe_search_s']:.1f}s; --recipe fixed always runs phase 2)")
        else:
            self.echo(f"phase 2: auto recipe chose {chosen.name} ({self.timings['recipe_search_s']:.1f}s)")
        return chosen

    def _search_in_step(self, model, opt, start, tr, va, n_plain):
        """Multi-worker: every candidate, a fixed number of synchronised steps on each worker's
        own shards (the workers stay in step: no data-dependent early exit)."""
        cands = self.candidates
        self.echo(f"phase 2: auto recipe: {len(cands)} candidates, {recipe.PROBE_STEPS} steps each, scored on "
                  f"the validation split")
        for c in cands:
            model.set_weights(start)
            opt.switch(c.lr, recipe.search_factors(self.base, self.bb, c, self.deepest.layers, self.cfg.lr_decay))
            h = model.fit(tr[0], steps_per_epoch=recipe.PROBE_STEPS * max(1, self.cfg.accumulate),
                          validation_data=va[0], validation_steps=va[1], epochs=1, verbose=0, shuffle=False)
            c.val_accuracy = float(h.history["val_accuracy"][-1])
            c.val_loss = float(h.history["val_loss"][-1])
            self.echo(f"  {c.name:<28} val acc {c.val_accuracy:.4f}  val loss {c.val_loss:.4f}")
        return recipe.choose(cands)

    def _search_halving(self, model, opt, start, va, n_plain):
        """(chosen or None, what the log records about a skip); see :meth:`choose_candidate`."""
        cands, cfg = self.candidates, self.cfg
        probe = self.cache.dataset("train", "acts", cfg.batch_size, self.row_targets, shuffle=True,
                                   seed=cfg.seed, drop_remainder=self.replicas > 1, view=0)
        e1 = recipe.budget_epochs(1, n_plain, cfg.batch_size, recipe.RUNG_STEPS, cfg.accumulate)
        e2 = recipe.budget_epochs(1, n_plain, cfg.batch_size, recipe.PROBE_STEPS, cfg.accumulate)
        vr = self.cache.rows("val")
        y = vr.y[vr.ok]

        def score():
            logits = model.predict(va[0], verbose=0)
            z = logits - logits.max(-1, keepdims=True)
            logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
            return -logp[np.arange(len(y)), y], (logits.argmax(-1) == y)

        base_loss, base_ok = score()
        self.echo(f"phase 2: auto recipe: {len(cands)} candidates, {e1} epoch(s) each on the cached activations "
                  f"of the {n_plain:,} plain views, scored on the {len(y)} val images against the phase-1 model "
                  f"(val acc {base_ok.mean():.4f}, loss {base_loss.mean():.4f})")
        states, losses = {}, {}
        for c in cands:
            model.set_weights(start)
            opt.switch(c.lr, recipe.search_factors(self.base, self.bb, c, self.deepest.layers, cfg.lr_decay))
            model.fit(probe, epochs=e1, verbose=0, shuffle=False)
            loss, ok = score()
            c.val_accuracy, c.val_loss = float(ok.mean()), float(loss.mean())
            losses[c.name] = (loss, ok)
            states[c.name] = (model.get_weights(), [v.numpy() for v in opt.variables])
            self.echo(f"  {c.name:<28} val acc {c.val_accuracy:.4f}  val loss {c.val_loss:.4f}")
        verdict = recipe.pays(base_loss, base_ok, [(c, *losses[c.name]) for c in cands])
        if verdict["skip"]:
            return None, {"skipped": True, "rung_epochs": [e1], "phase1_val": {
                "accuracy": float(base_ok.mean()), "loss": float(base_loss.mean())}, "verdict": verdict}
        keep = sorted(cands, key=lambda c: (c.val_loss, -(c.val_accuracy or 0)))[:max(1, len(cands) // 2)]
        if e2 > e1:
            self.echo(f"phase 2: auto recipe: {len(keep)} continue to {e2} epoch(s)")
            for c in keep:
                weights, opt_vars = states[c.name]
                model.set_weights(weights)
                opt.switch(c.lr, recipe.search_factors(self.base, self.bb, c, self.deepest.layers, cfg.lr_decay))
                for v, val in zip(opt.variables, opt_vars):
                    v.assign(val)
                model.fit(probe, epochs=e2, initial_epoch=e1, verbose=0, shuffle=False)
                loss, ok = score()
                c.val_accuracy, c.val_loss = float(ok.mean()), float(loss.mean())
                self.echo(f"  {c.name:<28} val acc {c.val_accuracy:.4f}  val loss {c.val_loss:.4f}")
        for c in cands:
            c.rung = 2 if c in keep and e2 > e1 else 1
        return recipe.choose(keep), {"rung_epochs": [e1, e2], "verdict": verdict}

    # ---- evaluation and outputs -----------------------------------------
    def predict_split(self, split) -> np.ndarray:
        """Class probabilities of ``split``'s images, streamed in batches. A file that no longer
        decodes is named, skipped and removed from the split (its label with it)."""
        import tensorflow as tf

        from edgetl.data.tfdata import decode_batches

        size = self.cfg.size
        if getattr(self, "_predict_fn", None) is None:
            self._predict_fn = tf.function(lambda x: self.model(x, training=False), autograph=False,
                                           input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
        out, bad = [], []
        for b in decode_batches(split.paths, size, self.cfg.resize, self.extract_batch()):
            out.append(self._predict_fn(tf.convert_to_tensor(b.images.astype(np.float32))).numpy()[b.ok])
            bad += b.errors
        if bad:
            gone = {f for f, _ in bad}
            for f, why in bad:
                self.echo(f"warning: {f}: {why}; skipped")
            self.ds.skipped += bad
            keep = [i for i, p in enumerate(split.paths) if str(p) not in gone]
            split.paths, split.labels = [split.paths[i] for i in keep], np.asarray(split.labels)[keep]
        logits = np.concatenate(out) if out else np.zeros((0, len(self.ds.classes)), np.float32)
        e = np.exp(logits - logits.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    def near_duplicates(self) -> dict | None:
        """Held-out images (val, test) with a near-duplicate in train, on the frozen backbone's
        features: the view cache's plain view of the training images and of val, and the same
        features of the test images (one pass of the frozen extractor). See :mod:`edgetl.data.duplicates`."""
        from edgetl.data import duplicates
        from edgetl.data.tfdata import decode_batches
        from edgetl.data.viewcache import Rows

        cache = getattr(self, "cache", None)
        if cache is None:
            return None

        def cached(part: str, source: str, paths) -> tuple[list, np.ndarray]:
            shards = [sh for sh in cache.part(part) if sh.view == 0 and sh.source == source]
            if not shards:
                return [], np.zeros((0, self.n_features), np.float32)
            f = np.concatenate([np.load(cache.path(sh, "feats"), mmap_mode="r") for sh in shards])
            rows = Rows.from_meta(np.concatenate([np.load(cache.path(sh, "meta"), mmap_mode="r") for sh in shards]))
            return [paths[i] for i in rows.image[rows.ok]], np.asarray(f[rows.ok], np.float32)

        train_paths, train_feats = cached("train", "train", list(self.ds.train.paths))
        held = {"val": cached("val", "val", list(self.ds.val.paths))}
        if self.ds.test is not None and len(self.ds.test):
            paths, feats = [], []
            for b in decode_batches(self.ds.test.paths, self.cfg.size, self.cfg.resize, self.extract_batch()):
                if b.ok.any():
                    feats.append(self.extractor(b.images[b.ok].astype(np.float32), training=False).numpy())
                    paths += [p for p, ok in zip(self.ds.test.paths[b.start:b.start + len(b.ok)], b.ok) if ok]
            held["test"] = (paths, np.concatenate(feats) if feats else np.zeros((0, self.n_features), np.float32))
        rec = duplicates.check(train_paths, train_feats, held, root=self.cfg.data)
        headline = "test" if "test" in held else "val"
        for line in duplicates.warnings(rec, headline):
            self.echo(line)
        return rec

    def predict_val(self) -> np.ndarray:
        return self.predict_split(self.ds.val)

    def evaluate(self) -> dict:
        """Scores on the validation split: what model selection uses."""
        from edgetl.runtime.evaluate import classification_metrics

        return {**classification_metrics(self.ds.val.labels, self.predict_val(), self.ds.classes), "split": "val"}

    def evaluate_test(self) -> dict | None:
        """Scores of the selected model on the test split, once every choice is made."""
        from edgetl.runtime.evaluate import classification_metrics

        if self.ds.test is None or not len(self.ds.test):
            return None
        return {**classification_metrics(self.ds.test.labels, self.predict_split(self.ds.test), self.ds.classes),
                "split": "test", "source": self.ds.test_source}

    def claim(self) -> None:
        """Under the run directory's lock: refuse to overwrite a run, unfinished (without
        --resume) or finished (without --force)."""
        if self.resume or not self.chief:
            return
        if (self.run_dir / rundir.CHECKPOINTS).exists():
            raise EdgetlError(f"{self.run_dir}: holds an unfinished run; add --resume to continue it, "
                              f"or choose another --out")
        if rundir.is_finished(self.run_dir) and not self.force:
            raise EdgetlError(f"{self.run_dir}: holds a finished run; choose another --out, or add --force to "
                              "retrain it in place (its model, exports and reports are replaced)")

    def run(self) -> TrainResult:
        """Train under the run directory's lock (the chief's: in a cluster the other workers
        share the directory)."""
        lock = rundir.writing(self.run_dir, f"edgetl {self.kind}", echo=self.echo) if self.chief \
            else contextlib.nullcontext()
        with lock:
            self.claim()
            return self._run()

    def _run(self) -> TrainResult:
        from edgetl import signals

        t_start = time.perf_counter()
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
        h1 = self.phase1()
        if not self.is_chief:  # trains in step with the chief; the chief scores and writes the run
            self.phase2()
            self.echo(f"worker {self.worker_index} of {self.num_workers}: done; the chief writes the run")
            return TrainResult(self.run_dir, {"worker": self.worker_index, "num_workers": self.num_workers,
                                              "view_cache": self.cache_stats, "timings": self.timings})
        m1 = self.evaluate()
        self.echo(f"phase 1: val accuracy {m1['accuracy']:.4f}")
        w1 = self.model.get_weights()
        h2 = self.phase2()
        m2 = self.evaluate() if h2 is not None else None
        if m2 is not None:
            self.echo(f"phase 2: val accuracy {m2['accuracy']:.4f}")
        selected = "phase2" if m2 is not None and m2["accuracy"] >= m1["accuracy"] else "phase1"
        if selected == "phase1" and m2 is not None:
            self.echo("phase 2 did not improve val accuracy; keeping the phase-1 model")
            self.model.set_weights(w1)
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
        self.summary(metrics, history)
        return TrainResult(self.run_dir, metrics, self.model, history)

    def write_outputs(self, metrics: dict, history: dict) -> None:
        from edgetl.nets.model import count_params
        from edgetl.report import plots
        from edgetl.runtime.evaluate import confusion_of, move_confusions

        run = self.run_dir
        metrics["params"] = count_params(self.model)
        metrics["data"] = self.ds.summary()
        with artifacts.atomic_path(run / rundir.MODEL, suffix=".keras") as tmp:
            self.model.save(str(tmp))
        artifacts.write_json(run / rundir.HISTORY, history)
        cm = confusion_of(metrics["final"])
        side = move_confusions(metrics, run)  # above 30 classes the matrices go to confusion.npz
        artifacts.write_json(run / rundir.METRICS, metrics, note=True)
        plots.training_curves({"phase 1": history["phase1"], "phase 2": history["phase2"]}, run / rundir.CURVES)
        plots.confusion(cm, self.ds.classes, run / rundir.CONFUSION, f"val confusion ({metrics['selected_phase']})",
                        metrics["final"].get("top_confusions"))
        files = [*rundir.TRAIN_FILES, *([side.name] if side else [])]
        shutil.rmtree(self.ckpt, ignore_errors=True)
        shutil.rmtree(self.cache_dir, ignore_errors=True)  # a --cache-dir outside the checkpoints
        if self.cfg.cache_dir and self.num_workers > 1:
            shutil.rmtree(self.cache_dir.parent / f"{self.run_dir.name}.{rundir.WORKERS}", ignore_errors=True)
        rundir.update_manifest(run, "train", {
            "kind": self.kind,
            "seed": self.cfg.seed,
            "config": self.cfg.to_dict(),
            "data_fingerprint": self.ds.fingerprint(),
            "files": artifacts.file_hashes(run, files),
            "weights": self.cfg.weights,
        })

    def summary(self, metrics: dict, history: dict) -> None:
        self.echo("")
        self.echo(f"{'phase':<8}{'epochs':>8}{'best':>6}{'val_acc':>9}{'val_loss':>10}{'time':>9}")
        for name, key, tkey in (("1 head", "phase1", "phase1_train_s"), ("2 tune", "phase2", "phase2_s")):
            rows = history.get(key) or []
            m = metrics.get(key)
            if not rows or m is None:
                skipped = key == "phase2" and ((metrics.get("recipe") or {}).get("phase2") or {}).get("skipped")
                self.echo(f"{name:<8}{'-':>8}" + ("  skipped: no candidate beat phase 1 on val" if skipped else ""))
                continue
            best = min(rows, key=lambda r: r.get("val_loss", np.inf))
            t = self.timings.get(tkey)
            t_s = "-" if t is None else f"{t + (self.timings.get('features_s', 0.0) if key == 'phase1' else 0):.1f}s"
            self.echo(f"{name:<8}{len(rows):>8}{best['epoch']:>6}{m['accuracy']:>9.4f}"
                      f"{best.get('val_loss', float('nan')):>10.4f}{t_s:>9}")
        from edgetl.stats import fmt_acc

        f = metrics["final"]
        self.echo(f"selected: {metrics['selected_phase']}  params {metrics['params']['total']:,}")
        self.echo(f"val accuracy  {fmt_acc(f['accuracy'], f.get('ci95'), f['n'])}  (used for model selection)")
        te = metrics.get("test")
        if te:
            self.echo(f"test accuracy {fmt_acc(te['accuracy'], te.get('ci95'), te['n'])}  (held out; the headline)")
        for name, d in ((metrics.get("near_duplicates") or {}).get("splits") or {}).items():
            if d["count"]:
                self.echo(f"note: {d['count']} of {d['n']} {name} images have a near-duplicate in train "
                          f"(metrics.json: near_duplicates); {name} accuracy may be optimistic")
        self.echo(f"run directory: {self.run_dir}")


def train(config: TrainConfig, resume: bool = False, callbacks: tuple = (), echo: Echo = print,
          root: PathLike = "models", force: bool = False) -> TrainResult:
    """Train a classifier; see :class:`Trainer`. Returns the run directory and metrics.
    ``force`` retrains a finished run in place (its exports and reports are removed)."""
    return Trainer(config, resume=resume, callbacks=callbacks, echo=echo, root=root, force=force).run()
