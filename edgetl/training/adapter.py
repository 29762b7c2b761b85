"""Adaptation's trainer: the source run's model and the training schedule's view cache over the
source training images and the unlabelled target images (:class:`AdaptMethod`), loaded into
memory, and adaptation's own training loop on it (:class:`Adapter`)."""
from __future__ import annotations

import dataclasses
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgetl import backbones, rundir
from edgetl.config import AdaptOptions
from edgetl.errors import EdgetlError
from edgetl.training.adaptation import classifier_parts, gradient_reversal, select_pseudo
from edgetl.training.cache import CacheBuilder, CutPlan, plan_cut, plan_views
from edgetl.training.methods import TrainMethod
from edgetl.training.setup import Built, Prepared, absolute_paths, default_run_dir, get_strategy, set_seed


# ------------------------------------------------------------------ trainer ----
def dataset_from_split(run) -> Any:
    """The source run's own split, as a Dataset (same files, same labels; nothing rescanned)."""
    from edgetl.data.dataset import Dataset, Split

    def split(name):
        files, labels = run.split_files(name)
        return Split(files, np.asarray(labels, np.int64)) if files else None

    train, val, test = split("train"), split("val"), split("test")
    if train is None or val is None:
        raise EdgetlError(f"{run.dir / rundir.SPLIT}: lists no train or val images; adapt needs the source run's split")
    missing = [f for f in train.paths if not Path(f).is_file()]
    if missing:
        raise EdgetlError(f"{missing[0]}: a source training image of {run.dir} is missing ({len(missing)} in all); "
                          f"pseudo and dann keep the source labels in the loss: restore the data folder, "
                          f"or use --method adabn")
    root = Path(run.split.get("root") or Path(train.paths[0]).parent.parent)
    return Dataset(root, list(run.labels), train, val, test, [], "train/val")


class AdaptMethod(TrainMethod):
    """Domain adaptation : the unlabelled target images get every
    view, like a transfer set; adaptation's own loop trains on the cache."""
    kind = "adapt"

    def __init__(self, target: list[str]):
        self.target = list(target)

    def extra_paths(self) -> list[str]:
        return self.target



@dataclass
class AdaptViews:
    """The view cache's training rows, in memory: source views (labelled) and target views."""
    x: np.ndarray
    y: np.ndarray
    view: np.ndarray
    labeled: np.ndarray
    is_target: np.ndarray
    cut: CutPlan


