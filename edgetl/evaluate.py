"""Scores from predictions: accuracy, per-class precision/recall, confusion matrix."""
from __future__ import annotations

import numpy as np


def classification_metrics(y_true, probs, classes: list[str]) -> dict:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    y_true = np.asarray(y_true)
    pred = np.asarray(probs).argmax(-1)
    k = len(classes)
    p, r, f, s = precision_recall_fscore_support(y_true, pred, labels=list(range(k)), zero_division=0)
    out = {
        "accuracy": float((pred == y_true).mean()) if len(y_true) else float("nan"),
        "n": int(len(y_true)),
        "per_class": {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                      for i, c in enumerate(classes)},
        "confusion_matrix": confusion_matrix(y_true, pred, labels=list(range(k))).tolist(),
    }
    if k > 5:
        top5 = np.argsort(-np.asarray(probs), axis=-1)[:, :5]
        out["top5_accuracy"] = float(np.mean([y in t for y, t in zip(y_true, top5)]))
    return out
