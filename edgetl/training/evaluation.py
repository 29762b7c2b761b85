"""Evaluation of a trained classifier on the run's splits: class probabilities of a split
(:meth:`Evaluator.predict_split`), validation scores (what selection uses), test scores (once
every choice is made), and held-out images with a near-duplicate in train."""
from __future__ import annotations

import numpy as np

from edgetl.config import TrainConfig
from edgetl.data.dataset import Dataset
from edgetl.training.cache import extract_batch
from edgetl.types import Echo


class Evaluator:
    """Scores ``model`` (its current weights) on the splits of ``ds``."""

    def __init__(self, cfg: TrainConfig, ds: Dataset, model, extractor, n_features: int, echo: Echo):
        import tensorflow as tf

        self.cfg, self.ds, self.model, self.extractor, self.n_features, self.echo = \
            cfg, ds, model, extractor, n_features, echo
        size = cfg.size
        self.predict_fn = tf.function(lambda x: model(x, training=False), autograph=False,
                                      input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])

    def predict_split(self, split) -> np.ndarray:
        """Class probabilities of ``split``'s images, streamed in batches. A file that no longer
        decodes is named, skipped and removed from the split (its label with it)."""
        import tensorflow as tf

        from edgetl.data.tfdata import decode_batches

        out, bad = [], []
        for b in decode_batches(split.paths, self.cfg.size, self.cfg.resize, extract_batch(self.cfg)):
            out.append(self.predict_fn(tf.convert_to_tensor(b.images.astype(np.float32))).numpy()[b.ok])
            bad += b.errors
        if bad:
            gone = {f for f, _ in bad}
            for f, why in bad:
                self.echo(f"warning: {f}: {why}; skipped")
            self.ds.skipped += bad
            keep = [i for i, p in enumerate(split.paths) if str(p) not in gone]
            split.paths, split.labels = [split.paths[i] for i in keep], np.asarray(split.labels)[keep]
        logits = np.concatenate(out) if out else np.zeros((0, len(self.ds.classes)), np.float32)
        e = np.exp(logits - logits.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    def evaluate(self) -> dict:
        """Scores on the validation split: what model selection uses."""
        from edgetl.runtime.evaluate import classification_metrics

        ds = self.ds
        return {**classification_metrics(ds.val.labels, self.predict_split(ds.val), ds.classes), "split": "val"}

    def evaluate_test(self) -> dict | None:
        """Scores of the selected model on the test split, once every choice is made."""
        from edgetl.runtime.evaluate import classification_metrics

        ds = self.ds
        if ds.test is None or not len(ds.test):
            return None
        return {**classification_metrics(ds.test.labels, self.predict_split(ds.test), ds.classes),
                "split": "test", "source": ds.test_source}

    def near_duplicates(self, cache) -> dict | None:
        """Held-out images (val, test) with a near-duplicate in train, on the frozen backbone's
        features: the view cache's plain view of the training images and of val, and the same
        features of the test images (one pass of the frozen extractor). See :mod:`edgetl.data.duplicates`."""
        from edgetl.data import duplicates
        from edgetl.data.tfdata import decode_batches
        from edgetl.data.viewcache import Rows

        if cache is None:
            return None
        ds, cfg = self.ds, self.cfg

        def cached(part: str, source: str, paths) -> tuple[list, np.ndarray]:
            shards = [sh for sh in cache.part(part) if sh.view == 0 and sh.source == source]
            if not shards:
                return [], np.zeros((0, self.n_features), np.float32)
            f = np.concatenate([np.load(cache.path(sh, "feats"), mmap_mode="r") for sh in shards])
            rows = Rows.from_meta(np.concatenate([np.load(cache.path(sh, "meta"), mmap_mode="r") for sh in shards]))
            return [paths[i] for i in rows.image[rows.ok]], np.asarray(f[rows.ok], np.float32)

        train_paths, train_feats = cached("train", "train", list(ds.train.paths))
        held = {"val": cached("val", "val", list(ds.val.paths))}
        if ds.test is not None and len(ds.test):
            paths, feats = [], []
            for b in decode_batches(ds.test.paths, cfg.size, cfg.resize, extract_batch(cfg)):
                if b.ok.any():
                    feats.append(self.extractor(b.images[b.ok].astype(np.float32), training=False).numpy())
                    paths += [p for p, ok in zip(ds.test.paths[b.start:b.start + len(b.ok)], b.ok) if ok]
            held["test"] = (paths, np.concatenate(feats) if feats else np.zeros((0, self.n_features), np.float32))
        rec = duplicates.check(train_paths, train_feats, held, root=cfg.data)
        headline = "test" if "test" in held else "val"
        for line in duplicates.warnings(rec, headline):
            self.echo(line)
        return rec