class Adapter:
    """Caches the frozen prefix's outputs for every view of the source training images and
    the target images once (the training schedule's view cache, with :class:`AdaptMethod`), then
    trains each method from the source model on them with its own loop: adaptation's steps mix
    source and target rows with per-row losses (pseudo-labels, the domain loss) that the
    two-phase runner's Keras ``fit`` does not express."""

    cache_limit = 2 << 30

    def __init__(self, run, opts: AdaptOptions, target: list[str], echo=print):
        self.source = run
        self.opts = opts
        self.target = list(target)
        self.echo = echo
        cfg = dataclasses.replace(run.config, out=None, seed=opts.seed, views=opts.views, mixup=0.0,
                                  epochs_finetune=1 if opts.unfreeze else 0, unfreeze=opts.unfreeze,
                                  unfreeze_blocks=None, batch_size=opts.batch_size, lr_finetune=opts.lr,
                                  class_weights="none", recipe="fixed", cache_dir=None, strategy="auto")
        self.cfg = absolute_paths(cfg.validate().resolved())
        self.bb = backbones.get(self.cfg.backbone)
        self.run_dir = default_run_dir(self.cfg)  # a name only: the adapted run is written by _write_run
        self.cfg.out = str(self.run_dir)
        self.method = AdaptMethod(self.target)
        self.tmp = Path(tempfile.mkdtemp(prefix="edgetl-adapt-"))  # the view cache is working data
        self.prepared: Prepared | None = None
        self.built: Built | None = None
        self.initial: list = []
        self.views: AdaptViews | None = None
        self._nets: dict[bool, Any] = {}
        self._probs_fns: dict[int, Any] = {}

    @property
    def ds(self):
        assert self.prepared is not None, "Adapter.prepare() has not run"
        return self.prepared.ds

    @property
    def b(self) -> Built:
        assert self.built is not None, "Adapter.build() has not run"
        return self.built

    @property
    def model(self):
        return self.b.model

    @property
    def v(self) -> AdaptViews:
        assert self.views is not None, "Adapter.load_views() has not run"
        return self.views

    def cleanup(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def prepare(self) -> None:
        ds = dataset_from_split(self.source)
        set_seed(self.cfg.seed)
        self.prepared = Prepared(ds, None, get_strategy("auto"), 1)

    def build(self) -> None:
        import keras

        from edgetl.nets import model as M

        model = self.source.load_model()
        pre, base, head_layers = classifier_parts(model)
        base.trainable = False
        n_features = int(base.output_shape[-1])
        extractor = keras.Model(model.inputs, model.get_layer("pool").output, name="feature_extractor")
        head = M.head_model(n_features, head_layers)
        self.built = Built(base, head_layers, model, extractor, head, n_features)
        self.initial = model.get_weights()

    # ---- the cached views ----------------------------------------------
    def load_views(self) -> None:
        """The view cache (:class:`edgetl.training.cache.CacheBuilder`, in a temporary folder),
        loaded into memory: adaptation's own training loop draws rows at random from source and target."""
        from edgetl.data.viewcache import estimate_bytes
        from edgetl.nets import model as M

        assert self.prepared is not None
        b, cfg = self.b, self.cfg
        cut = plan_cut(cfg, self.bb, b.base, self.prepared.strategy)
        plan = plan_views(cfg, self.method, self.ds, cut, b.n_features, self.run_dir, self.tmp)
        layout, shards = plan.layout, plan.shards
        rows = sum(s.rows for s in shards)
        in_ram = rows * (int(np.prod(layout.act_shape)) if layout.act_shape else b.n_features) * 4
        if cut.cut_tensor is not None and in_ram > self.cache_limit:
            raise EdgetlError(f"--unfreeze {self.opts.unfreeze}: the cached activations would take "
                              f"{in_ram / 2**20:.0f} MB in memory (limit {self.cache_limit / 2**20:.0f} MB); "
                              f"lower --unfreeze or --views")
        cache = CacheBuilder(cfg, self.bb, self.method, self.prepared, b, cut, plan, self.run_dir, self.tmp,
                             self.echo).cached_views().cache
        self.echo(f"adapt: view cache {estimate_bytes(layout, shards) / 2**20:.0f} MB on disk in {self.tmp}")
        col = "acts" if layout.act_shape is not None and cut.cut_tensor is not None else "feats"
        x = np.asarray(cache.column("train", col), np.float32)
        r = cache.rows("train")
        self.views = AdaptViews(x, r.y, r.view, r.labeled, ~r.labeled, cut)
        M.set_trainable(b.base, cut.to_train)
        for layer in b.head_layers:
            layer.trainable = True
        n_src, n_tgt = int(r.labeled.sum()), int(self.views.is_target.sum())
        where = (f"at the cut {tuple(x.shape[1:])}, training the last {len(cut.to_train)} layers"
                 if cut.cut_tensor is not None else "as pooled features, training the head")
        self.echo(f"adapt: {n_src} source and {n_tgt} target cached views {where}")

    def net(self, dann: bool):
        """(classifier on cached activations -> [logits, features], domain head or None)."""
        import keras

        if dann in self._nets:
            return self._nets[dann]
        inp = keras.Input(tuple(self.v.x.shape[1:]), name="cached")
        z = inp
        if self.v.cut.cut_tensor is not None:
            z = keras.layers.GlobalAveragePooling2D(name="pool")(self.v.cut.suffix(inp, training=False))
        feat = z
        for layer in self.b.head_layers:
            z = layer(z)
        net = keras.Model(inp, [z, feat], name="adapt_net")
        dom = None
        if dann:
            GRL = gradient_reversal()
            f = keras.Input((self.b.n_features,))
            h = GRL(0.0, name="grl")(f)
            h = keras.layers.Dense(128, activation="relu", name="domain_hidden")(h)
            dom = keras.Model(f, keras.layers.Dense(1, name="domain_logit")(h), name="domain_classifier")
        self._nets[dann] = (net, dom)
        return net, dom

    def target_probs(self, net=None) -> np.ndarray:
        """Class probabilities of every target image, averaged over its cached views."""
        import tensorflow as tf

        net = net or self.net(False)[0]
        xs = self.v.x[self.v.is_target]
        if id(net) not in self._probs_fns:  # traced once per network, whatever the batch size
            self._probs_fns[id(net)] = tf.function(lambda a: tf.nn.softmax(net(a, training=False)[0]),
                                                   input_signature=[tf.TensorSpec([None, *xs.shape[1:]], tf.float32)])
        f = self._probs_fns[id(net)]
        probs = np.concatenate([f(xs[i:i + 256]).numpy() for i in range(0, len(xs), 256)])
        m = len(self.target)
        return probs.reshape(-1, m, probs.shape[-1]).mean(0)

    def prior(self) -> np.ndarray:
        c = np.bincount(self.ds.train.labels, minlength=len(self.ds.classes)).astype(np.float64)
        return c / c.sum()

    # ---- training on the cached views ----------------------------------
    def fit(self, method: str, epochs: int, pseudo: tuple[np.ndarray, np.ndarray] | None = None,
            history: list | None = None) -> None:
        """``epochs`` over every source view (cross-entropy on the source labels) and every
        target view: the pseudo-labelled ones' cross-entropy (``pseudo``: target indices and
        labels) or, for dann, the domain loss behind the gradient reversal."""
        import keras
        import tensorflow as tf

        dann = method == "dann"
        net, dom = self.net(dann)
        k = len(self.ds.classes)
        eye = np.eye(k, dtype=np.float32)
        m = len(self.target)
        tgt_rows = np.flatnonzero(self.v.is_target)
        w = self.v.labeled.astype(np.float32)
        y = eye[self.v.y] * self.v.labeled[:, None]
        if pseudo is not None and len(pseudo[0]):
            lab = np.full(m, -1)
            lab[pseudo[0]] = pseudo[1]
            img = np.arange(len(tgt_rows)) % m  # target rows: views in order, images in order within a view
            rows = tgt_rows[lab[img] >= 0]
            y[rows] = eye[lab[img][lab[img] >= 0]]
            w[rows] = 1.0
        d = self.v.is_target.astype(np.float32)[:, None]
        # one Adam over the classifier and the domain classifier, as in Ganin & Lempitsky; a faster
        # domain classifier (10x) separated night from day perfectly and its reversed gradient vanished
        variables = net.trainable_variables + (dom.trainable_variables if dom is not None else [])
        opt = keras.optimizers.Adam(self.opts.lr)
        grl = dom.get_layer("grl") if dom is not None else None

        @tf.function(reduce_retracing=True)
        def step(xb, yb, wb, db):
            with tf.GradientTape() as tape:
                logits, feat = net(xb, training=True)
                ce = tf.nn.softmax_cross_entropy_with_logits(yb, logits)
                loss = tf.reduce_sum(wb * ce) / tf.maximum(tf.reduce_sum(wb), 1.0)
                dl = tf.constant(0.0)
                if dom is not None:
                    dl = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(db, dom(feat, training=True)))
                total = loss + dl
            grads = tape.gradient(total, variables)
            opt.apply_gradients([(g, v) for g, v in zip(grads, variables) if g is not None])
            return loss, dl

        rng = np.random.default_rng(self.cfg.seed + 11 + len(history or []))
        bs = self.opts.batch_size
        n = len(self.v.x)
        steps = epochs * -(-n // bs)
        s = 0
        for _ in range(epochs):
            order = rng.permutation(n)
            tot = np.zeros(2)
            for i in range(0, n, bs):
                b = order[i:i + bs]
                if grl is not None:  # Ganin & Lempitsky's schedule: the reversed gradient grows from 0
                    grl.weight.assign(self.opts.dann_weight * (2.0 / (1.0 + math.exp(-10.0 * s / steps)) - 1.0))
                s += 1
                lc, ld = step(self.v.x[b], y[b], w[b], d[b])
                tot += (float(lc), float(ld))
            if history is not None:
                history.append({"method": method, "epoch": len(history) + 1,
                                 "loss": tot[0] / -(-n // bs), **({"domain_loss": tot[1] / -(-n // bs)} if dann else {})})

    def reset(self) -> None:
        self.model.set_weights(self.initial)

    def run_pseudo(self, start_probs: np.ndarray, history: list) -> dict:
        """Rounds of: select confident, class-balanced target predictions; fine-tune on the
        source labels and those pseudo-labels. Round 1 takes its labels from ``start_probs``
        (AdaBN's predictions); each later round from the model the previous round left."""
        o = self.opts
        probs = start_probs
        rounds = []
        for r in range(o.rounds):
            frac = o.max_fraction * (r + 1) / o.rounds
            idx, lab = select_pseudo(probs, o.threshold, self.prior(), frac)
            share = np.bincount(lab, minlength=len(self.ds.classes)).tolist()
            self.echo(f"pseudo: round {r + 1}/{o.rounds}: {len(idx)} of {len(self.target)} target images labelled "
                      f"(confidence >= {o.threshold:g}, at most {frac:.0%}, per class {share})")
            self.fit("pseudo", o.epochs, (idx, lab), history)
            rounds.append({"round": r + 1, "selected": int(len(idx)), "per_class": share, "max_fraction": frac})
            probs = self.target_probs()
        return {"rounds": rounds}

    def run_dann(self, history: list) -> dict:
        self.echo(f"dann: {self.opts.epochs * self.opts.rounds} epochs, reversed-gradient weight ramped to "
                  f"{self.opts.dann_weight:g}")
        self.fit("dann", self.opts.epochs * self.opts.rounds, None, history)
        return {"epochs": self.opts.epochs * self.opts.rounds, "dann_weight": self.opts.dann_weight}
