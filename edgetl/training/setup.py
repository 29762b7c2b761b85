"""Set-up of a training run: the config's paths, the data scan, the seed and distribution strategy
(:class:`Prepared`), the model (:class:`Built`), and the run directory's first files."""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from edgetl import artifacts, rundir
from edgetl.config import TrainConfig
from edgetl.data.dataset import Dataset, class_weights, scan
from edgetl.errors import EdgetlError
from edgetl.types import Echo

CLASS_LINES = 20  # above this many classes the per-class counts print as a summary and the extremes


@dataclass
class Prepared:
    """The scanned data and where training runs: what every later part reads."""
    ds: Dataset
    class_weight: dict | None
    strategy: Any
    replicas: int
    worker_index: int = 0
    num_workers: int = 1
    is_chief: bool = True


@dataclass
class Built:
    """The model: the frozen base, the head's layers, the classifier, the feature extractor and
    the head alone (on pooled features)."""
    base: Any
    head_layers: list
    model: Any
    extractor: Any
    head: Any
    n_features: int


def default_run_dir(cfg: TrainConfig, root="models", prefix: str | None = None) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = prefix or (cfg.backbone + (f"-a{cfg.alpha:g}" if cfg.alpha is not None else ""))
    d = Path(root) / f"{name}-{stamp}"
    i = 2
    while d.exists():
        d = Path(root) / f"{name}-{stamp}-{i}"
        i += 1
    return d


def get_strategy(name: str):
    import tensorflow as tf

    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored":
        if gpus:
            return tf.distribute.MirroredStrategy()
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=cpus)
    return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()


def set_seed(seed: int) -> None:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    try:
        tf.config.experimental.enable_op_determinism()
    except Exception:  # pragma: no cover - older TF
        pass


def absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """The config with its file paths made absolute (the data, a weights file, the cache folder): a
    run records them so, and resumes from any working directory."""
    import os

    if cfg.data:
        cfg.data = os.path.abspath(cfg.data)
    if cfg.cache_dir:
        cfg.cache_dir = os.path.abspath(cfg.cache_dir)
    if cfg.weights not in ("imagenet", "none"):
        cfg.weights = os.path.abspath(cfg.weights)
    return cfg


def resolve_saved_paths(cfg: TrainConfig, run_dir: Path) -> TrainConfig:
    """A saved config's relative paths (runs written before paths were recorded absolute), taken
    from the run itself: the data folder from split.json's absolute root, others against the run's
    parent folder when they exist there; never from the current working directory alone."""
    if cfg.data and not Path(cfg.data).is_absolute():
        try:
            root = json.loads((run_dir / rundir.SPLIT).read_text()).get("root")
        except (OSError, ValueError, AttributeError):
            root = None
        if isinstance(root, str) and Path(root).is_dir():
            cfg.data = root
    for key in ("cache_dir", "weights"):
        v = getattr(cfg, key)
        if v and v not in ("imagenet", "none") and not Path(v).is_absolute() and not Path(v).exists():
            near = run_dir.resolve().parent / v
            if near.exists():
                setattr(cfg, key, str(near))
    return cfg


def describe_data(ds: Dataset, cfg: TrainConfig, echo: Echo) -> None:
    """The data as scanned: classes and counts per split, skipped files, imbalance."""
    k = len(ds.classes)
    echo(f"data: {ds.root} ({ds.layout}), {k} classes, "
         f"{len(ds.train)} train / {len(ds.val)} val"
         + (f" / {len(ds.test)} test" if ds.test is not None else ""))
    n_te = ds.test.counts(k) if ds.test is not None else [None] * k
    lines = [f"  {c:<20} {n_tr:>6} train {n_va:>6} val" + (f" {n_t:>6} test" if n_t is not None else "")
             for c, n_tr, n_va, n_t in zip(ds.classes, ds.train.counts(k), ds.val.counts(k), n_te)]
    if k > CLASS_LINES:  # hundreds of classes: the extremes and a summary, not a line each
        tr = np.asarray(ds.train.counts(k))
        echo(f"  train images per class: min {tr.min()}, median {int(np.median(tr))}, max {tr.max()} "
             f"(every class's counts are in metrics.json); the smallest and largest:")
        order, half = np.argsort(tr, kind="stable"), CLASS_LINES // 2
        lines = [lines[i] for i in order[:half]] + ["  ..."] + [lines[i] for i in order[-half:]]
    for line in lines:
        echo(line)
    if ds.test is not None:
        echo(f"test split: {ds.test_source}; held out: never used for any choice, reported at the end")
    else:
        echo("test split: none (too few images for the auto rule, or --test-split 0); the val accuracy "
             "below is the one selection used, so it is optimistic")
    if ds.skipped:
        echo(f"warning: skipped {len(ds.skipped)} unusable file(s):")
        for f, why in ds.skipped:
            echo(f"  {f}: {why}")
    if ds.nested:
        listed = ", ".join(f"{f} ({n})" for f, n in ds.nested[:10]) + (", ..." if len(ds.nested) > 10 else "")
        echo(f"warning: {sum(n for _, n in ds.nested)} images in subfolders of class folders were "
             f"included in their class: {listed}")
    ratio = ds.imbalance()
    if ratio >= 1.5:
        hint = "" if cfg.class_weights == "auto" else "; --class-weights auto balances the loss"
        echo(f"warning: classes are imbalanced (largest/smallest = {ratio:.1f}){hint}")


