"""The building blocks of domain adaptation (:mod:`edgetl.training.adapt`): Wilson intervals and
label-free signals, class-balanced pseudo-label selection, the gradient-reversal layer, and AdaBN
(BatchNorm statistics re-estimated on the target images)."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgetl.errors import EdgetlError
from edgetl.stats import wilson


# ------------------------------------------------------------------ helpers ----
def accuracy_row(probs: np.ndarray, labels, classes: list[str]) -> dict:
    """Accuracy with its 95% Wilson interval and the image count, plus per-class recall."""
    from edgetl.runtime.evaluate import classification_metrics

    y = np.asarray(labels)
    m = classification_metrics(y, probs, classes)
    k = int((np.asarray(probs).argmax(-1) == y).sum())
    lo, hi = wilson(k, len(y), z=1.96)  # the z adapt.json's intervals were computed with
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
