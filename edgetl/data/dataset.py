"""Scan a folder of images: classes, usable files, skipped files and the split.

Layouts: ``DATA/<class>/<images>`` (a seeded, stratified validation split is
made), or ``DATA/train/<class>/...`` and ``DATA/val/<class>/...`` (optionally
``DATA/test/...``). Images in subfolders of a class folder (``DATA/cat/2019/...``)
belong to that class; ``Dataset.nested`` lists those subfolders so callers can warn."""
from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgetl import escape
from edgetl.data.images import BadImage, open_rgb
from edgetl.errors import EdgetlError
from edgetl.types import PathLike

SPLIT_DIRS = ("train", "val", "test")


@dataclass
class Split:
    paths: list[str]
    labels: np.ndarray  # int class indices

    def __len__(self) -> int:
        return len(self.paths)

    def counts(self, n_classes: int) -> list[int]:
        return np.bincount(self.labels, minlength=n_classes).tolist()


@dataclass
class Dataset:
    root: Path
    classes: list[str]
    train: Split
    val: Split
    test: Split | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    layout: str = "folders"  # or "train/val"
    test_source: str | None = None  # "test/" (a folder), "carved ..." (from the training pool) or None
    nested: list[tuple[str, int]] = field(default_factory=list)  # (subfolder of a class folder, images used)

    @property
    def held_out(self) -> Split:
        """The split used to score models: test when given, else val."""
        return self.test if self.test is not None and len(self.test) else self.val

    def summary(self) -> dict:
        k = len(self.classes)
        return {
            "root": str(self.root),
            "layout": self.layout,
            "classes": self.classes,
            "train_counts": self.train.counts(k),
            "val_counts": self.val.counts(k),
            "test_counts": self.test.counts(k) if self.test is not None else None,
            "test_source": self.test_source,
            "skipped": [{"file": f, "reason": r} for f, r in self.skipped],
            "nested": [{"folder": f, "images": n} for f, n in self.nested],
        }

    def imbalance(self) -> float:
        c = np.asarray(self.train.counts(len(self.classes)), float)
        return float(c.max() / max(c.min(), 1))

    def fingerprint(self) -> str:
        """Hash of every used file's relative path and content."""
        h = hashlib.sha256()
        for split in (self.train, self.val, self.test):
            if split is None:
                continue
            for p, y in sorted(zip(split.paths, split.labels.tolist())):
                h.update(f"{Path(p).relative_to(self.root)}|{y}|".encode())
                h.update(hashlib.sha256(Path(p).read_bytes()).digest())
        return h.hexdigest()


def files_below(folder: Path) -> list[Path]:
    """Every candidate file below ``folder`` (any depth), sorted; hidden files and everything in
    hidden folders (``.ipynb_checkpoints``, ``.thumbnails``, ``.git``: copies and caches, not
    photos) are passed over."""
    folder = Path(folder)
    return [p for p in sorted(folder.rglob("*"))
            if not any(part.startswith(".") for part in p.relative_to(folder).parts) and p.is_file()]


PARALLEL_MIN = 2000  # below this many files, checking in this process is as fast as starting workers (measured)
CHECK_CHUNK = 64


def _check_chunk(paths: list[str]) -> list[str | None]:
    """Why each file is unusable (None: usable). Every byte is decoded, at a reduced JPEG
    scale (libjpeg's DCT scaling) where the image allows: truncation is still caught."""
    out: list[str | None] = []
    for p in paths:
        try:
            open_rgb(p, min_size=64)
            out.append(None)
        except BadImage as e:
            out.append(str(e))
    return out


def check_images(paths, workers: int | None = None) -> list[str | None]:
    """:func:`_check_chunk` over ``paths`` in worker processes (Pillow holds the GIL for part
    of its decoding, so threads would not scale), in order. Only paths go out and only
    reasons come back: no pixels are kept."""
    paths = [str(p) for p in paths]
    workers = workers or min(8, os.cpu_count() or 1)
    if len(paths) < PARALLEL_MIN or workers < 2:
        return _check_chunk(paths)
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    chunks = [paths[i:i + CHECK_CHUNK] for i in range(0, len(paths), CHECK_CHUNK)]
    # forkserver: the workers start from a clean process, not a fork of one that may hold
    # TensorFlow's threads
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("forkserver")) as pool:
        return [r for part in pool.map(_check_chunk, chunks) for r in part]


