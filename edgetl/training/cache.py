"""Building the view cache: where the base is cut (:class:`CutPlan`), the cache's layout, shards
and key (:class:`ViewPlan`), the mixup plan, and the frozen prefix run once over every view of
the training images (and the method's extra images) and over the validation images
(:class:`CacheBuilder`). A resumed run reuses every finished shard; multi-worker runs split the
shards and wait for each other's."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgetl import backbones, rundir
from edgetl.config import TrainConfig, parse_augment
from edgetl.training import recipe
from edgetl.training.methods import Method
from edgetl.training.setup import Built, Prepared
from edgetl.types import Echo


@dataclass
class CutPlan:
    """The phase-2 candidates and the cut before the deepest one: everything before the cut
    stays frozen in both phases (``cut_tensor`` None: the graph cannot be cut there, the cache
    holds the views' images instead)."""
    candidates: list
    deepest: Any
    to_train: list
    cut_tensor: Any = None
    cut_layer: str | None = None
    prefix: Any = None
    suffix: Any = None


@dataclass
class ViewPlan:
    layout: Any
    shards: list
    key: str
    cache_dir: Path


@dataclass
class CachedViews:
    cache: Any
    stats: dict
    seconds: float


def plan_cut(cfg: TrainConfig, bb, base, strategy) -> CutPlan:
    """Split the base at the start of the first unit that phase 2 trains.

    Everything before the cut stays frozen in both phases, so its output is
    computed once per image and cached view; phase 1 trains the head on the
    pooled features of the frozen suffix, phase 2 trains the suffix and head on
    the cached activations."""
    import keras

    candidates = recipe.candidates(base, bb, cfg)
    deepest = max(candidates, key=lambda c: len(c.layers))
    plan = CutPlan(candidates, deepest, deepest.layers)  # the cut serves every candidate: before the deepest one
    if plan.to_train:
        first = plan.to_train[0]
        for _, layers in backbones.units(base, bb):
            if first in layers:
                first = layers[0]
                break
        try:
            cut = first.input
            if isinstance(cut, (list, tuple)) or cut is base.inputs[0]:
                raise ValueError("no single tensor before the first trained unit")
            with strategy.scope():
                suffix = keras.Model(cut, base.output, name="trained_suffix")
                prefix = keras.Model(base.inputs, cut, name="frozen_prefix")
            plan.cut_tensor, plan.cut_layer, plan.prefix, plan.suffix = cut, first.name, prefix, suffix
        except Exception:  # graph can't be cut there: the cache holds the views' images instead
            plan.cut_tensor = None
    return plan


def n_views(cfg: TrainConfig) -> int:
    return cfg.views if parse_augment(cfg.augment) else 1


def extract_batch(cfg: TrainConfig) -> int:
    return max(cfg.batch_size, 64)  # inference only: larger batches use the CPU better


def cache_layout(cfg: TrainConfig, cut: CutPlan, n_features: int, teacher_dim: int):
    """What each cached row holds: pooled features; for phase 2 the activations at the cut
    (or, where the graph cannot be cut, the view's image itself, uint8)."""
    from edgetl.data.viewcache import Layout

    if not cfg.epochs_finetune or not cut.to_train:
        act_shape, act_dtype = None, cfg.cache_dtype
    elif cut.cut_tensor is not None:
        act_shape, act_dtype = tuple(int(d) for d in cut.cut_tensor.shape[1:]), cfg.cache_dtype
    else:
        act_shape, act_dtype = (cfg.size, cfg.size, 3), "uint8"
    return Layout(act_shape, n_features, teacher_dim, cfg.cache_dtype, act_dtype)


def plan_views(cfg: TrainConfig, method: Method, ds, cut: CutPlan, n_features: int, run_dir: Path,
               ckpt: Path) -> ViewPlan:
    """The view cache's layout, shards, folder and key; refuses a cache over the disk
    budget before anything is written."""
    from edgetl.data import viewcache as V

    layout = cache_layout(cfg, cut, n_features, method.teacher_dim())
    views = n_views(cfg)
    shards = V.plan(len(ds.train), len(method.extra_paths()), len(ds.val), views,
                    V.shard_rows_for(layout, batch=extract_batch(cfg)))
    cache_dir = (Path(cfg.cache_dir) / f"{run_dir.name}.{rundir.VIEW_CACHE}" if cfg.cache_dir
                 else ckpt / rundir.VIEW_CACHE)
    key = V.ViewCache.make_key(
        layout=layout, shards=len(shards), seed=cfg.seed, views=views, mixup=cfg.mixup,
        augment=parse_augment(cfg.augment), size=cfg.size, view_size=method.view_size(cfg.size), resize=cfg.resize,
        backbone=cfg.backbone, alpha=cfg.alpha, weights=cfg.weights, cut=cut.cut_layer,
        train=V.ViewCache.make_key(p=list(ds.train.paths), y=ds.train.labels.tolist()),
        extra=V.ViewCache.make_key(p=method.extra_paths()), val=V.ViewCache.make_key(p=list(ds.val.paths)),
        teacher=method.teacher_key())
    have = sum(f.stat().st_size for f in cache_dir.rglob("*.npy")) if cache_dir.exists() else 0
    V.check_budget(cache_dir, V.estimate_bytes(layout, shards), cfg.cache_budget, have)
    return ViewPlan(layout, shards, key, cache_dir)


def mix_plan(cfg: TrainConfig, n: int) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """Per view: (partner of each of the ``n`` training images, weight lam) for mixup views, else
    None. Drawn from the seed alone, so any shard can be (re)made on its own."""
    rng = np.random.default_rng(cfg.seed + 7)
    out: list[tuple[np.ndarray, np.ndarray] | None] = []
    for v in range(n_views(cfg)):
        if v > 0 and cfg.mixup > 0:
            partner = rng.permutation(n)
            lam = np.maximum(rng.beta(cfg.mixup, cfg.mixup, n), 0.5).astype(np.float32)
            out.append((partner, lam))
        else:
            out.append(None)
    return out


class CacheBuilder:
    """Makes (or reuses) the view cache of one run: see the module's docstring."""

    def __init__(self, cfg: TrainConfig, bb, method: Method, p: Prepared, built: Built, cut: CutPlan,
                 plan: ViewPlan, run_dir: Path, ckpt: Path, echo: Echo):
        self.cfg, self.bb, self.method, self.p, self.built = cfg, bb, method, p, built
        self.cut, self.plan, self.run_dir, self.ckpt, self.echo = cut, plan, run_dir, ckpt, echo

    def my_shards(self, shards):
        """The shards this worker extracts (all of them on one machine)."""
        return shards[self.p.worker_index::self.p.num_workers]

    def cached_views(self) -> CachedViews:
        """The view cache: frozen-prefix outputs of every training view and of the validation
        images, computed once, on disk (a resumed run reuses every finished shard)."""
        from edgetl.data.viewcache import ViewCache
        from edgetl.progress import fmt_bytes

        p, ds, echo = self.p, self.p.ds, self.echo
        layout, shards, key, cache_dir = self.plan.layout, self.plan.shards, self.plan.key, self.plan.cache_dir
        if p.num_workers > 1:  # before any work: every worker must see the others on the shared storage
            from edgetl.training import distributed

            distributed.announce(self.ckpt / rundir.WORKERS, p.worker_index, p.num_workers, "--out", echo,
                                 distributed.peer_timeout())
            if self.cfg.cache_dir:
                distributed.announce(cache_dir.parent / f"{self.run_dir.name}.{rundir.WORKERS}", p.worker_index,
                                     p.num_workers, "--cache-dir", echo, distributed.peer_timeout())
        if not p.is_chief:  # the chief creates (or clears) the shared cache folder
            from edgetl.training import distributed

            distributed.wait_for(lambda: 0 if distributed.key_ready(cache_dir, key) else 1,
                                 f"{cache_dir}: the chief's view cache", echo, distributed.shard_timeout())
        cache = ViewCache.open(cache_dir, layout, shards, key, writer=p.is_chief, echo=echo)
        mine = self.my_shards(shards)
        todo = cache.missing(mine)
        if cache.reused:
            echo(f"phase 1: view cache: reusing {cache.reused} of {len(shards)} finished shards in {cache_dir}")
        t0 = time.perf_counter()
        if todo:
            echo(f"phase 1: frozen base over {sum(s.rows for s in todo):,} views and val images "
                 f"({len(todo)} shard(s)) into {cache_dir}")
            self.extract(cache, todo, done_rows=sum(s.rows for s in mine) - sum(s.rows for s in todo),
                         total_rows=sum(s.rows for s in mine))
        self.wait_for_shards(cache)
        cache.rows("train"), cache.rows("val")  # the small per-row columns stay in memory
        seconds = time.perf_counter() - t0
        stats = {"dir": str(cache_dir), "shards": len(shards), "reused": cache.reused,
                 "written": cache.written, "written_rows": sum(s.rows for s in todo),
                 "disk_bytes": cache.disk_bytes(), "dtype": layout.dtype,
                 "act_shape": list(layout.act_shape) if layout.act_shape else None,
                 "rows": sum(s.rows for s in cache.part("train")), "val_rows": len(ds.val)}
        who = f" (worker {p.worker_index} of {p.num_workers})" if p.num_workers > 1 else ""
        echo(f"phase 1: view cache ready: {stats['rows']:,} training views + {len(ds.val):,} val "
             f"images, {fmt_bytes(stats['disk_bytes'])} on disk ({layout.dtype}), "
             f"{cache.written} shard(s) / {stats['written_rows']:,} rows written here{who}, "
             f"{cache.reused} reused")
        return CachedViews(cache, stats, seconds)

    def wait_for_shards(self, cache) -> None:
        """Multi-worker: wait until every worker's shards are on the shared storage."""
        if self.p.num_workers > 1:
            from edgetl.training import distributed

            distributed.wait_for(lambda: len(cache.missing()), f"{self.plan.cache_dir}: view cache shards",
                                 self.echo, distributed.shard_timeout(), gone=distributed.peer_health(self.p.strategy))

    def encoder(self, size: int):
        """The traced function from a batch of views (0-255, ``size`` px) to (cached activations
        or images, pooled features)."""
        import tensorflow as tf

        cfg, cut = self.cfg, self.cut
        spec = [tf.TensorSpec([None, size, size, 3], tf.float32)]

        def to_input(x):
            return tf.image.resize(x, (cfg.size, cfg.size), antialias=True) if size != cfg.size else x

        if cut.cut_tensor is not None:
            from edgetl.nets.layers import Preprocess

            pre = Preprocess(self.bb.preprocess)

            def encode_at_cut(x):
                x = to_input(x)
                a = cut.prefix(pre(x), training=False)
                return a, tf.reduce_mean(cut.suffix(a, training=False), axis=(1, 2))

            encode_fn = encode_at_cut
        else:
            extractor = self.built.extractor

            def encode_whole(x):
                x = to_input(x)
                return tf.clip_by_value(x, 0.0, 255.0), extractor(x, training=False)

            encode_fn = encode_whole
        # traced once; plain TensorFlow ops, nothing for AutoGraph to convert
        return tf.function(encode_fn, input_signature=spec, autograph=False)

    def extract(self, cache, todo, done_rows: int = 0, total_rows: int | None = None) -> None:
        """Run the frozen layers over the views of the shards in ``todo`` and write each shard."""
        import tensorflow as tf

        from edgetl.data.tfdata import DecodeMemo, augmenter, decode_batches
        from edgetl.data.viewcache import meta_rows
        from edgetl.progress import Throughput, fmt_bytes

        cfg, ds, method, echo = self.cfg, self.p.ds, self.method, self.echo
        memo = DecodeMemo()  # later views replay the first view's decoded batches (augmentation comes after)
        layout = cache.layout
        aug = augmenter(parse_augment(cfg.augment), cfg.seed)
        size = method.view_size(cfg.size)
        spec = [tf.TensorSpec([None, size, size, 3], tf.float32)]
        encode = self.encoder(size)
        augmented = tf.function(lambda x: tf.clip_by_value(aug(x, training=True), 0.0, 255.0), input_signature=spec,
                                autograph=False)
        gens = [layer.generator for layer in aug.layers if hasattr(layer, "generator")]
        bs = extract_batch(cfg)
        train_paths, labels = list(ds.train.paths), np.asarray(ds.train.labels)
        sources = {"train": train_paths, "extra": method.extra_paths(), "val": list(ds.val.paths)}
        mix = mix_plan(cfg, len(ds.train))
        total = total_rows if total_rows is not None else sum(s.rows for s in todo)
        meter = Throughput("phase 1: frozen base over the views", total, echo, unit="img", start=done_rows)
        done = done_rows
        views = n_views(cfg)
        for s in todo:
            for j, g in enumerate(gens):  # augmentation seeded per shard: any shard can be redone alone
                g.state.assign(np.array([cfg.seed * 1_000_003 + s.index * 101 + j + (s.part == "val") * 7919, 0],
                                        np.int64))
            paths = sources[s.source][s.lo:s.hi]
            plan = mix[s.view] if s.source == "train" else None
            mixed = plan is not None
            partner = plan[0][s.lo:s.hi] if plan is not None else np.arange(s.lo, s.hi)
            lam = plan[1][s.lo:s.hi] if plan is not None else np.ones(s.rows, np.float32)
            pstream = decode_batches([train_paths[i] for i in partner], size, cfg.resize, bs) if mixed else None
            cols: dict[str, list] = {"feats": [], "acts": [], "teacher": []}
            oks = []
            for b in memo.batches(paths, size, cfg.resize, bs):
                for f, why in b.errors:
                    echo(f"warning: {f}: {why}; skipped")
                    ds.skipped.append((f, why))
                imgs = tf.convert_to_tensor(b.images.astype(np.float32))
                ok = b.ok
                if s.view > 0:
                    imgs = augmented(imgs)
                if pstream is not None:
                    pb = next(pstream)
                    w = lam[b.start:b.start + len(b.ok), None, None, None]
                    imgs = w * imgs + (1.0 - w) * augmented(tf.convert_to_tensor(pb.images.astype(np.float32)))
                    ok = ok & pb.ok
                extra = method.sources(s.part, s.view, imgs)  # the method's extra columns (the teacher's logits)
                a, f = encode(imgs)
                cols["feats"].append(f.numpy())
                if layout.act_shape is not None:
                    cols["acts"].append(np.round(a.numpy()) if layout.act_dtype == "uint8" else a.numpy())
                if layout.teacher_dim:
                    cols["teacher"].append(np.asarray((extra or {})["teacher"], np.float32))
                oks.append(ok)
                done += len(b.ok)
                meter.update(done, lambda: f"cache {fmt_bytes(cache.disk_bytes())}")
            idx = np.arange(s.lo, s.hi)
            if s.source == "train":
                y = labels[idx]
                meta = meta_rows(idx, s.view, y, labels[partner], lam, ok=np.concatenate(oks))
            elif s.source == "extra":
                z = np.zeros(s.rows)
                meta = meta_rows(idx, s.view, z, z, labeled=z, ok=np.concatenate(oks))
            else:
                meta = meta_rows(idx, 0, np.asarray(ds.val.labels)[idx], ok=np.concatenate(oks))
            out = {"feats": np.concatenate(cols["feats"]), "meta": meta}
            if layout.act_shape is not None:
                out["acts"] = np.concatenate(cols["acts"])
            if layout.teacher_dim:
                out["teacher"] = np.concatenate(cols["teacher"])
            cache.write(s, out)
            if s.part == "train" and s.source == "train" and s.hi == len(train_paths) or s.source == "extra" and \
                    s.hi == len(sources["extra"]):
                kind = "plain" if s.view == 0 else "augmented" + (", mixup" if mixed else "")
                echo(f"phase 1: view {s.view + 1}/{views} ({kind}) of the "
                     + ("training images" if s.source == "train" else "unlabelled images") + " cached")
        meter.update(done, lambda: f"cache {fmt_bytes(cache.disk_bytes())}", force=meter.done < meter.total)
