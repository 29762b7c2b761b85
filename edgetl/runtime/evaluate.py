"""Scores from predictions: accuracy, per-class precision/recall, confusion matrix.

Up to ``INLINE_MAX`` classes the confusion matrix is a nested list inside the metrics
(and so inside metrics.json and report.json). Above it the matrix is an int32 array in
memory and goes to a compressed side file (``confusion.npz`` in a run directory); the
JSON keeps a reference to it and the most-confused class pairs. ``confusion_of`` reads
either form."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetl.rundir import CONFUSION_MATRICES
from edgetl.stats import PairedDrop, accuracy_interval, paired_drop

INLINE_MAX = 30  # classes; larger confusion matrices stay out of JSON
TOP_PAIRS = 20
CONFUSION_FILE = CONFUSION_MATRICES  # the side file in a run directory


def classification_metrics(y_true, probs, classes: list[str]) -> dict:
    y_true = np.asarray(y_true, np.int64)
    probs = np.asarray(probs)
    pred = probs.argmax(-1)
    k = len(classes)
    cm = np.bincount(y_true * k + pred, minlength=k * k).reshape(k, k).astype(np.int32) if k else \
        np.zeros((0, 0), np.int32)
    tp, support, predicted = np.diag(cm).astype(float), cm.sum(1), cm.sum(0)
    p = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)  # 0 where undefined, like
    r = np.divide(tp, support, out=np.zeros(k), where=support > 0)      # sklearn's zero_division=0
    f = np.divide(2 * p * r, p + r, out=np.zeros(k), where=(p + r) > 0)
    correct = int((pred == y_true).sum())
    out = {
        "accuracy": correct / len(y_true) if len(y_true) else float("nan"),
        "n": int(len(y_true)),
        "ci95": accuracy_interval(correct, int(len(y_true))),  # Wilson
        "per_class": {c: {"precision": round(float(p[i]), 4), "recall": round(float(r[i]), 4),
                          "f1": round(float(f[i]), 4), "support": int(support[i])}
                      for i, c in enumerate(classes)},
        "confusion_matrix": cm.tolist() if k <= INLINE_MAX else cm,
        "top_confusions": top_confusions(cm, classes),
    }
    if k > 5:
        top5 = np.argsort(-probs, axis=-1)[:, :5]
        out["top5_accuracy"] = float((top5 == y_true[:, None]).any(1).mean())
    return out


@dataclass
class Score:
    """A candidate model scored against the Keras reference on the same labelled images."""

    accuracy: float
    keras_accuracy: float
    agreement: float        # top-1 agreement with the reference
    n: int
    paired: PairedDrop      # the drop against the reference on the same images, with its interval

    @property
    def drop_points(self) -> float:
        """Points of top-1 accuracy lost against the reference (negative: gained)."""
        return round(100 * (self.keras_accuracy - self.accuracy), 3)


def score_probs(probs: np.ndarray, labels: np.ndarray, reference: np.ndarray) -> Score:
    """Score predicted probabilities against labels and the reference's probabilities."""
    y = np.asarray(labels)
    pred, ref = np.asarray(probs).argmax(-1), np.asarray(reference).argmax(-1)
    return Score(float((pred == y).mean()), float((ref == y).mean()), float((pred == ref).mean()), int(len(y)),
                 paired_drop(y, ref, pred))


def score_model(data: bytes, fmt: str, images: np.ndarray, labels: np.ndarray, reference: np.ndarray,
                threads: int = 2, batch: int = 32) -> Score:
    """Score a serialised model (``fmt``: a registered format) through its Runner, from bytes."""
    import tempfile
    from pathlib import Path

    from edgetl.runtime.runners import open_runner

    with tempfile.TemporaryDirectory() as d:
        from edgetl.formats import get

        p = Path(d) / ("candidate" + get(fmt).suffix)
        p.write_bytes(data)
        r = open_runner(p, threads=threads)
        probs = np.concatenate([r.predict(images[i:i + batch]) for i in range(0, len(images), batch)])
    return score_probs(probs, labels, reference)
def top_confusions(cm, classes: list[str], n: int = TOP_PAIRS) -> list[dict]:
    """The ``n`` largest off-diagonal counts, largest first: [{"true", "predicted", "count"}]."""
    cm = np.array(cm, np.int64)
    if cm.size == 0:
        return []
    np.fill_diagonal(cm, 0)
    flat = cm.ravel()
    idx = np.flatnonzero(flat)
    idx = idx[np.lexsort((idx, -flat[idx]))][:n]  # by count, then row-major: deterministic
    k = cm.shape[1]
    return [{"true": classes[i // k], "predicted": classes[i % k], "count": int(flat[i])} for i in idx]


def confusion_of(section: dict, folder=None) -> np.ndarray | None:
    """The confusion matrix of a metrics section in either form: inline, or in the side
    file ``section["confusion_matrix_file"]`` (relative to ``folder``) under
    ``section["confusion_matrix_key"]``. None when the section has neither."""
    if not section:
        return None
    if section.get("confusion_matrix") is not None:
        return np.asarray(section["confusion_matrix"])
    ref = section.get("confusion_matrix_file")
    if ref is None:
        return None
    path = Path(folder or ".") / ref
    if not path.is_file():
        return None
    with np.load(path) as z:
        return z[section.get("confusion_matrix_key", "confusion_matrix")]


def move_confusions(metrics: dict, folder, phases=("phase1", "phase2", "test")) -> Path | None:
    """Above ``INLINE_MAX`` classes: write the phases' confusion matrices to
    ``folder/confusion.npz`` (compressed int32, atomically) and leave in each section a
    reference to it; the per-class table of a phase that was not selected is dropped
    too (it follows from that phase's matrix). Changes ``metrics`` in place; returns the
    side file, or None when the matrices are small enough to stay inline."""
    from edgetl import artifacts

    sections = {ph: metrics[ph] for ph in phases if metrics.get(ph)}
    big = {ph: s for ph, s in sections.items() if isinstance(s.get("confusion_matrix"), np.ndarray)
           or len(s.get("confusion_matrix") or []) > INLINE_MAX}
    if not big:
        return None
    dest = Path(folder) / CONFUSION_FILE
    with artifacts.atomic_path(dest, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **{ph: np.asarray(s["confusion_matrix"], np.int32)  # type: ignore[arg-type]
                                    for ph, s in big.items()})
    for ph, s in big.items():
        del s["confusion_matrix"]
        s["confusion_matrix_file"], s["confusion_matrix_key"] = CONFUSION_FILE, ph
        if ph in ("phase1", "phase2") and metrics.get("selected_phase") not in (None, ph):
            s.pop("per_class", None)
    return dest


def json_row(row: dict) -> dict:
    """A report row for JSON: without its confusion matrix above ``INLINE_MAX`` classes
    (its top_confusions stay)."""
    cm = row.get("confusion_matrix")
    if cm is not None and len(cm) > INLINE_MAX:
        return {k: v for k, v in row.items() if k != "confusion_matrix"}
    return row