def readable_images(folder) -> list[Path]:
    """Readable images below ``folder`` (any depth, no labels), sorted; others are passed over."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    files = [p for p in files_below(folder) if p.suffix.lower() not in (".json", ".md", ".txt", ".yaml")]
    return [p for p, why in zip(files, check_images(files)) if why is None]


def same_images(files, others) -> list[tuple[str, str]]:
    """(file, other) pairs whose bytes are identical (by SHA-256): a set that must not share
    images with a held-out split checks itself with this."""
    from edgetl.artifacts import sha256_file

    held = {sha256_file(f): str(f) for f in others if Path(f).exists()}
    return [(str(f), held[h]) for f in files if (h := sha256_file(f)) in held]


def class_name_problem(name: str) -> str | None:
    """Why a class folder's name cannot be a label (None: it can). A label is one line of
    labels.txt and one row of every table: a name with a line break, a control character,
    no visible character or bytes that are not UTF-8 would change the label count or the
    labels' order silently."""
    import unicodedata

    if not escape.is_utf8(name):
        return "is not valid UTF-8"
    if not name.strip():
        return "is empty or only whitespace"
    for c in name:
        cat = unicodedata.category(c)
        if c in "\n\r" or cat in ("Zl", "Zp"):
            return f"holds a line break ({c!r}, U+{ord(c):04X})"
        if cat == "Cc":
            return f"holds a control character (U+{ord(c):04X})"
    return None


def check_class_names(folder: Path, names: list[str]) -> None:
    """Refuse (one line, exit 2) the first class folder whose name cannot be a label."""
    for name in names:
        why = class_name_problem(name)
        if why is not None:
            shown = repr(name) if escape.is_utf8(name) else escape.shown(name)
            raise EdgetlError(f"{escape.path(folder)}: the class folder {shown} {why}; class names "
                              f"are the model's labels, one per line of labels.txt: rename the folder")


def _scan_classes(folder: Path, strict: bool, skipped: list, classes: list[str] | None = None,
                  nested: list | None = None):
    """Return {class: [usable paths]} for a class-per-folder directory.

    Images in subfolders of a class folder (``cat/2019/...``) belong to that class; each
    such subfolder is appended to ``nested`` as (folder, usable images) for a warning."""
    if not folder.is_dir():
        raise EdgetlError(f"{folder}: not a folder; give a folder with one sub-folder of images per class")
    names = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    check_class_names(folder, names)
    if classes is not None:
        extra = sorted(set(names) - set(classes))
        if extra:
            raise EdgetlError(f"{folder}: classes {extra} are not in train/; use the same class folders in every split")
        names = classes
    out = {}
    listed = {name: files_below(folder / name) if (folder / name).is_dir() else [] for name in names}
    for name in names:  # a file name that is not UTF-8 cannot be written to split.json or shown: passed over
        bad = [p for p in listed[name] if not escape.is_utf8(str(p))]
        skipped += [(escape.path(p), "the file name is not valid UTF-8; rename the file to use it") for p in bad]
        listed[name] = [p for p in listed[name] if escape.is_utf8(str(p))]
    every = [p for name in names for p in listed[name]]
    reasons = dict(zip(every, check_images(every)))  # all classes' files in one parallel pass
    for name in names:
        good = []
        for p in listed[name]:
            why = reasons[p]
            if why is None:
                good.append(str(p))
            elif strict:
                raise EdgetlError(f"{p}: {why}; remove or fix the file (or drop --strict to skip it)")
            else:
                skipped.append((str(p), why))
        out[name] = good
        if nested is not None:
            subs = Counter(Path(p).relative_to(folder / name).parts[0] for p in good
                           if Path(p).parent != folder / name)
            nested += [(str(folder / name / d), n) for d, n in sorted(subs.items())]
    return out


AUTO_TEST_FRACTION = 0.15   # --test-split auto: this fraction of each class ...
AUTO_TEST_MIN = 10          # ... when every class then gets at least this many test images


def auto_test_split(counts: list[int]) -> float:
    """The default rule: carve AUTO_TEST_FRACTION as a test split when every class keeps at
    least AUTO_TEST_MIN test images; else none (too few images to spare)."""
    return AUTO_TEST_FRACTION if counts and min(counts) * AUTO_TEST_FRACTION >= AUTO_TEST_MIN else 0.0


