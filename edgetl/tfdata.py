"""tf.data pipelines: decoded (tolerant, through PIL) and resized images held in memory; augment
(Keras preprocessing layers, training batches only), batch, prefetch."""
from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tensorflow as tf

from edgetl.images import load_rgb


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
