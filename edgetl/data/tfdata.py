"""Image ingestion and tf.data pipelines.

Training, validation, test and transfer-set images stream through :func:`decode_batches`:
PIL decodes them (tolerant of every format, EXIF orientation, the same resampling as
``edgetl predict``) in a small thread pool, outside tf.data, into fixed-size uint8 batches,
with at most a few batches decoded ahead; nothing holds a whole split. A Python decoder
*inside* tf.data (tf.numpy_function) deadlocked at iterator teardown at 224 px, so Python
never runs inside a tf.data graph here.

:func:`load_array` / :func:`image_dataset` (a whole small set in memory) serve small sets
only: calibration samples, bundles, QAT."""
from __future__ import annotations

import collections
import functools
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from edgetl.data.images import BadImage, load_rgb

DECODE_THREADS = max(2, min(4, os.cpu_count() or 1))  # PIL releases the GIL while it decodes and resizes
DECODE_AHEAD = 3  # batches decoded ahead of the consumer: memory is bounded by (AHEAD + THREADS) batches


@dataclass
class ImageBatch:
    """One batch of :func:`decode_batches`: ``images`` (b, s, s, 3) uint8 at positions
    ``start .. start + b`` of the path list; ``ok[i]`` is False for a file that failed to
    decode (its image is zeros; ``errors`` names it and why)."""
    start: int
    images: np.ndarray
    ok: np.ndarray
    errors: list[tuple[str, str]]


def _decode_chunk(paths: Sequence[str], size: int, resize: str) -> tuple[np.ndarray, np.ndarray, list]:
    out = np.zeros((len(paths), size, size, 3), np.uint8)
    ok = np.ones(len(paths), bool)
    errors = []
    for i, p in enumerate(paths):
        try:
            out[i] = load_rgb(p, size, resize)
        except BadImage as e:
            ok[i] = False
            errors.append((str(p), str(e)))
    return out, ok, errors


def decode_batches(paths: Sequence[str], size: int, resize: str = "crop", batch: int = 64,
                   threads: int | None = None, ahead: int = DECODE_AHEAD) -> Iterator[ImageBatch]:
    """Decode ``paths`` in order, ``batch`` images at a time, through a bounded thread pool.

    Each batch is split in sub-chunks decoded by different threads; at most ``ahead``
    batches are in flight, so memory stays at a few batches whatever the number of paths.
    A file that fails to decode is not fatal: its ``ok`` flag is False."""
    paths = [str(p) for p in paths]
    n = len(paths)
    if n == 0:
        return
    threads = threads or DECODE_THREADS
    sub = max(1, -(-batch // threads))

    def submit(pool, lo):
        hi = min(n, lo + batch)
        return lo, [pool.submit(_decode_chunk, paths[a:min(hi, a + sub)], size, resize) for a in range(lo, hi, sub)]

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="edgetl-decode") as pool:
        pending: collections.deque[tuple[int, list[Future]]] = collections.deque()
        starts = iter(range(0, n, batch))
        for lo in starts:
            pending.append(submit(pool, lo))
            if len(pending) >= ahead:
                break
        while pending:
            lo, futs = pending.popleft()
            parts = [f.result() for f in futs]
            nxt = next(starts, None)
            if nxt is not None:
                pending.append(submit(pool, nxt))
            images = parts[0][0] if len(parts) == 1 else np.concatenate([p[0] for p in parts])
            yield ImageBatch(lo, images, np.concatenate([p[1] for p in parts]), [e for p in parts for e in p[2]])


class DecodeMemo:
    """Decoded batches kept for the next pass over the same files, up to ``budget`` bytes.

    The view cache decodes every training image once per view; the views differ only by the
    augmentation applied after decoding, so later views replay the first view's batches
    instead of decoding again (a JPEG decode costs more than the frozen pass of a small
    backbone on 2 cores). Slices over the budget decode as before: memory stays bounded."""

    def __init__(self, budget: int = 256 << 20):
        self.budget, self.used = budget, 0
        self.kept: dict[tuple, list[ImageBatch]] = {}
        self.hits = 0

    def batches(self, paths: Sequence[str], size: int, resize: str = "crop", batch: int = 64) -> Iterator[ImageBatch]:
        key = (tuple(str(p) for p in paths), size, resize, batch)
        if key in self.kept:
            self.hits += 1
            yield from self.kept[key]
            return
        need = len(paths) * size * size * 3
        keep = self.used + need <= self.budget
        out: list[ImageBatch] = []
        for b in decode_batches(paths, size, resize, batch):
            if keep:
                out.append(b)
            yield b
        if keep:
            self.kept[key] = out
            self.used += need


def augmenter(names, seed: int):
    """A Keras Sequential of random preprocessing layers (identity when empty)."""
    import keras

    L = keras.layers
    table = {
        "flip": lambda s: L.RandomFlip("horizontal", seed=s),
        "rotate": lambda s: L.RandomRotation(0.08, fill_mode="reflect", seed=s),
        "zoom": lambda s: L.RandomZoom(0.15, fill_mode="reflect", seed=s),
        "translate": lambda s: L.RandomTranslation(0.1, 0.1, fill_mode="reflect", seed=s),
        "contrast": lambda s: L.RandomContrast(0.2, seed=s),
    }
    return keras.Sequential([table[n](seed + i) for i, n in enumerate(names)], name="augment")


@functools.lru_cache(maxsize=4)
def _decoded(paths: tuple, img_size: int, resize: str) -> np.ndarray:
    """Decode every image once (PIL, in threads: decoding releases the GIL)."""
    if not paths:
        return np.zeros((0, img_size, img_size, 3), np.uint8)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        arr = np.stack(list(pool.map(lambda p: load_rgb(p, img_size, resize), paths)))
    arr.setflags(write=False)
    return arr


def image_dataset(paths, labels, img_size: int, resize: str = "crop") -> tf.data.Dataset:
    """(uint8 HxWx3, int label) examples in order, decoded once and held in memory.

    Decoding goes through PIL (tolerant of odd files) ahead of tf.data rather than
    inside it: a Python decoder inside a tf.data graph (tf.numpy_function) can
    deadlock when an iterator is torn down while a worker waits for the GIL."""
    x = _decoded(tuple(str(p) for p in paths), int(img_size), resize)
    ds = tf.data.Dataset.from_tensor_slices((x, np.asarray(labels, np.int64)))
    opts = tf.data.Options()
    opts.deterministic = True
    return ds.with_options(opts)


def batches(ds: tf.data.Dataset, batch_size: int, shuffle: bool = False, seed: int = 0,
            augment=None, n: int | None = None, drop_remainder: bool = False) -> tf.data.Dataset:
    """Float32 0-255 batches; ``augment`` is applied to whole batches (training only)."""
    if shuffle:
        ds = ds.shuffle(max(n or 1024, 1), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder).map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE)
    if augment is not None and len(augment.layers):
        ds = ds.map(lambda x, y: (tf.clip_by_value(augment(x, training=True), 0.0, 255.0), y),
                    num_parallel_calls=1)
    return ds.prefetch(tf.data.AUTOTUNE)


def load_array(paths, img_size: int, resize: str = "crop") -> np.ndarray:
    """All images as one uint8 array (N, H, W, 3), decoded like the training data."""
    return np.array(_decoded(tuple(str(p) for p in paths), int(img_size), resize))