def scan(root: PathLike, val_split: float = 0.2, seed: int = 42, strict: bool = False, min_per_class: int = 2,
         test_split: float | None = None) -> Dataset:
    """Scan ``root`` and return the classes, splits and skipped files.

    The test split is ``DATA/test/`` when it exists; otherwise ``test_split`` of each class
    is carved (seeded, stratified) from the training pool: the images of DATA/<class>/, or
    DATA/train/ when DATA has train/ and val/. ``test_split=None`` applies the default rule
    (:func:`auto_test_split`), 0 carves none. Validation images are never carved into test.

    Raises EdgetlError (exit code 2) for an empty folder, a single class, or a
    class with fewer than ``min_per_class`` usable images."""
    root = Path(root).expanduser()
    if not escape.is_utf8(str(root)):
        raise EdgetlError(f"{escape.path(root)}: the data folder's path is not valid UTF-8; rename the folder "
                          "(or link it under a UTF-8 name)")
    if not root.exists():
        raise EdgetlError(f"{root}: no such folder; give the folder that holds one sub-folder of images per class")
    if not root.is_dir():
        raise EdgetlError(f"{root}: not a folder; give the folder that holds one sub-folder of images per class")
    skipped: list[tuple[str, str]] = []
    nested: list[tuple[str, int]] = []
    subdirs = {d.name for d in root.iterdir() if d.is_dir()}
    if {"train", "val"} <= subdirs:
        train_map = _scan_classes(root / "train", strict, skipped, nested=nested)
        _check_classes(root / "train", train_map, min_per_class)
        classes = list(train_map)
        val_map = _scan_classes(root / "val", strict, skipped, classes, nested)
        test_map = _scan_classes(root / "test", strict, skipped, classes, nested) if "test" in subdirs else None
        if sum(len(v) for v in val_map.values()) == 0:
            raise EdgetlError(f"{root / 'val'}: no usable images; put validation images in val/<class>/")
        test_from = "test/"
        if not test_map:
            train_map, test_map, test_from = _carve_test(train_map, classes, test_split, seed)
        ds = Dataset(root, classes, _to_split(train_map, classes), _to_split(val_map, classes),
                     _to_split(test_map, classes) if test_map else None, skipped, "train/val")
        ds.test_source = test_from if test_map else None
    else:
        cmap = _scan_classes(root, strict, skipped, nested=nested)
        _check_classes(root, cmap, min_per_class)
        classes = list(cmap)
        if not 0.0 < val_split < 1.0:
            raise EdgetlError(f"--val-split {val_split}: must be between 0 and 1 (exclusive)")
        cmap, test_map, test_from = _carve_test(cmap, classes, test_split, seed)
        train, val = _stratified_split(cmap, classes, val_split, seed)
        ds = Dataset(root, classes, train, val, _to_split(test_map, classes) if test_map else None, skipped,
                     "folders")
        ds.test_source = test_from if test_map else None
    ds.nested = [(str(Path(f).relative_to(root)), n) for f, n in nested]
    return ds


def _carve_test(cmap: dict, classes: list[str], fraction: float | None, seed: int):
    """(remaining pool, test map or None, how it was chosen) — a seeded, stratified test split."""
    counts = [len(cmap[c]) for c in classes]
    rule = "auto" if fraction is None else "given"
    f = auto_test_split(counts) if fraction is None else fraction
    if f <= 0:
        return cmap, None, None
    if not 0.0 < f < 1.0:
        raise EdgetlError(f"--test-split {f}: must be in [0, 1)")
    rng = np.random.default_rng([seed, 7])  # its own stream: the val split's draws are unchanged
    pool, test = {}, {}
    for c in classes:
        files = list(cmap[c])
        n = min(max(1, int(round(len(files) * f))), len(files) - 2)  # keep >= 2 for train and val
        order = rng.permutation(len(files))
        test[c] = sorted(files[k] for k in order[:max(n, 0)])
        pool[c] = [files[k] for k in sorted(order[max(n, 0):])]
    return pool, test, f"carved {f:g} of each class ({rule}, seed {seed})"


def _check_classes(folder: Path, cmap: dict, min_per_class: int) -> None:
    if not cmap or sum(len(v) for v in cmap.values()) == 0:
        raise EdgetlError(f"{folder}: no images found; expected {folder}/<class>/<image files>")
    if len(cmap) < 2:
        only = next(iter(cmap))
        raise EdgetlError(f"{folder}: only one class ('{only}'); a classifier needs at least 2 class folders")
    for name, files in cmap.items():
        if len(files) < min_per_class:
            raise EdgetlError(
                f"{folder / name}: class '{name}' has {len(files)} usable image(s); "
                f"each class needs at least {min_per_class}"
            )


def _to_split(cmap: dict, classes: list[str]) -> Split:
    paths, labels = [], []
    for i, c in enumerate(classes):
        paths += cmap.get(c, [])
        labels += [i] * len(cmap.get(c, []))
    return Split(paths, np.asarray(labels, dtype=np.int64))


def _stratified_split(cmap: dict, classes: list[str], val_split: float, seed: int) -> tuple[Split, Split]:
    rng = np.random.default_rng(seed)
    tr_p: list[str] = []
    tr_y: list[int] = []
    va_p: list[str] = []
    va_y: list[int] = []
    for i, c in enumerate(classes):
        files = list(cmap[c])
        order = rng.permutation(len(files))
        n_val = min(max(1, int(round(len(files) * val_split))), len(files) - 1)
        for j, k in enumerate(order):
            (va_p if j < n_val else tr_p).append(files[k])
            (va_y if j < n_val else tr_y).append(i)
    return (Split(tr_p, np.asarray(tr_y, np.int64)), Split(va_p, np.asarray(va_y, np.int64)))


def class_weights(ds: Dataset) -> dict[int, float]:
    """Balanced class weights, n / (k * count_c)."""
    c = np.asarray(ds.train.counts(len(ds.classes)), float)
    w = c.sum() / (len(c) * np.maximum(c, 1))
    return {i: float(x) for i, x in enumerate(w)}
