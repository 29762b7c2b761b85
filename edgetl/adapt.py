"""`edgetl adapt`: unsupervised domain adaptation of a finished run to unlabelled
target images (the device's own camera, light, compression).

* ``adabn`` — AdaBN (Li et al., 2016): the backbone's BatchNorm moving statistics are
  re-estimated on the target images. No labels, no training; nothing else changes.
* ``pseudo`` — self-training: confident, class-balanced target predictions become
  labels, refreshed over a few rounds, trained together with the source labels.
* ``dann`` — DANN (Ganin & Lempitsky, 2015): a domain classifier behind a
  gradient-reversal layer on the pooled features of the trained suffix, so the
  features stop telling source from target while the source labels keep them useful.
* ``auto`` — all three, then the one chosen by a criterion that needs no target labels.

pseudo and dann reuse the trainer's view cache: the base is cut before the first
trained unit, its frozen part runs once per image and view (source training images
and target images alike), and training runs on those cached activations.

Labelled target images (``target_labels``) are for evaluation only: they are read after
every candidate is trained and the choice is made. The result is an ordinary run
directory, so export, verify, bundle and the model card work on it unchanged."""
from __future__ import annotations

import dataclasses
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgetl import artifacts, rundir
from edgetl.config import AdaptOptions
from edgetl.errors import EdgetlError
from edgetl.train import Trainer

__all__ = ["AdaptOptions", "Adapter", "adabn", "adapt", "gradient_reversal", "label_free", "select_pseudo", "wilson"]

TRAINED = ("pseudo", "dann")


# ------------------------------------------------------------------ helpers ----
def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k / n."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))


def accuracy_row(probs: np.ndarray, labels, classes: list[str]) -> dict:
    """Accuracy with its 95% Wilson interval and the image count, plus per-class recall."""
    from edgetl.runtime.evaluate import classification_metrics

    y = np.asarray(labels)
    m = classification_metrics(y, probs, classes)
    k = int((np.asarray(probs).argmax(-1) == y).sum())
    lo, hi = wilson(k, len(y))
    return {"accuracy": m["accuracy"], "ci95": [lo, hi], "n": int(len(y)), "correct": k,
            "recall": {c: v["recall"] for c, v in m["per_class"].items()}, "confusion_matrix": m["confusion_matrix"]}


def label_free(probs: np.ndarray, prior: np.ndarray) -> dict:
    """Signals that need no target labels: mean prediction entropy (normalised to [0, 1]),
    the share of each predicted class and its total-variation distance to the source prior."""
    p = np.clip(np.asarray(probs, np.float64), 1e-12, 1.0)
    k = p.shape[1]
    ent = float((-(p * np.log(p)).sum(1) / math.log(k)).mean()) if len(p) else float("nan")
    share = np.bincount(p.argmax(1), minlength=k) / max(len(p), 1)
    gap = float(0.5 * np.abs(share - np.asarray(prior)).sum())
    return {"entropy": ent, "balance": share.tolist(), "balance_gap": gap, "n": int(len(p))}


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((np.asarray(a).argmax(1) == np.asarray(b).argmax(1)).mean()) if len(a) else float("nan")


