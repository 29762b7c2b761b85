"""Scores from predictions: accuracy, per-class precision/recall, confusion matrix."""
from __future__ import annotations

from dataclasses import dataclass

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


@dataclass
class Score:
    """A candidate model scored against the Keras reference on the same labelled images."""

    accuracy: float
    keras_accuracy: float
    agreement: float        # top-1 agreement with the reference
    n: int

    @property
    def drop_points(self) -> float:
        """Points of top-1 accuracy lost against the reference (negative: gained)."""
        return round(100 * (self.keras_accuracy - self.accuracy), 3)


def score_probs(probs: np.ndarray, labels: np.ndarray, reference: np.ndarray) -> Score:
    """Score predicted probabilities against labels and the reference's probabilities."""
    y = np.asarray(labels)
    pred, ref = np.asarray(probs).argmax(-1), np.asarray(reference).argmax(-1)
    return Score(float((pred == y).mean()), float((ref == y).mean()), float((pred == ref).mean()), int(len(y)))


def score_model(data: bytes, fmt: str, images: np.ndarray, labels: np.ndarray, reference: np.ndarray,
                threads: int = 2, batch: int = 32) -> Score:
    """Score a serialised model (``fmt``: tflite or onnx) through its Runner, from bytes."""
    import tempfile
    from pathlib import Path

    from edgetl.runners import open_runner

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / f"candidate.{fmt}"
        p.write_bytes(data)
        r = open_runner(p, threads=threads)
        probs = np.concatenate([r.predict(images[i:i + batch]) for i in range(0, len(images), batch)])
    return score_probs(probs, labels, reference)
