"""Near-duplicates between the training images and the held-out splits (val, test).

A photo set often holds the same scene twice (a burst, a re-upload, a crop of another photo).
When one copy lands in train and the other in val or test, the held-out accuracy measures
memory, not generalisation. The check compares the frozen ImageNet backbone's pooled features
(the view cache's plain view of every training image, and the same features of the held-out
images) by cosine similarity, with two conditions on a held-out image's most similar training image:

* similarity at least ``MIN_SIMILARITY`` (an absolute floor: dissimilar pairs never count), and
* a ratio test: its cosine distance (1 - similarity) at most ``RATIO`` times the distance to the
  ``K``-th most similar training image. A copy, crop or re-encode sits far closer to its original
  than to any other photo; two distinct photos of a homogeneous set (same background, same kind of
  object) are all about equally close, so an absolute threshold alone would flag every image of
  such a set (synthetic colour images reach 0.96 between distinct images, while distinct
  hymenoptera photos stay below 0.81).

The figures behind the constants: ``bench/bench_near_duplicates.py`` (results in
``bench/results/near_duplicates.json``; docs/performance.md has the table).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

MIN_SIMILARITY = 0.85  # cosine, absolute floor
RATIO = 0.5           # nearest distance <= RATIO * distance to the K-th nearest training image
K = 5
THRESHOLD = MIN_SIMILARITY  # the name metrics.json and the docs use for the floor
EXAMPLES = 3  # pairs named in the warning (metrics.json keeps up to MAX_PAIRS)
MAX_PAIRS = 100
METHOD = ("cosine similarity of the frozen ImageNet backbone's pooled features (plain view, no augmentation); "
          "a held-out image is a near-duplicate when its most similar training image is at least min_similarity "
          "similar and its cosine distance is at most ratio times the distance to the k-th most similar training "
          "image")


def _unit(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, np.float32).reshape(len(f), -1)
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def nearest(train: np.ndarray, other: np.ndarray, k: int = 1, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``other``: the indices of its ``k`` most similar rows of ``train`` and their
    cosine similarities, most similar first, each (len(other), k) (k capped at len(train)).
    Memory: ``chunk`` x len(train) floats at a time, at most 2**24 (64 MB)."""
    t, o = _unit(train), _unit(other)
    k = max(1, min(k, len(t)))
    chunk = max(1, min(chunk, (1 << 24) // max(1, len(t))))
    idx, sim = np.zeros((len(o), k), np.int64), np.full((len(o), k), -1.0, np.float32)
    if not len(t):
        return idx, sim
    for lo in range(0, len(o), chunk):
        s = o[lo:lo + chunk] @ t.T
        top = np.argpartition(-s, k - 1, axis=1)[:, :k] if k < s.shape[1] else np.tile(np.arange(s.shape[1]),
                                                                                      (len(s), 1))
        ts = np.take_along_axis(s, top, 1)
        order = np.argsort(-ts, axis=1, kind="stable")
        idx[lo:lo + chunk], sim[lo:lo + chunk] = np.take_along_axis(top, order, 1), np.take_along_axis(ts, order, 1)
    return idx, sim


def flag(train: np.ndarray, other: np.ndarray, min_similarity: float = MIN_SIMILARITY, ratio: float = RATIO,
         k: int = K) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(nearest training index, its similarity, near-duplicate?) for each row of ``other``."""
    idx, sim = nearest(train, other, k)
    s1 = sim[:, 0]
    ref = 1.0 - sim[:, -1]  # the distance to the k-th nearest (the farthest of the k when train is smaller)
    dup = (s1 >= min_similarity) & ((1.0 - s1) <= ratio * ref) if len(train) > 1 else s1 >= min_similarity
    return idx[:, 0], s1, dup


def _show(p, root: Path | None) -> str:
    p = Path(p)
    if root is not None:
        try:
            return p.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            pass
    return p.as_posix()


def check(train_paths: Sequence, train_feats: np.ndarray, held_out: Mapping[str, tuple[Sequence, np.ndarray]],
          min_similarity: float = MIN_SIMILARITY, ratio: float = RATIO, k: int = K, root=None) -> dict:
    """Near-duplicates of each held-out split in train. ``held_out``: split name -> (paths, features).
    Returns the record kept in metrics.json: threshold, method, and per split n, count and pairs
    (held-out image, training image, similarity; the most similar first)."""
    base = Path(root) if root is not None else None
    out: dict = {"threshold": min_similarity, "ratio": ratio, "k": k, "method": METHOD, "splits": {}}
    for name, (paths, feats) in held_out.items():
        if not len(paths):
            continue
        j, s, dup = flag(train_feats, feats, min_similarity, ratio, k)
        hit = np.flatnonzero(dup)
        hit = hit[np.argsort(-s[hit], kind="stable")]
        out["splits"][name] = {
            "n": len(paths), "count": int(len(hit)),
            "pairs": [{"image": _show(paths[i], base), "train": _show(train_paths[j[i]], base),
                       "similarity": round(float(s[i]), 4)} for i in hit[:MAX_PAIRS]]}
    return out


def warnings(rec: dict, headline: str | None = None) -> list[str]:
    """One warning line per split with near-duplicates:
    ``warning: 12 of 116 test images have a near-duplicate in train (e.g. val/ants/x.jpg ~ train/ants/y.jpg);
    test accuracy may be optimistic``. ``headline``: the split whose accuracy is the run's headline."""
    lines = []
    splits = rec.get("splits", {})
    for name in sorted(splits, key=lambda n: n != headline):  # the headline's split first
        r = splits[name]
        if not r["count"]:
            continue
        eg = ", ".join(f"{p['image']} ~ {p['train']}" for p in r["pairs"][:EXAMPLES])
        lines.append(f"warning: {r['count']} of {r['n']} {name} images have a near-duplicate in train (e.g. {eg}); "
                     f"{name} accuracy may be optimistic"
                     + (" (it is the headline)" if name == headline else ""))
    return lines