def select_pseudo(probs: np.ndarray, threshold: float, prior, fraction: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Confident, class-balanced pseudo-labels: (indices, labels).

    Candidates of class c are the images predicted c with probability >= ``threshold``.
    The selection keeps the source prior: n_c = prior_c * n, with n as large as every
    class's candidates allow and at most ``fraction`` of the images; within a class the
    most confident come first. A class without candidates empties the selection (a
    one-sided selection would teach the model to predict one class)."""
    p = np.asarray(probs, np.float64)
    prior = np.asarray(prior, np.float64)
    prior = prior / prior.sum()
    pred, conf = p.argmax(1), p.max(1)
    cands = [np.flatnonzero((pred == c) & (conf >= threshold)) for c in range(p.shape[1])]
    n = min([len(ix) / pc for ix, pc in zip(cands, prior) if pc > 0] + [fraction * len(p)])
    idx, lab = [], []
    for c, (ix, pc) in enumerate(zip(cands, prior)):
        q = int(math.floor(n * pc + 1e-9))
        top = ix[np.argsort(-conf[ix], kind="stable")][:q]
        idx.append(top)
        lab.append(np.full(len(top), c))
    i, y = np.concatenate(idx).astype(np.int64), np.concatenate(lab).astype(np.int64)
    order = np.argsort(i, kind="stable")
    return i[order], y[order]


def gradient_reversal():
    """A Keras layer that is the identity forward and multiplies the gradient by -weight
    backward (``layer.weight`` is a variable: the schedule changes it during training)."""
    import keras
    import tensorflow as tf

    class GradientReversal(keras.layers.Layer):
        def __init__(self, weight: float = 1.0, **kw):
            super().__init__(**kw)
            self.weight = tf.Variable(float(weight), trainable=False, dtype=tf.float32)

        def call(self, x):
            w = self.weight

            @tf.custom_gradient
            def reverse(t):
                return tf.identity(t), lambda dy: -w * dy

            return reverse(x)

    return GradientReversal


# -------------------------------------------------------------------- AdaBN ----
def classifier_parts(model) -> tuple[Any, Any, list]:
    """(preprocess layer, backbone model, head layers) of an edgetl classifier."""
    import keras

    bases = [l for l in model.layers if isinstance(l, keras.Model)]
    names = [l.name for l in model.layers]
    if len(bases) != 1 or "preprocess" not in names or "pool" not in names:
        raise EdgetlError(f"{model.name}: not an edgetl classifier (preprocess, one backbone, pool, head); "
                          f"adapt takes runs written by edgetl train or distill")
    return model.get_layer("preprocess"), bases[0], model.layers[names.index("pool") + 1:]


def bn_layers(model) -> list:
    import keras

    return [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]


def adabn(model, images: np.ndarray, batch_size: int = 64) -> int:
    """AdaBN: re-estimate every BatchNorm layer's moving mean and variance of the backbone
    from ``images`` (RGB 0-255 at the model's input size, no labels). Returns the number
    of layers updated.

    One pass with every BatchNorm layer normalising by its batch's statistics (training
    mode, so each layer sees its input as the adapted layers before it shape it),
    accumulating each layer's per-channel sum and sum of squares over every pixel of
    every image in float64; their population mean and variance then replace the moving
    statistics. Nothing else changes: gamma, beta and every other weight stay as they are."""
    import keras
    import tensorflow as tf

    pre, base, _ = classifier_parts(model)
    bns = bn_layers(base)
    if not bns or not len(images):
        return 0
    probe = keras.Model(base.inputs, [b.input for b in bns])
    flags = [b.trainable for b in bns]
    shape = tuple(int(s) for s in model.inputs[0].shape[1:])

    @tf.function(input_signature=[tf.TensorSpec([None, *shape], tf.float32)], reduce_retracing=True)
    def moments(x):
        out = []
        for o in probe(pre(x), training=True):
            o = tf.reshape(tf.cast(o, tf.float64), (-1, o.shape[-1]))
            out.append((tf.reduce_sum(o, 0), tf.reduce_sum(o * o, 0), tf.cast(tf.shape(o)[0], tf.float64)))
        return out

    acc: list | None = None
    for b in bns:
        b.trainable = True  # Keras runs a frozen BatchNormalization in inference mode whatever `training` says
    try:
        for i in range(0, len(images), batch_size):
            got = [(s.numpy(), q.numpy(), float(n.numpy())) for s, q, n in
                   moments(tf.convert_to_tensor(np.asarray(images[i:i + batch_size], np.float32)))]
            acc = got if acc is None else [(a + s, b + q, c + n) for (a, b, c), (s, q, n) in zip(acc, got)]
    finally:
        for b, f in zip(bns, flags):
            b.trainable = f
    assert acc is not None
    for b, (s, q, n) in zip(bns, acc):
        mean = s / n
        var = np.maximum(q / n - mean * mean, 0.0)
        b.moving_mean.assign(mean.astype(np.float32))
        b.moving_variance.assign(var.astype(np.float32))
    return len(bns)


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


class Adapter(Trainer):
    """Caches the frozen prefix's outputs for every view of the source training images and
    the target images once, then trains each method from the source model on them."""

    kind = "adapt"
    cache_limit = 2 << 30

    def __init__(self, run, opts: AdaptOptions, target: list[str], echo=print):
        self.source = run
        self.opts = opts
        self.target = list(target)
        cfg = dataclasses.replace(run.config, out=None, seed=opts.seed, views=opts.views, mixup=0.0,
                                  epochs_finetune=1 if opts.unfreeze else 0, unfreeze=opts.unfreeze,
                                  unfreeze_blocks=None, batch_size=opts.batch_size, lr_finetune=opts.lr,
                                  class_weights="none", recipe="fixed", cache_dir=None, strategy="auto")
        super().__init__(cfg, echo=echo)
        self.tmp = Path(tempfile.mkdtemp(prefix="edgetl-adapt-"))
        self.ckpt = self.tmp  # the view cache is working data: nothing is written into a run until the end

    def cleanup(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def prepare(self) -> None:
        from edgetl.train import get_strategy, set_seed

        self.ds = dataset_from_split(self.source)
        self.class_weight = None
        set_seed(self.cfg.seed)
        self.strategy = get_strategy("auto")
        self.replicas = 1

    def build(self) -> None:
        import keras

        from edgetl.nets import model as M

        self.model = self.source.load_model()
        pre, self.base, self.head_layers = classifier_parts(self.model)
        self.base.trainable = False
        self.n_features = int(self.base.output_shape[-1])
        self.extractor = keras.Model(self.model.inputs, self.model.get_layer("pool").output, name="feature_extractor")
        self.head = M.head_model(self.n_features, self.head_layers)
        self.initial = self.model.get_weights()

    def extra_paths(self) -> list[str]:
        return self.target  # the unlabelled target images get every view, like a transfer set

    # ---- the cached views ----------------------------------------------
    def load_views(self) -> None:
        """The view cache (train.Trainer.cached_views, in a temporary folder), loaded into
        memory: adaptation's own training loop draws rows at random from source and target."""
        from edgetl.data.viewcache import estimate_bytes
        from edgetl.nets import model as M

        self.to_train = self.plan_cut()
        layout, shards, _ = self.plan_views()
        rows = sum(s.rows for s in shards)
        in_ram = rows * (int(np.prod(layout.act_shape)) if layout.act_shape else self.n_features) * 4
        if self.cut_tensor is not None and in_ram > self.cache_limit:
            raise EdgetlError(f"--unfreeze {self.opts.unfreeze}: the cached activations would take "
                              f"{in_ram / 2**20:.0f} MB in memory (limit {self.cache_limit / 2**20:.0f} MB); "
                              f"lower --unfreeze or --views")
        cache = self.cached_views()
        self.echo(f"adapt: view cache {estimate_bytes(layout, shards) / 2**20:.0f} MB on disk in {self.tmp}")
        col = "acts" if layout.act_shape is not None and self.cut_tensor is not None else "feats"
        x = np.asarray(cache.column("train", col), np.float32)
        r = cache.rows("train")
        self.x, self.y, self.view, self.labeled = x, r.y, r.view, r.labeled
        self.is_target = ~self.labeled
        M.set_trainable(self.base, self.to_train)
        for layer in self.head_layers:
            layer.trainable = True
        n_src, n_tgt = int(self.labeled.sum()), int(self.is_target.sum())
        where = (f"at the cut {tuple(x.shape[1:])}, training the last {len(self.to_train)} layers"
                 if self.cut_tensor is not None else "as pooled features, training the head")
        self.echo(f"adapt: {n_src} source and {n_tgt} target cached views {where}")
        self._nets: dict[bool, Any] = {}
        self._probs_fns: dict[int, Any] = {}

    def net(self, dann: bool):
        """(classifier on cached activations -> [logits, features], domain head or None)."""
        import keras

        if dann in self._nets:
            return self._nets[dann]
        inp = keras.Input(tuple(self.x.shape[1:]), name="cached")
        z = inp
        if self.cut_tensor is not None:
            z = keras.layers.GlobalAveragePooling2D(name="pool")(self.suffix(inp, training=False))
        feat = z
        for layer in self.head_layers:
            z = layer(z)
        net = keras.Model(inp, [z, feat], name="adapt_net")
        dom = None
        if dann:
            GRL = gradient_reversal()
            f = keras.Input((self.n_features,))
            h = GRL(0.0, name="grl")(f)
            h = keras.layers.Dense(128, activation="relu", name="domain_hidden")(h)
            dom = keras.Model(f, keras.layers.Dense(1, name="domain_logit")(h), name="domain_classifier")
        self._nets[dann] = (net, dom)
        return net, dom

    def target_probs(self, net=None) -> np.ndarray:
        """Class probabilities of every target image, averaged over its cached views."""
        import tensorflow as tf

        net = net or self.net(False)[0]
        xs = self.x[self.is_target]
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
        tgt_rows = np.flatnonzero(self.is_target)
        w = self.labeled.astype(np.float32)
        y = eye[self.y] * self.labeled[:, None]
        if pseudo is not None and len(pseudo[0]):
            lab = np.full(m, -1)
            lab[pseudo[0]] = pseudo[1]
            img = np.arange(len(tgt_rows)) % m  # target rows: views in order, images in order within a view
            rows = tgt_rows[lab[img] >= 0]
            y[rows] = eye[lab[img][lab[img] >= 0]]
            w[rows] = 1.0
        d = self.is_target.astype(np.float32)[:, None]
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
        n = len(self.x)
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
                lc, ld = step(self.x[b], y[b], w[b], d[b])
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


# --------------------------------------------------------------- the command ----
def _target_files(opts: AdaptOptions, run) -> list[str]:
    from edgetl.data.dataset import readable_images, same_images

    files = [str(p) for p in readable_images(Path(opts.target).expanduser())]
    if not files:
        raise EdgetlError(f"--target {opts.target}: no readable images in it; give a folder of target images "
                          f"(any depth, jpg/png/...)")
    held = [f for name in ("val", "test") for f in run.split_files(name)[0]]
    clash = same_images(files, held)
    if clash:
        f, v = clash[0]
        raise EdgetlError(f"--target {opts.target}: {len(clash)} image(s) are the run's held-out images (e.g. {f} = {v}); "
                          f"the source scores would be measured on images adaptation saw; remove them from the target folder")
    return files


def _target_labelled(opts: AdaptOptions, run, target: list[str]) -> tuple[list[str], np.ndarray] | None:
    from edgetl.data.dataset import same_images, scan

    if opts.target_labels is None:
        return None
    ds = scan(Path(opts.target_labels).expanduser(), val_split=0.5)
    if ds.classes != run.labels:
        raise EdgetlError(f"--target-labels {opts.target_labels}: classes {ds.classes} differ from the model's "
                          f"labels {run.labels}; use class folders named like labels.txt")
    if ds.layout == "folders":
        paths, labels = ds.train.paths + ds.val.paths, np.concatenate([ds.train.labels, ds.val.labels])
    else:
        split = ds.held_out
        paths, labels = split.paths, split.labels
    clash = same_images(paths, target)
    if clash:
        f, t = clash[0]
        raise EdgetlError(f"--target-labels {opts.target_labels}: {len(clash)} image(s) are also in the unlabelled "
                          f"target set (e.g. {f} = {t}); target accuracy would be measured on images adaptation saw; "
                          f"keep the labelled evaluation images out of --target")
    return list(paths), np.asarray(labels)


def _out_dir(opts: AdaptOptions, run) -> Path:
    out = Path(opts.out).expanduser() if opts.out else run.dir.parent / f"{run.dir.name}-adapt"
    if out.resolve() == run.dir.resolve():
        raise EdgetlError(f"--out {out}: is the source run; choose a new folder for the adapted run")
    if out.exists() and any(out.iterdir()):
        raise EdgetlError(f"--out {out}: exists and is not empty; choose a new folder for the adapted run")
    return out


def choose(cands: dict[str, dict], source: dict) -> tuple[str, str]:
    """The auto choice, from label-free signals only: (method, why).

    A candidate is eligible when its predicted class shares on the target stay within
    0.15 (total variation) of the source prior and it keeps its source training accuracy
    (plain views, labels it trained on: no held-out image) within 3 points of the source
    model's. Among those, the lowest mean prediction entropy on the target wins. Without an
    eligible candidate the source model is kept, unchanged ("source")."""
    rows = []
    for name, c in cands.items():
        ok_bal = c["target"]["balance_gap"] <= 0.15
        ok_src = c["source_train_accuracy"] >= source["source_train_accuracy"] - 0.03
        rows.append((not (ok_bal and ok_src), c["target"]["entropy"], name, ok_bal, ok_src))
    rows.sort()
    bad, ent, name, _, _ = rows[0]
    if bad:
        return "source", ("warning: no method kept both the source prior's class balance on the target and its "
                          "source training accuracy; the adapted run keeps the source model unchanged")
    others = ", ".join(f"{n} {e:.3f}" + ("" if b and s else " (ineligible: " + ", ".join(
        w for w, ok in (("class balance", b), ("source accuracy", s)) if not ok) + ")")
        for _, e, n, b, s in rows[1:])
    return name, (f"{name} has the lowest mean target entropy ({ent:.3f}; {others}) with its target class shares "
                  f"within 0.15 of the source prior and its source training accuracy within 3 points")


def adapt(run_dir, opts: AdaptOptions, echo=print) -> dict:
    """Adapt the finished run ``run_dir`` to the images of ``opts.target``; writes a new run
    directory and returns the report (also in its adapt.json)."""
    from edgetl.data.tfdata import load_array

    t0 = time.perf_counter()
    opts = opts.validate()
    run = rundir.open_run(run_dir)
    target = _target_files(opts, run)
    labelled = _target_labelled(opts, run, target)
    out = _out_dir(opts, run)
    with rundir.writing(out, "edgetl adapt", echo=echo):
        methods = ("adabn", "pseudo", "dann") if opts.method == "auto" else (opts.method,)
        echo(f"adapt: {run.dir} to {len(target)} unlabelled target images from {opts.target}; "
             f"method {opts.method}" + (f" ({', '.join(methods)})" if opts.method == "auto" else ""))

        ad = Adapter(run, opts, target, echo=echo)
        try:
            ad.prepare()
            ad.build()
            size, resize = ad.cfg.size, ad.cfg.resize
            x_tgt = load_array(target, size, resize)
            x_src = load_array(ad.ds.train.paths, size, resize)
            prior = ad.prior()

            import tensorflow as tf

            forward = tf.function(lambda a: tf.nn.softmax(ad.model(a, training=False)),
                                  input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])

            def probs_of(x: np.ndarray) -> np.ndarray:
                return np.concatenate([forward(x[i:i + 64].astype(np.float32)).numpy() for i in range(0, len(x), 64)]) \
                    if len(x) else np.zeros((0, len(prior)))

            def signals(weights) -> dict:
                ad.model.set_weights(weights)
                pt = probs_of(x_tgt)
                ps = probs_of(x_src)
                return {"target": label_free(pt, prior), "target_probs": pt,
                        "source_train_accuracy": float((ps.argmax(1) == ad.ds.train.labels).mean())}

            weights: dict[str, list] = {"source": ad.initial}
            history: dict[str, list] = {}
            details: dict[str, dict] = {}
            # AdaBN: always computed (the baseline, and the pseudo-labeller's first round)
            ad.reset()
            n_bn = adabn(ad.model, x_tgt)
            weights["adabn"] = ad.model.get_weights()
            details["adabn"] = {"batchnorm_layers": n_bn, "images": len(target)}
            echo(f"adabn: re-estimated the moving statistics of {n_bn} BatchNorm layers on {len(target)} target images")
            if any(m in TRAINED for m in methods):
                ad.reset()
                ad.load_views()
            for m in methods:
                if m == "adabn":
                    continue
                t1 = time.perf_counter()
                ad.reset()
                history[m] = []
                if m == "pseudo":
                    ad.model.set_weights(weights["adabn"])
                    start = probs_of(x_tgt)
                    ad.reset()
                    details[m] = ad.run_pseudo(start, history[m])
                else:
                    details[m] = ad.run_dann(history[m])
                details[m]["seconds"] = round(time.perf_counter() - t1, 1)
                weights[m] = ad.model.get_weights()
            # label-free signals of every candidate, then the choice: no target label read so far
            sig = {name: signals(w) for name, w in weights.items()}
            if opts.method == "auto":
                chosen, why = choose({m: sig[m] for m in methods}, sig["source"])
            else:
                chosen, why = opts.method, "chosen with --method"
            for a in list(sig):
                sig[a]["agreement"] = {b: agreement(sig[a]["target_probs"], sig[b]["target_probs"]) for b in sig if b != a}
            echo(f"adapt: chosen {chosen}: {why}")
            report = _evaluate(ad, run, opts, weights, sig, chosen, labelled, probs_of)
            report.update(method=opts.method, chosen=chosen, why=why, details=details,
                          source_run=str(run.dir.resolve()), target=str(Path(opts.target).resolve()),
                          target_images=len(target), options=dataclasses.asdict(opts),
                          seconds=round(time.perf_counter() - t0, 1))
            ad.model.set_weights(weights[chosen])
            _write_run(ad, run, out, report, history, target, labelled)
        finally:
            ad.cleanup()
        echo("")
        echo(table(report))
        echo(f"adapted run: {out}")
        return report


