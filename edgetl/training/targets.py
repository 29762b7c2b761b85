"""The targets of the view cache's rows: soft labels (mixup-blended, zero for unlabelled rows),
extended by the training method (distillation appends the teacher's logits), with class weights
as sample weights under --class-weights auto."""
from __future__ import annotations

import numpy as np

from edgetl.training.methods import Method


class Targets:
    """Targets of cached rows, in the tf.data graph (:meth:`row_targets`) and in numpy."""

    def __init__(self, n_classes: int, class_weight: dict | None, method: Method):
        self.k = n_classes
        self.class_weight = class_weight
        self.method = method

    def view_labels(self, rows) -> np.ndarray:
        """Soft labels of the cached training views: one-hot, or for a mixup view the blend of
        its two images' labels (lam * y + (1 - lam) * y2); zero for unlabelled images."""
        r = rows
        eye = np.eye(self.k, dtype=np.float32)
        soft = r.lam[:, None] * eye[r.y] + (1.0 - r.lam[:, None]) * eye[r.y2]
        return soft * r.labeled[:, None]

    def head_targets(self, cache) -> np.ndarray:
        """Training targets of the cached views, as numpy; training computes the same in the
        tf.data graph (:meth:`row_targets`)."""
        return self.method.head_targets(self.view_labels(cache.rows("train")),
                                        lambda: np.asarray(cache.column("train", "teacher")))

    def row_targets(self, meta, teacher):
        """(targets,) or (targets, sample weights) of a batch of cached training rows, in the
        tf.data graph: soft labels from ``meta``; under --class-weights auto each row's class
        weight, blended like its label, 1 for unlabelled rows (passed as sample weights:
        Keras' class_weight reads a class from argmax(y), wrong for blended labels and for
        distillation's [labels | teacher logits] targets)."""
        import tensorflow as tf

        from edgetl.data.viewcache import META

        k = self.k
        col = {name: meta[:, i] for i, name in enumerate(META)}
        lam, labeled = col["lam"][:, None], col["labeled"][:, None]
        soft = (lam * tf.one_hot(tf.cast(col["y"], tf.int32), k)
                + (1.0 - lam) * tf.one_hot(tf.cast(col["y2"], tf.int32), k)) * labeled
        t = self.method.extend_targets(soft, teacher)
        if self.class_weight is None:
            return (t,)
        cw = tf.constant([self.class_weight[i] for i in range(k)], tf.float32)
        w = tf.where(col["labeled"] > 0.5, tf.linalg.matvec(soft, cw), 1.0)
        return (t, w)

    def row_val_targets(self, meta, teacher):
        import tensorflow as tf

        from edgetl.data.viewcache import META

        y = tf.one_hot(tf.cast(meta[:, META.index("y")], tf.int32), self.k)
        return (self.method.extend_targets(y, teacher),)