def prepare(cfg: TrainConfig, check_inputs, echo: Echo) -> Prepared:
    """Scan the data, check the method's further inputs (``check_inputs(ds)``: before anything
    is written, so a refused input leaves no half-made run), seed, choose the strategy."""
    strategy: Any = None
    worker_index, num_workers, is_chief = 0, 1, True
    if cfg.strategy == "multiworker":
        # collective ops are configured when TensorFlow starts: before anything else runs
        from edgetl.training import distributed

        echo(f"multiworker: connecting to the other workers ({distributed.describe_cluster()}, TF_CONFIG); "
             f"this waits until every worker has started")
        strategy = get_strategy("multiworker")
        distributed.patch_keras()
        worker_index, num_workers, is_chief = distributed.worker_of(strategy)
        if num_workers > 1:
            echo(f"multiworker: worker {worker_index} of {num_workers} "
                 f"({distributed.describe_cluster()}){', the chief' if is_chief else ''}")
    ds: Dataset = scan(cfg.data, cfg.val_split, cfg.seed, cfg.strict, test_split=cfg.test_split)
    describe_data(ds, cfg, echo)
    class_weight = class_weights(ds) if cfg.class_weights == "auto" else None
    check_inputs(ds)
    set_seed(cfg.seed)
    if cfg.strategy != "multiworker":
        strategy = get_strategy(cfg.strategy)
    from edgetl import signals

    signals.reinstall()  # a TensorFlow cluster runtime may have taken SIGTERM over
    replicas = int(strategy.num_replicas_in_sync)
    if replicas > 1:
        echo(f"strategy: {type(strategy).__name__} over {replicas} replicas")
    return Prepared(ds, class_weight, strategy, replicas, worker_index, num_workers, is_chief)


def build(cfg: TrainConfig, bb, p: Prepared) -> Built:
    """The classifier: the base (frozen) with its weights loaded, and a new head."""
    from edgetl.nets import model as M
    from edgetl.nets.weights import build_base

    with p.strategy.scope():
        base = build_base(bb, cfg.size, cfg.alpha, cfg.weights)
        base.trainable = False
        n_feat = int(base.output_shape[-1])
        head_layers = M.build_head(n_feat, len(p.ds.classes), cfg.dropout, cfg.dense, cfg.l2)
        model, extractor = M.assemble(base, bb, cfg.size, head_layers)
        head = M.head_model(n_feat, head_layers)
    return Built(base, head_layers, model, extractor, head, n_feat)


def claim(run_dir: Path, resume: bool, chief: bool, force: bool) -> None:
    """Under the run directory's lock: refuse to overwrite a run, unfinished (without
    --resume) or finished (without --force)."""
    if resume or not chief:
        return
    ckpt = run_dir / rundir.CHECKPOINTS
    # the other workers' announcements (made before TensorFlow connects) are not a run
    if ckpt.exists() and any(c.name != rundir.WORKERS for c in ckpt.iterdir()):
        raise EdgetlError(f"{run_dir}: holds an unfinished run; add --resume to continue it, "
                          f"or choose another --out")
    if rundir.is_finished(run_dir) and not force:
        raise EdgetlError(f"{run_dir}: holds a finished run; choose another --out, or add --force to "
                          "retrain it in place (its model, exports and reports are replaced)")


def start(cfg: TrainConfig, ds: Dataset, run_dir: Path, ckpt: Path, is_chief: bool, force: bool, resume: bool,
          echo: Echo) -> None:
    """Write the run's config, labels and split: only once every input was checked and the
    model built (weights loaded), so that a refused run leaves nothing behind."""
    if force and not resume and is_chief and rundir.is_finished(run_dir):
        gone = rundir.clear_derived(run_dir)
        echo(f"--force: retraining {run_dir} in place; removed what the old model made: " + ", ".join(gone))
    ckpt.mkdir(parents=True, exist_ok=True)
    if not is_chief:  # only the chief writes the run's files
        return
    artifacts.write_yaml(run_dir / rundir.CONFIG, cfg.to_dict())
    artifacts.write_text(run_dir / rundir.LABELS, "\n".join(ds.classes) + "\n")
    root = ds.root
    artifacts.write_json(run_dir / rundir.SPLIT, {
        "root": str(root.resolve()),
        "classes": ds.classes,
        **{name: [{"file": str(Path(p).resolve()), "label": int(y)} for p, y in zip(s.paths, s.labels)]
           for name, s in (("train", ds.train), ("val", ds.val), ("test", ds.test)) if s is not None},
    })