def _evaluate(ad, run, opts, weights, sig, chosen, labelled, probs_of) -> dict:
    """Scores of the source model and every candidate: source held-out accuracy, target
    accuracy when labels were given (read only now), and the label-free signals."""
    from edgetl.data.tfdata import load_array

    split, files, labels = run.held_out()
    x_held = load_array(files, ad.cfg.size, ad.cfg.resize)
    x_tl = load_array(labelled[0], ad.cfg.size, ad.cfg.resize) if labelled is not None else None
    rows = {}
    for name, w in weights.items():
        ad.model.set_weights(w)
        row: dict[str, Any] = {"source": accuracy_row(probs_of(x_held), labels, run.labels)}
        if x_tl is not None and labelled is not None:
            row["target"] = accuracy_row(probs_of(x_tl), labelled[1], run.labels)
        s = sig[name]
        row["label_free"] = {**s["target"], "agreement": s["agreement"],
                             "source_train_accuracy": s["source_train_accuracy"]}
        rows[name] = row
    return {"source_split": split, "source_images": len(files),
            "target_labelled_images": None if labelled is None else len(labelled[0]),
            "candidates": rows}


def table(report: dict, markdown: bool = False) -> str:
    """The before/after table: source and target accuracy with 95% Wilson intervals and
    image counts when target labels exist, and the label-free signals."""
    c = report["candidates"]
    has_t = bool(report.get("target_labelled_images"))

    def acc(r):
        return f"{r['accuracy']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] n={r['n']}"

    heads = ["model", f"source acc ({report['source_split']}) [95% CI]"] + (["target acc [95% CI]"] if has_t else []) \
        + ["target entropy", "target class shares", "agreement with source", f"agreement with {report['chosen']}"]
    cells = []
    for name, r in c.items():
        lf = r["label_free"]
        cells.append([name + (" *" if name == report["chosen"] else ""), acc(r["source"])]
                     + ([acc(r["target"])] if has_t else [])
                     + [f"{lf['entropy']:.3f}", "/".join(f"{x:.2f}" for x in lf["balance"]),
                        *("-" if name == other else f"{lf['agreement'].get(other, float('nan')):.3f}"
                          for other in ("source", report["chosen"]))])
    src, ch = c["source"], c[report["chosen"]]
    delta = f"source {100 * (ch['source']['accuracy'] - src['source']['accuracy']):+.1f} points"
    if has_t:
        delta = f"target {100 * (ch['target']['accuracy'] - src['target']['accuracy']):+.1f}, " + delta
    foot = [f"* chosen: {report['chosen']} ({delta} against the source model): {report['why']}"]
    if not has_t:
        foot.append("no --target-labels: target accuracy unknown; entropy, class shares and agreement need no labels")
    if markdown:
        lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)] + ["| " + " | ".join(r) + " |" for r in cells]
        return "\n".join(lines + [""] + foot)
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(heads)]
    fmt = lambda cs: "  ".join(x.rjust(w) if i else x.ljust(w) for i, (x, w) in enumerate(zip(cs, widths)))  # noqa: E731
    return "\n".join([fmt(heads)] + [fmt(r) for r in cells] + foot)


