"""What each training epoch reads, as a function of ``(seed, epoch)`` alone: a resumed run
reads epoch k exactly as the uninterrupted run did (:class:`edgetl.training.callbacks.EpochKey` sets
the epoch; :meth:`edgetl.data.viewcache.ViewCache.dataset` builds its pipelines from these)."""
from __future__ import annotations

from collections.abc import Callable


def epoch_order(seed, epoch, n, take=None):
    """The first ``take`` (None: all) of a permutation of ``range(n)`` that depends on ``(seed,
    epoch)`` alone, in TensorFlow ops (``epoch`` may be a tensor): nothing a run did before, or
    whether it was resumed, changes an epoch's order."""
    import tensorflow as tf

    key = tf.stack([tf.constant(int(seed), tf.int64), tf.cast(epoch, tf.int64)])
    order = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), seed=key)
    return order if take is None else order[:take]


def epoch_rows(records: Callable, n_shards: int, seed, epoch, buffer: int):
    """One training epoch's rows, in the order it reads them: the shards in the order
    :func:`epoch_order` gives, four read interleaved (``records(order, cycle)``: their usable
    rows), then a ``buffer``-row shuffle seeded by ``(seed, epoch)``. The one place that
    decides what an epoch reads: a resumed run reads epoch k exactly as the uninterrupted run."""
    import tensorflow as tf

    rows = records(epoch_order(seed, epoch, n_shards), min(4, max(1, n_shards)))
    buffer_seed = tf.constant(int(seed) * 1_000_003 + 1, tf.int64) + tf.cast(epoch, tf.int64) * 7919
    return rows.shuffle(buffer, seed=buffer_seed, reshuffle_each_iteration=False)


def epoch_keys(seed, repeat: bool, epoch=None):
    """The epochs a shuffled pipeline's iterator reads, as a dataset of keys: 0, 1, 2, ...
    (``repeat``), the one in ``epoch`` (a ``tf.Variable`` training sets at each epoch's start),
    or one drawn per iterator from ``seed`` (the same sequence in every run)."""
    import tensorflow as tf

    plain = tf.autograph.experimental.do_not_convert
    if repeat:
        return tf.data.Dataset.counter()
    if epoch is not None:
        return tf.data.Dataset.range(1).map(plain(lambda _: tf.cast(epoch.read_value(), tf.int64)))
    return tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)
