"""tf.data pipelines: decode (tolerant, through PIL), resize, cache, augment
(Keras preprocessing layers, training batches only), batch, prefetch."""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from edgetl.images import load_rgb

AUGMENTATIONS = ("flip", "rotate", "zoom", "translate", "contrast")


def parse_augment(spec: str | list | tuple | None) -> tuple[str, ...]:
    from edgetl.errors import EdgetlError

    if spec is None or spec == "default":
        return AUGMENTATIONS
    if isinstance(spec, str):
        spec = [s.strip() for s in spec.split(",") if s.strip()]
    spec = tuple(spec)
    if spec in ((), ("none",)):
        return ()
    bad = [s for s in spec if s not in AUGMENTATIONS]
    if bad:
        raise EdgetlError(f"--augment {','.join(spec)}: unknown '{bad[0]}'; use none or a list of {','.join(AUGMENTATIONS)}")
    return spec


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


def image_dataset(paths, labels, img_size: int, resize: str = "crop") -> tf.data.Dataset:
    """Decoded, resized, cached (uint8 HxWx3, int label) examples, in order."""
    paths = [str(p) for p in paths]

    def _load(p):
        return load_rgb(p.decode("utf-8"), img_size, resize)

    def _map(p, y):
        img = tf.numpy_function(_load, [p], tf.uint8, stateful=False)
        img.set_shape((img_size, img_size, 3))
        return img, y

    ds = tf.data.Dataset.from_tensor_slices((tf.constant(paths, tf.string), tf.constant(np.asarray(labels), tf.int64)))
    opts = tf.data.Options()
    opts.deterministic = True
    ds = ds.with_options(opts)
    return ds.map(_map, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).cache()


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


def load_array(paths, img_size: int, resize: str = "crop", batch_size: int = 64) -> np.ndarray:
    """All images as one uint8 array (N, H, W, 3), through the same pipeline."""
    ds = image_dataset(paths, np.zeros(len(paths), np.int64), img_size, resize).batch(batch_size)
    out = [x.numpy() for x, _ in ds]
    return np.concatenate(out) if out else np.zeros((0, img_size, img_size, 3), np.uint8)