def _write_run(ad: Adapter, run, out: Path, report: dict, history: dict, target: list[str], labelled) -> None:
    """An ordinary run directory: model, labels, config, split, history, metrics, plots,
    adapt.json, then the manifest last."""
    from edgetl.nets.model import count_params
    from edgetl.report import plots

    out.mkdir(parents=True, exist_ok=True)
    with artifacts.atomic_path(out / rundir.MODEL, suffix=".keras") as tmp:
        ad.model.save(str(tmp))
    artifacts.copy_file(run.dir / rundir.LABELS, out / rundir.LABELS)
    artifacts.write_yaml(out / rundir.CONFIG, dataclasses.replace(run.config, out=str(out)).to_dict())
    split = dict(run.split)
    split["target"] = [str(Path(f).resolve()) for f in target]  # unlabelled, used for adaptation
    artifacts.write_json(out / rundir.SPLIT, split)
    artifacts.write_json(out / rundir.HISTORY, {"phase1": [], "phase2": [], "adapt": history})
    src_metrics = rundir.read_json(run.dir / rundir.METRICS)
    chosen = report["candidates"][report["chosen"]]
    name, files, labels = run.held_out()
    final = {**src_metrics.get("final", {}), "accuracy": chosen["source"]["accuracy"],
             "confusion_matrix": chosen["source"]["confusion_matrix"], "n": chosen["source"]["n"],
             "per_class": _per_class(chosen["source"]["confusion_matrix"], run.labels)}
    metrics = {**src_metrics, "final": final, "val_accuracy": final["accuracy"], "selected_phase": f"adapt:{report['chosen']}",
               "params": count_params(ad.model), "adaptation": _brief(report)}
    artifacts.write_json(out / rundir.METRICS, metrics)
    curves = {m: [{"epoch": i + 1, "loss": h["loss"]} for i, h in enumerate(rows)] for m, rows in history.items()}
    plots.training_curves(curves or {"adapt": []}, out / rundir.CURVES)
    plots.confusion(final["confusion_matrix"], run.labels, out / rundir.CONFUSION,
                    f"{name} confusion (adapted: {report['chosen']})")
    artifacts.write_json(out / rundir.ADAPT, report)
    man = rundir.read_manifest(run.dir).get("train", {})
    rundir.update_manifest(out, "train", {
        **man, "kind": "adapt", "config": dataclasses.replace(run.config, out=str(out)).to_dict(),
        "files": artifacts.file_hashes(out, (*rundir.TRAIN_FILES, rundir.ADAPT)),
        "adapted_from": {"run": str(run.dir.resolve()), "model_sha256": artifacts.sha256_file(run.model_path),
                         "method": report["chosen"], "target": report["target"], "target_images": len(target)},
    })


def _per_class(cm, classes) -> dict:
    cm = np.asarray(cm, np.float64)
    out = {}
    for i, c in enumerate(classes):
        tp = cm[i, i]
        sup = cm[i].sum()
        pred = cm[:, i].sum()
        p = tp / pred if pred else 0.0
        r = tp / sup if sup else 0.0
        out[c] = {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0, "support": int(sup)}
    return out


def _brief(report: dict) -> dict:
    """The adaptation summary kept in metrics.json (the model card reads it)."""
    keep = ("method", "chosen", "why", "source_run", "target", "target_images", "target_labelled_images",
            "source_split", "source_images")
    cands = {n: {"source": {k: r["source"][k] for k in ("accuracy", "ci95", "n")},
                 **({"target": {k: r["target"][k] for k in ("accuracy", "ci95", "n")}} if "target" in r else {}),
                 "label_free": {k: r["label_free"][k] for k in ("entropy", "balance", "balance_gap")}}
             for n, r in report["candidates"].items()}
    return {**{k: report.get(k) for k in keep}, "candidates": cands}
