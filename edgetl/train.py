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

import json
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from edgetl import artifacts, backbones, rundir
from edgetl.config import TrainConfig, parse_augment
from edgetl.data import Dataset, class_weights, scan
from edgetl.errors import EdgetlError, TrainingInterrupted
from edgetl.rundir import load_run_config, read_labels  # noqa: F401  (part of this module's API)
from edgetl.types import Echo, PathLike


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


class Trainer:
    """Runs the two phases for one config. Subclasses (distillation) change the
    loss and the targets; the schedule, checkpoints and outputs stay the same."""

    kind = "train"

    def __init__(self, config: TrainConfig, resume: bool = False, callbacks=(), echo=print, root="models"):
        self.echo = echo
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
            config = saved
        self.cfg = config.validate().resolved()
        self.bb = backbones.get(self.cfg.backbone)
        self.run_dir = Path(self.cfg.out) if self.cfg.out else default_run_dir(self.cfg, root)
        self.cfg.out = str(self.run_dir)
        if not resume and (self.run_dir / rundir.CHECKPOINTS).exists():
            raise EdgetlError(f"{self.run_dir}: holds an unfinished run; add --resume to continue it, "
                              f"or choose another --out")
        self.ckpt = self.run_dir / rundir.CHECKPOINTS
        self.timings: dict[str, float] = {}
        self.recipe_log: dict = {"recipe": self.cfg.recipe, "lr_decay": self.cfg.lr_decay,
                                 "accumulate": self.cfg.accumulate, "min_steps": self.cfg.min_steps}

    # ---- set-up ---------------------------------------------------------
    def prepare(self) -> None:
        cfg = self.cfg
        self.ds: Dataset = scan(cfg.data, cfg.val_split, cfg.seed, cfg.strict, test_split=cfg.test_split)
        ds = self.ds
        k = len(ds.classes)
        self.echo(f"data: {ds.root} ({ds.layout}), {k} classes, "
                  f"{len(ds.train)} train / {len(ds.val)} val"
                  + (f" / {len(ds.test)} test" if ds.test is not None else ""))
        n_te = ds.test.counts(k) if ds.test is not None else [None] * k
        for c, n_tr, n_va, n_t in zip(ds.classes, ds.train.counts(k), ds.val.counts(k), n_te):
            self.echo(f"  {c:<20} {n_tr:>6} train {n_va:>6} val" + (f" {n_t:>6} test" if n_t is not None else ""))
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
        self.strategy = get_strategy(cfg.strategy)
        self.replicas = int(self.strategy.num_replicas_in_sync)
        if self.replicas > 1:
            self.echo(f"strategy: {type(self.strategy).__name__} over {self.replicas} replicas")

    def start(self) -> None:
        """Write the run's config, labels and split: only once every input was checked and the
        model built (weights loaded), so that a refused run leaves nothing behind."""
        cfg, ds = self.cfg, self.ds
        self.ckpt.mkdir(parents=True, exist_ok=True)
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
        from edgetl import model as M
        from edgetl.weights import build_base

        cfg = self.cfg
        with self.strategy.scope():
            self.base = build_base(self.bb, cfg.size, cfg.alpha, cfg.weights)
            self.base.trainable = False
            n_feat = int(self.base.output_shape[-1])
            self.head_layers = M.build_head(n_feat, len(self.ds.classes), cfg.dropout, cfg.dense, cfg.l2)
            self.model, self.extractor = M.assemble(self.base, self.bb, cfg.size, self.head_layers)
            self.head = M.head_model(n_feat, self.head_layers)
        self.n_features = n_feat

    def check_inputs(self) -> None:
        """Checks of further inputs once the data is scanned (distillation: the teacher)."""

    # ---- losses and targets (overridden by distillation) ----------------
    def loss(self):
        import keras

        return keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=self.cfg.label_smoothing)

    def metrics(self):
        import keras

        return [keras.metrics.CategoricalAccuracy(name="accuracy")]

    def view_labels(self) -> np.ndarray:
        """Soft labels of the cached views: one-hot, or for a mixup view the blend of its
        two images' labels (lam * y + (1 - lam) * y2); zero for unlabelled images."""
        eye = np.eye(len(self.ds.classes), dtype=np.float32)
        y = self.views[1]
        y2, lam = self.mix
        soft = lam[:, None] * eye[y] + (1.0 - lam[:, None]) * eye[y2]
        return soft * self.labeled[:, None]

    def head_targets(self) -> np.ndarray:
        """Training targets of the cached views (distillation appends the teacher's logits)."""
        return self.view_labels()

    def val_targets(self, labels: np.ndarray) -> np.ndarray:
        return np.eye(len(self.ds.classes), dtype=np.float32)[labels]

    def finetune_data(self):
        """(train tf.data, val tf.data) for phase 2."""
        import tensorflow as tf

        from edgetl.tfdata import augmenter, batches, image_dataset

        cfg = self.cfg
        k = len(self.ds.classes)
        aug = augmenter(parse_augment(cfg.augment), cfg.seed + 1000)
        r = self.replicas  # multi-replica strategies need batches that split evenly
        tr = image_dataset(self.ds.train.paths, self.ds.train.labels, cfg.img_size, cfg.resize)
        tr = tr.map(lambda x, y: (x, tf.one_hot(y, k)))
        va = image_dataset(self.ds.val.paths, self.ds.val.labels, cfg.img_size, cfg.resize)
        va = va.take(len(self.ds.val) - len(self.ds.val) % r).map(lambda x, y: (x, tf.one_hot(y, k)))
        return (batches(tr, cfg.batch_size, shuffle=True, seed=cfg.seed, augment=aug, n=len(self.ds.train),
                        drop_remainder=r > 1),
                batches(va, cfg.batch_size))

    # ---- the frozen prefix: run once per image and view ----------------
    def plan_cut(self):
        """Split the base at the start of the first unit that phase 2 trains.

        Everything before the cut stays frozen in both phases, so its output is
        computed once per image and cached view; phase 1 trains the head on the
        pooled features of the frozen suffix, phase 2 trains the suffix and head on
        the cached activations. Returns the layers to unfreeze."""
        import keras

        from edgetl import recipe

        cfg = self.cfg
        self.candidates = recipe.candidates(self.base, self.bb, cfg)
        deepest = max(self.candidates, key=lambda c: len(c.layers))
        to_train = deepest.layers  # the cut serves every candidate: it is before the deepest one
        self.cut_tensor = None
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
                self.cut_tensor = cut
            except Exception:  # graph can't be cut there: phase 2 runs on images
                self.cut_tensor = None
        return to_train

    def cache_bytes(self) -> int:
        shape = self.cut_tensor.shape[1:] if self.cut_tensor is not None else (self.n_features,)
        views = self.cfg.views if self._augment_names() else 1
        return int(np.prod(shape)) * 4 * (views * (len(self.ds.train) + self.n_extra()) + len(self.ds.val))

    def n_extra(self) -> int:
        """Unlabelled images added to every view (distillation's transfer set; none here)."""
        return 0

    def extra_images(self, size: int) -> np.ndarray | None:
        """Those images, uint8 (N, size, size, 3): they get the same views as the training
        images and no hard label (their rows' label vectors are zero)."""
        return None

    def _augment_names(self):
        return parse_augment(self.cfg.augment)

    def view_size(self) -> int:
        """Side of the cached views before they are resized to the input (distillation makes
        them at the teacher's size when that is larger, so the teacher sees full detail)."""
        return self.cfg.size

    def view_hook(self, view: int, images) -> None:
        """Called with each batch of each view's images (0-255 float); distillation records
        the teacher's logits here, once per image and view."""

    def cached_views(self):
        """Frozen-prefix outputs of every training view and of the val images, computed once
        and kept in the checkpoint folder (a resumed run reuses them). Without a cut, the
        prefix is the whole frozen extractor and the cache holds pooled features."""
        import tensorflow as tf

        from edgetl.tfdata import augmenter, image_dataset, load_array

        cfg = self.cfg
        path = self.ckpt / rundir.VIEWS
        if path.exists():
            z = np.load(path)
            self.echo(f"phase 1: reusing cached views {z['x'].shape} from {path}")
            self.mix, self.labeled = (z["y2"], z["lam"]), z["labeled"]
            self.load_view_extras(z)
            return z["x"], z["y"], z["view"], z["vx"], z["vy"]
        t0 = time.perf_counter()
        names = self._augment_names()
        views = cfg.views if names else 1
        aug = augmenter(names, cfg.seed)
        prefix = self.prefix if self.cut_tensor is not None else self.extractor
        if self.cut_tensor is not None:
            from edgetl.layers import Preprocess

            pre = Preprocess(self.bb.preprocess)
            run_prefix = lambda x: prefix(pre(x), training=False)  # noqa: E731
        else:
            run_prefix = lambda x: prefix(x, training=False)  # noqa: E731
        size = self.view_size()  # views are made at this size, then resized to the model's input
        spec = [tf.TensorSpec([None, size, size, 3], tf.float32)]  # traced once
        if size != cfg.img_size:
            def to_input(x):
                return tf.image.resize(x, (cfg.img_size, cfg.img_size), antialias=True)
        else:
            def to_input(x):
                return x
        plain = tf.function(lambda x: run_prefix(to_input(x)), input_signature=spec)
        augmented = tf.function(lambda x: tf.clip_by_value(aug(x, training=True), 0.0, 255.0), input_signature=spec)
        bs = max(cfg.batch_size, 64)  # inference only: larger batches use the CPU better
        images = load_array(self.ds.train.paths, size, cfg.resize)
        labels = np.asarray(self.ds.train.labels)
        n = len(images)
        extra = self.extra_images(size)
        m = 0 if extra is None else len(extra)
        rng = np.random.default_rng(cfg.seed + 7)
        def encode(v, batch, partner_batch=None, w=None):
            """Frozen-prefix output of one batch of view v (augmented for v > 0, blended with
            its mixup partners when given); the hook sees the exact images encoded."""
            imgs = tf.convert_to_tensor(batch.astype(np.float32))
            if v > 0:
                imgs = augmented(imgs)
            if partner_batch is not None:
                imgs = w * imgs + (1.0 - w) * augmented(tf.convert_to_tensor(partner_batch.astype(np.float32)))
            self.view_hook(v, imgs)
            return plain(imgs).numpy()

        xs, ys, y2s, lams, vs, labeled = [], [], [], [], [], []
        for v in range(views):
            mixed = v > 0 and cfg.mixup > 0
            # mixup: each augmented view is blended with an augmented view of a random partner
            partner = rng.permutation(n) if mixed else np.arange(n)
            lam = (np.maximum(rng.beta(cfg.mixup, cfg.mixup, n), 0.5) if mixed else np.ones(n)).astype(np.float32)
            out = [encode(v, images[i:i + bs], images[partner[i:i + bs]], lam[i:i + bs, None, None, None])
                   if mixed else encode(v, images[i:i + bs]) for i in range(0, n, bs)]
            # unlabelled images: same views, no mixup (no labels to blend)
            out += [encode(v, extra[i:i + bs]) for i in range(0, m, bs)]
            xs.append(np.concatenate(out))
            ys.append(np.concatenate([labels, np.zeros(m, labels.dtype)]))
            y2s.append(np.concatenate([labels[partner], np.zeros(m, labels.dtype)]))
            lams.append(np.concatenate([lam, np.ones(m, np.float32)]))
            labeled.append(np.arange(n + m) < n)
            vs.append(np.full(n + m, v))
            kind = "plain" if v == 0 else "augmented" + (", mixup" if mixed else "")
            self.echo(f"phase 1: frozen base over view {v + 1}/{views} ({kind}) of {n} images"
                      + (f" + {m} unlabelled" if m else ""))
        val_ds = image_dataset(self.ds.val.paths, self.ds.val.labels, size, cfg.resize)
        vx = np.concatenate([plain(tf.cast(i, tf.float32)).numpy() for i, _ in val_ds.batch(bs)])
        x, y, view = np.concatenate(xs), np.concatenate(ys), np.concatenate(vs)
        self.mix = (np.concatenate(y2s), np.concatenate(lams))
        self.labeled = np.concatenate(labeled)
        with artifacts.atomic_path(path, suffix=".npz") as tmp:
            np.savez(tmp, x=x, y=y, y2=self.mix[0], lam=self.mix[1], labeled=self.labeled, view=view, vx=vx,
                     vy=self.ds.val.labels, **self.view_extras())
        self.timings["features_s"] = time.perf_counter() - t0
        self.echo(f"phase 1: {len(x)} cached views {tuple(x.shape[1:])} in {self.timings['features_s']:.1f}s")
        return x, y, view, vx, self.ds.val.labels

    def view_extras(self) -> dict:
        return {}

    def load_view_extras(self, z) -> None:
        pass

    def pooled(self, acts: np.ndarray) -> np.ndarray:
        """Pooled features of cached activations through the (still frozen) suffix."""
        if self.cut_tensor is None:
            return acts
        import tensorflow as tf

        f = tf.function(lambda a: tf.reduce_mean(self.suffix(a, training=False), axis=(1, 2)),
                        input_signature=[tf.TensorSpec([None, *acts.shape[1:]], tf.float32)])
        bs = max(self.cfg.batch_size, 64)
        return np.concatenate([f(acts[i:i + bs]).numpy() for i in range(0, len(acts), bs)])

    def callbacks(self, phase: str, epochs: int):
        import keras

        from edgetl.callbacks import AtomicBackup, HistoryFile, NanGuard, Progress

        key = "lr_head" if phase == "phase 1" else "lr_finetune"
        tag = phase.replace(" ", "")
        return [
            NanGuard(phase, f"lower --{key.replace('_', '-')} (now {getattr(self.cfg, key)}) or check the data"),
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=self.cfg.patience, restore_best_weights=True),
            keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.3,
                                              patience=max(1, self.cfg.patience // 2), min_lr=1e-7),
            AtomicBackup(str(self.ckpt / tag), rundir.resume_hint(self.run_dir)),
            HistoryFile(self.ckpt / f"history_{tag}.json"),
            Progress(phase, epochs, self.echo),
            *self.extra_callbacks,
        ]

    def row_weights(self) -> np.ndarray | None:
        """Loss weights of the cached views under --class-weights auto (else None): each row's
        class weight, blended like its label for mixup views, 1 for unlabelled rows. Passed
        as sample weights, since Keras' class_weight reads a class from argmax(y), which is
        wrong for blended labels and for distillation's [labels | teacher logits] targets."""
        if self.class_weight is None:
            return None
        cw = np.array([self.class_weight[i] for i in range(len(self.ds.classes))], np.float32)
        return np.where(self.labeled, self.view_labels() @ cw, 1.0).astype(np.float32)

    def arrays_dataset(self, x, t, shuffle: bool, w: np.ndarray | None = None):
        import tensorflow as tf

        r = self.replicas  # multi-replica strategies need batches that split evenly
        if shuffle:
            parts = (x, t) if w is None else (x, t, w)
            ds = tf.data.Dataset.from_tensor_slices(parts).shuffle(len(x), seed=self.cfg.seed)
            return ds.batch(self.cfg.batch_size, drop_remainder=r > 1).prefetch(2)
        n = len(x) - len(x) % r
        return tf.data.Dataset.from_tensor_slices((x[:n], t[:n])).batch(self.cfg.batch_size).prefetch(2)

    # ---- phase 1 ---------------------------------------------------------
    def phase_epochs(self, phase: str, epochs: int, rows: int, min_steps: int) -> int:
        """The phase's epochs: as given, or (auto recipe) enough for ``min_steps`` updates."""
        from edgetl import recipe

        if self.cfg.recipe != "auto" or not epochs:
            return epochs
        n = recipe.budget_epochs(epochs, rows, self.cfg.batch_size, min_steps, self.cfg.accumulate)
        if n > epochs:
            self.echo(f"{phase.replace('phase', 'phase ')}: {n} epochs instead of {epochs}, so that it makes at least "
                      f"{min_steps} optimizer steps on {rows} rows (auto recipe; early stopping still applies)")
        self.recipe_log[f"{phase}_epochs"] = n
        return n

    def phase1(self) -> list[dict]:
        from edgetl import recipe

        cfg = self.cfg
        self.to_train = self.plan_cut()
        if self.cut_tensor is not None and self.cache_bytes() > self.cache_limit:
            self.echo(f"phase 2: {self.cache_bytes() / 2**20:.0f} MB of cached activations would exceed "
                      f"{self.cache_limit / 2**20:.0f} MB; phase 2 will run the whole base on images")
            self.cut_tensor = None
        self.views = self.cached_views()
        head_w = self.ckpt / "phase1_head.weights.h5"
        hist_path = self.ckpt / "history_phase1.json"
        if head_w.exists():
            self.head.load_weights(str(head_w))
            self.echo("phase 1: done in an earlier run; loaded its best head")
            return json.loads(hist_path.read_text()) if hist_path.exists() else []
        x, y, view, vx, vy = self.views
        t0 = time.perf_counter()
        fx, fvx = self.pooled(x), self.pooled(vx)
        targets = self.head_targets()
        vtargets = self.val_targets(vy)
        with self.strategy.scope():
            # the head is tiny: run several batches per call to cut per-step overhead
            self.head.compile(optimizer=recipe.optimizer(cfg.lr_head, accumulate=cfg.accumulate), loss=self.loss(),
                              metrics=self.metrics(), steps_per_execution=16 if self.replicas == 1 else 1)
        epochs = self.phase_epochs("phase1", cfg.epochs_head, len(fx), cfg.min_steps)
        self.head.fit(self.arrays_dataset(fx, targets, True, self.row_weights()),
                      validation_data=self.arrays_dataset(fvx, vtargets, False),
                      epochs=epochs, verbose=0, shuffle=False,
                      callbacks=self.callbacks("phase 1", epochs))
        with artifacts.atomic_path(head_w, suffix=".weights.h5") as tmp:
            self.head.save_weights(str(tmp))
        self.timings["phase1_train_s"] = time.perf_counter() - t0
        return json.loads(hist_path.read_text()) if hist_path.exists() else []

    # ---- phase 2 ---------------------------------------------------------
    cache_limit = 4 << 30  # bytes of cached activations before phase 2 falls back to images

    def phase2(self) -> list[dict]:
        import keras

        from edgetl import model as M

        cfg = self.cfg
        if cfg.epochs_finetune == 0:
            return []
        t0 = time.perf_counter()
        if self.cut_tensor is not None:
            x, y, view, vx, vy = self.views
            self.echo(f"phase 2: training on the {len(x)} cached views at the cut {tuple(x.shape[1:])}; "
                      f"the frozen layers before it are not run again")
            with self.strategy.scope():
                inp = keras.Input(tuple(x.shape[1:]), name="cached")
                z = keras.layers.GlobalAveragePooling2D(name="pool")(self.suffix(inp, training=False))
                for layer in self.head_layers:
                    z = layer(z)
                model = keras.Model(inp, z, name="edgetl_classifier")
            tr = self.arrays_dataset(x, self.head_targets(), True, self.row_weights())
            va = self.arrays_dataset(vx, self.val_targets(vy), False)
            class_weight = None  # in the rows' sample weights
            rows = len(x)
        else:
            model = self.model
            tr, va = self.finetune_data()
            class_weight = self.class_weight
            rows = len(self.ds.train)
        chosen = self.choose_candidate(model, tr, va, class_weight)
        n = M.set_trainable(self.base, chosen.layers)
        what = (chosen.name if cfg.recipe == "auto" else
                f"last {cfg.unfreeze_blocks} block(s)" if cfg.unfreeze_blocks is not None
                else f"last {cfg.unfreeze} layer(s)" + (" widened to whole blocks" if self.bb.unit == "block" else ""))
        decay = f", lr x {cfg.lr_decay:g} per unit deeper" if cfg.lr_decay != 1.0 else ""
        self.echo(f"phase 2: fine-tuning the {what}: {len(chosen.layers)} layers, {n} with trainable weights "
                  f"(BatchNorm frozen, inference mode), lr {chosen.lr:g}{decay}")
        epochs = self.phase_epochs("phase2", cfg.epochs_finetune, rows, cfg.min_steps // 2)
        with self.strategy.scope():
            model.compile(optimizer=self.finetune_optimizer(chosen), loss=self.loss(), metrics=self.metrics())
        model.fit(tr, validation_data=va, epochs=epochs, verbose=0, shuffle=False,  # tf.data shuffles
                  class_weight=class_weight, callbacks=self.callbacks("phase 2", epochs))
        self.timings["phase2_s"] = time.perf_counter() - t0
        p = self.ckpt / "history_phase2.json"
        return json.loads(p.read_text()) if p.exists() else []

    def finetune_optimizer(self, cand):
        from edgetl import recipe

        mult = recipe.lr_multipliers(self.base, self.bb, cand.layers, self.cfg.lr_decay)
        return recipe.optimizer(cand.lr, mult, self.cfg.accumulate)

    def choose_candidate(self, model, tr, va, class_weight):
        """The phase-2 setting: the only one (fixed recipe), or the grid's best on validation,
        each candidate trained for a few epochs from the same starting weights. The choice is
        kept in the checkpoints, so a resumed run does not search again."""
        from edgetl import model as M
        from edgetl import recipe

        cands = self.candidates
        saved = self.ckpt / "recipe_choice.json"
        if len(cands) == 1:
            self.recipe_log["phase2"] = {"chosen": cands[0].record(), "grid": []}
            return cands[0]
        if saved.exists():
            name = json.loads(saved.read_text())["chosen"]["name"]
            chosen = next(c for c in cands if c.name == name)
            self.recipe_log["phase2"] = json.loads(saved.read_text())
            self.echo(f"phase 2: recipe chosen in an earlier run: {chosen.name}")
            return chosen
        if self.cut_tensor is None:  # on images a search costs whole trainings: use the middle setting
            chosen = cands[len(cands) // 2]
            self.recipe_log["phase2"] = {"chosen": chosen.record(), "grid": [], "note": "no search: no cached cut"}
            return chosen
        t0 = time.perf_counter()
        start = model.get_weights()
        # the trials train on the plain view of each image only (1/views of the rows): a cheap, unbiased probe
        x, _, view, _, _ = self.views
        plain = np.flatnonzero(view == 0)
        targets, weights = self.head_targets(), self.row_weights()
        tr = self.arrays_dataset(x[plain], targets[plain], True, None if weights is None else weights[plain])
        probe_epochs = recipe.budget_epochs(1, len(plain), self.cfg.batch_size, recipe.PROBE_STEPS, self.cfg.accumulate)
        self.echo(f"phase 2: auto recipe: {len(cands)} candidates, {probe_epochs} epochs each on the cached "
                  f"activations of the {len(plain)} plain views, scored on the validation split")
        for c in cands:
            model.set_weights(start)
            M.set_trainable(self.base, c.layers)
            with self.strategy.scope():
                model.compile(optimizer=self.finetune_optimizer(c), loss=self.loss(), metrics=self.metrics())
            h = model.fit(tr, validation_data=va, epochs=probe_epochs, verbose=0, shuffle=False)
            c.val_accuracy = float(h.history["val_accuracy"][-1])
            c.val_loss = float(h.history["val_loss"][-1])
            self.echo(f"  {c.name:<28} val acc {c.val_accuracy:.4f}  val loss {c.val_loss:.4f}")
        model.set_weights(start)
        chosen = recipe.choose(cands)
        self.timings["recipe_search_s"] = time.perf_counter() - t0
        log = {"chosen": chosen.record(), "grid": [c.record() for c in cands], "scored_on": "val",
               "probe_epochs": probe_epochs, "probe_rows": int(len(plain))}
        self.recipe_log["phase2"] = log
        artifacts.write_json(saved, log)
        self.echo(f"phase 2: auto recipe chose {chosen.name} ({self.timings['recipe_search_s']:.1f}s)")
        return chosen

    # ---- evaluation and outputs -----------------------------------------
    def predict_split(self, split) -> np.ndarray:
        import keras

        from edgetl.tfdata import image_dataset

        ds = image_dataset(split.paths, split.labels, self.cfg.size, self.cfg.resize).batch(self.cfg.batch_size)
        logits = np.concatenate([np.asarray(self.model(keras.ops.cast(x, "float32"), training=False)) for x, _ in ds])
        e = np.exp(logits - logits.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    def predict_val(self) -> np.ndarray:
        return self.predict_split(self.ds.val)

    def evaluate(self) -> dict:
        """Scores on the validation split: what model selection uses."""
        from edgetl.evaluate import classification_metrics

        return {**classification_metrics(self.ds.val.labels, self.predict_val(), self.ds.classes), "split": "val"}

    def evaluate_test(self) -> dict | None:
        """Scores of the selected model on the test split, once every choice is made."""
        from edgetl.evaluate import classification_metrics

        if self.ds.test is None or not len(self.ds.test):
            return None
        return {**classification_metrics(self.ds.test.labels, self.predict_split(self.ds.test), self.ds.classes),
                "split": "test", "source": self.ds.test_source}

    def run(self) -> TrainResult:
        t_start = time.perf_counter()
        self.prepare()
        self.build()
        self.start()
        try:
            h1 = self.phase1()
            m1 = self.evaluate()
            self.echo(f"phase 1: val accuracy {m1['accuracy']:.4f}")
            w1 = self.model.get_weights()
            h2 = self.phase2()
            m2 = self.evaluate() if self.cfg.epochs_finetune else None
            if m2 is not None:
                self.echo(f"phase 2: val accuracy {m2['accuracy']:.4f}")
        except KeyboardInterrupt:
            raise TrainingInterrupted(
                f"interrupted; every finished epoch is checkpointed in {self.ckpt}. Resume with: "
                f"{rundir.resume_hint(self.run_dir)}") from None
        selected = "phase2" if m2 is not None and m2["accuracy"] >= m1["accuracy"] else "phase1"
        if selected == "phase1" and m2 is not None:
            self.echo("phase 2 did not improve val accuracy; keeping the phase-1 model")
            self.model.set_weights(w1)
        final = m2 if selected == "phase2" and m2 is not None else m1
        test = self.evaluate_test()  # after every choice: test never steers one
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
        }
        history = {"phase1": h1, "phase2": h2}
        self.write_outputs(metrics, history)
        self.summary(metrics, history)
        return TrainResult(self.run_dir, metrics, self.model, history)

    def write_outputs(self, metrics: dict, history: dict) -> None:
        from edgetl import plots
        from edgetl.evaluate import confusion_of, move_confusions
        from edgetl.model import count_params

        run = self.run_dir
        metrics["params"] = count_params(self.model)
        metrics["data"] = self.ds.summary()
        with artifacts.atomic_path(run / rundir.MODEL, suffix=".keras") as tmp:
            self.model.save(str(tmp))
        artifacts.write_json(run / rundir.HISTORY, history)
        cm = confusion_of(metrics["final"])
        side = move_confusions(metrics, run)  # above 30 classes the matrices go to confusion.npz
        artifacts.write_json(run / rundir.METRICS, metrics)
        plots.training_curves({"phase 1": history["phase1"], "phase 2": history["phase2"]}, run / rundir.CURVES)
        plots.confusion(cm, self.ds.classes, run / rundir.CONFUSION, f"val confusion ({metrics['selected_phase']})",
                        metrics["final"].get("top_confusions"))
        files = [*rundir.TRAIN_FILES, *([side.name] if side else [])]
        shutil.rmtree(self.ckpt, ignore_errors=True)
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
                self.echo(f"{name:<8}{'-':>8}")
                continue
            best = min(rows, key=lambda r: r.get("val_loss", np.inf))
            t = self.timings.get(tkey, float("nan")) + (self.timings.get("features_s", 0.0) if key == "phase1" else 0)
            self.echo(f"{name:<8}{len(rows):>8}{best['epoch']:>6}{m['accuracy']:>9.4f}"
                      f"{best.get('val_loss', float('nan')):>10.4f}{t:>8.1f}s")
        from edgetl.stats import fmt_acc

        f = metrics["final"]
        self.echo(f"selected: {metrics['selected_phase']}  params {metrics['params']['total']:,}")
        self.echo(f"val accuracy  {fmt_acc(f['accuracy'], f.get('ci95'), f['n'])}  (used for model selection)")
        te = metrics.get("test")
        if te:
            self.echo(f"test accuracy {fmt_acc(te['accuracy'], te.get('ci95'), te['n'])}  (held out; the headline)")
        self.echo(f"run directory: {self.run_dir}")


def train(config: TrainConfig, resume: bool = False, callbacks: tuple = (), echo: Echo = print,
          root: PathLike = "models") -> TrainResult:
    """Train a classifier; see :class:`Trainer`. Returns the run directory and metrics."""
    return Trainer(config, resume=resume, callbacks=callbacks, echo=echo, root=root).run()
