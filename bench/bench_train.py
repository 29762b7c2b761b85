"""Benchmark: `edgetl train` against two textbook Keras recipes, like for like.

Same files on every side: per seed, edgetl's own `scan(..., test_split=)` carves a
seeded, stratified test split from hymenoptera's train/ folder; edgetl trains on the
rest (val/ chooses its epochs and phase), and the textbook recipes get the very same
file lists through `tf.data` from paths. Every recipe is scored once, at the end, on
that untouched test split. Same backbone (MobileNetV2 alpha 0.35, ImageNet weights
from ../shared/weights), image size and thread settings; one process; each recipe is
seeded the same way.

* **edgetl**: `edgetl train` with its defaults (4 cached views, last 20 layers,
  early stopping on val), `--epochs-head 20 --epochs-finetune 10`.
* **guide**: the keras.io "Transfer learning & fine-tuning" guide as written: resize,
  its augmentation (RandomFlip horizontal, RandomRotation 0.1) mapped per image, then
  `.batch(64).prefetch().cache()` (so the augmented images of the first epoch are reused),
  Rescaling to [-1, 1], base(training=False), pooling, Dropout 0.2, Dense(1) with a
  binary cross-entropy, Adam 1e-3; then its own unfreeze rule, the whole base
  (`base_model.trainable = True`, BatchNorm kept in inference mode), Adam 1e-5. The same
  epoch budget as edgetl's maximum (the guide runs 2 + 1 "for the sake of time"). The
  guide's data come pre-shuffled from TFDS; the file list here is shuffled once, seeded.
* **matched**: the textbook loop (frozen base run on every batch of every step) with
  edgetl's choices: its augmentation layers (flip, rotate, zoom, translate, contrast),
  fresh per batch, central-crop resize, batch 32, 2-class softmax head, Adam 1e-3 then
  1e-5 on the last 20 layers with BatchNorm frozen, and exactly as many optimizer steps
  per phase as edgetl took for that seed. No early stopping, no val-based choice.

Printed: hardware and thread settings, the load average around each run, per seed and
recipe the optimizer steps and wall time of each phase and the test accuracy with its
Wilson interval; then mean +- std over seeds, the speed ratios, and the paired
accuracy differences (per seed, and pooled over seeds with an exact McNemar test on the
test images).

    python bench/bench_train.py [--seeds 3] [--img-size 128] [--epochs-head 20]
                                [--epochs-finetune 10] [--test-split 0.25] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "datasets" / "hymenoptera"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
RECIPES = ("edgetl", "guide", "matched")


def quiet(*a, **k):
    pass


def load() -> str:
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


class StepCount:
    """Optimizer steps, wall time and CPU time (this process, all threads) of one fit."""

    def __init__(self):
        self.steps, self.seconds, self.cpu = 0, 0.0, 0.0


def _fit(model, data, steps: StepCount, **kw):
    it0 = int(model.optimizer.iterations.numpy()) if model.optimizer.built else 0
    t0, c0 = time.perf_counter(), time.process_time()
    model.fit(data, verbose=0, **kw)
    steps.seconds, steps.cpu = time.perf_counter() - t0, time.process_time() - c0
    steps.steps = int(model.optimizer.iterations.numpy()) - it0


def path_dataset(paths, labels, img: int, crop: bool):
    """(float32 image 0-255, label) from image files, decoded by TensorFlow (the textbook way)."""
    import keras
    import tensorflow as tf

    resize = keras.layers.Resizing(img, img, crop_to_aspect_ratio=crop)

    def decode(p, y):
        x = tf.io.decode_image(tf.io.read_file(p), channels=3, expand_animations=False)
        x = resize(tf.cast(x, tf.float32))
        x.set_shape((img, img, 3))
        return x, y

    return tf.data.Dataset.from_tensor_slices((list(paths), np.asarray(labels))).map(decode)


def textbook_guide(split, img: int, e1: int, e2: int, seed: int) -> dict:
    """keras.io's transfer-learning guide, as written (see the module docstring)."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    t0, c0 = time.perf_counter(), time.process_time()
    order = np.random.default_rng(seed).permutation(len(split["train"][0]))  # TFDS records come shuffled
    tr_p = [split["train"][0][i] for i in order]
    tr_y = np.asarray(split["train"][1])[order].astype("float32")
    aug_layers = [keras.layers.RandomFlip("horizontal", seed=seed), keras.layers.RandomRotation(0.1, seed=seed + 1)]

    def augment(x):
        for layer in aug_layers:
            x = layer(x)
        return x

    train = path_dataset(tr_p, tr_y, img, crop=False).map(lambda x, y: (augment(x), y))
    train = train.batch(64).prefetch(tf.data.AUTOTUNE).cache()
    val = path_dataset(*split["val"], img, crop=False).map(lambda x, y: (x, tf.cast(y, tf.float32)))
    val = val.batch(64).prefetch(tf.data.AUTOTUNE).cache()
    base, model = textbook_model(img, 1)
    loss = keras.losses.BinaryCrossentropy(from_logits=True)
    model.compile(keras.optimizers.Adam(), loss, metrics=[keras.metrics.BinaryAccuracy()])
    build_s = time.perf_counter() - t0
    p1, p2 = StepCount(), StepCount()
    _fit(model, train, p1, epochs=e1, validation_data=val)
    base.trainable = True  # the guide's rule: the whole base; training=False above keeps BatchNorm in inference
    model.compile(keras.optimizers.Adam(1e-5), loss, metrics=[keras.metrics.BinaryAccuracy()])
    if e2:
        _fit(model, train, p2, epochs=e2, validation_data=val)
    t_eval = time.perf_counter()
    test = path_dataset(*split["test"], img, crop=False).batch(64)
    logits = np.concatenate([model(x, training=False).numpy()[:, 0] for x, _ in test])
    pred = (logits > 0).astype(int)
    return {"build_s": build_s, "phase1_s": p1.seconds, "phase2_s": p2.seconds, "phase1_steps": p1.steps,
            "phase2_steps": p2.steps, "eval_s": time.perf_counter() - t_eval,
            "total_s": time.perf_counter() - t0, "phase1_cpu": p1.cpu, "phase2_cpu": p2.cpu,
            "total_cpu": time.process_time() - c0, "pred": pred}


def textbook_matched(split, img: int, steps1: int, steps2: int, epoch_steps: int, seed: int) -> dict:
    """The textbook loop with edgetl's augmentation, resize, head, unfreeze rule and step counts."""
    import keras
    import tensorflow as tf

    from edgetl import backbones
    from edgetl.config import parse_augment
    from edgetl.model import set_trainable
    from edgetl.tfdata import augmenter

    keras.utils.set_random_seed(seed)
    t0, c0 = time.perf_counter(), time.process_time()
    aug = augmenter(parse_augment("default"), seed + 1000)
    n = len(split["train"][0])
    train = path_dataset(*split["train"], img, crop=True).cache().shuffle(n, seed=seed).repeat().batch(32)
    train = train.map(lambda x, y: (tf.clip_by_value(aug(x, training=True), 0.0, 255.0), tf.one_hot(y, 2)))
    train = train.prefetch(tf.data.AUTOTUNE)
    val = path_dataset(*split["val"], img, crop=True).map(lambda x, y: (x, tf.one_hot(y, 2))).batch(32).cache()
    base, model = textbook_model(img, 2)
    loss = keras.losses.CategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
    build_s = time.perf_counter() - t0
    p1, p2 = StepCount(), StepCount()

    def epochs_for(steps):  # whole epochs of edgetl's length, then the remainder
        return max(1, math.ceil(steps / epoch_steps))

    _fit(model, train, p1, epochs=epochs_for(steps1), steps_per_epoch=min(epoch_steps, steps1), validation_data=val)
    if steps2:
        set_trainable(base, backbones.layers_to_unfreeze(base, backbones.get("mobilenetv2"), n_layers=20))
        model.compile(keras.optimizers.Adam(1e-5), loss, metrics=["accuracy"])
        _fit(model, train, p2, epochs=epochs_for(steps2), steps_per_epoch=min(epoch_steps, steps2),
             validation_data=val)
    t_eval = time.perf_counter()
    test = path_dataset(*split["test"], img, crop=True).batch(64)
    pred = np.concatenate([model(x, training=False).numpy().argmax(-1) for x, _ in test])
    return {"build_s": build_s, "phase1_s": p1.seconds, "phase2_s": p2.seconds, "phase1_steps": p1.steps,
            "phase2_steps": p2.steps, "eval_s": time.perf_counter() - t_eval,
            "total_s": time.perf_counter() - t0, "phase1_cpu": p1.cpu, "phase2_cpu": p2.cpu,
            "total_cpu": time.process_time() - c0, "pred": pred}


def textbook_model(img: int, outputs: int):
    """(frozen base, model): the guide's classifier — MobileNetV2 0.35 with the ImageNet weights,
    Rescaling to [-1, 1], base(training=False), pooling, Dropout 0.2, Dense(outputs)."""
    import keras

    base = keras.applications.MobileNetV2(alpha=0.35, include_top=False, weights=None, input_shape=(img, img, 3))
    base.load_weights(str(WEIGHTS))
    base.trainable = False
    inputs = keras.Input((img, img, 3))
    x = keras.layers.Rescaling(scale=1 / 127.5, offset=-1)(inputs)
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    return base, keras.Model(inputs, keras.layers.Dense(outputs)(x))


def edgetl_run(split, img: int, e1: int, e2: int, seed: int, test_split: float, out: Path,
               recipe: str = "auto") -> dict:
    from edgetl.config import TrainConfig
    from edgetl.tfdata import load_array
    from edgetl.train import Trainer

    cpu: dict[str, float] = {}

    class CpuClock(Trainer):  # CPU seconds of each phase; edgetl's own timings give the wall times
        def phase1(self):
            c0 = time.process_time()
            try:
                return super().phase1()
            finally:
                cpu["phase1"] = time.process_time() - c0

        def phase2(self):
            c0 = time.process_time()
            try:
                return super().phase2()
            finally:
                cpu["phase2"] = time.process_time() - c0

    t0, c0 = time.perf_counter(), time.process_time()
    r = CpuClock(TrainConfig(data=str(DATA), alpha=0.35, img_size=img, weights=str(WEIGHTS), epochs_head=e1,
                             epochs_finetune=e2, seed=seed, test_split=test_split, out=str(out), recipe=recipe),
                 echo=quiet).run()
    total, total_cpu = time.perf_counter() - t0, time.process_time() - c0
    saved = json.loads((out / "split.json").read_text())
    assert [Path(f["file"]) for f in saved["test"]] == [Path(p).resolve() for p in split["test"][0]], \
        "edgetl's test split differs from the one given to the textbook recipes"
    tm, m = r.metrics["timings"], r.metrics
    rows = 4 * len(split["train"][0])  # --views 4 (default), batch 32
    epoch_steps = math.ceil(rows / 32)
    x = load_array(split["test"][0], img, "crop").astype("float32")
    pred = np.asarray(r.model(x, training=False)).argmax(-1)
    assert abs((pred == split["test"][1]).mean() - m["test"]["accuracy"]) < 1e-9
    e1_run, e2_run = len(r.history["phase1"]), len(r.history["phase2"] or [])
    return {"phase1_s": tm.get("features_s", 0.0) + tm.get("phase1_train_s", 0.0), "features_s": tm.get("features_s"),
            "phase2_s": tm.get("phase2_s", 0.0), "total_s": total, "phase1_steps": e1_run * epoch_steps,
            "phase2_steps": e2_run * epoch_steps, "epoch_steps": epoch_steps, "phase1_cpu": cpu["phase1"],
            "phase2_cpu": cpu["phase2"], "total_cpu": total_cpu, "epochs_run": [e1_run, e2_run],
            "selected_phase": m["selected_phase"], "val_accuracy": m["val_accuracy"], "pred": pred,
            "recipe": m.get("recipe"), "recipe_search_s": tm.get("recipe_search_s", 0.0)}


def machine() -> dict:
    import tensorflow as tf

    from edgetl.timing import cpu_model

    return {"cpu": cpu_model(), "os.cpu_count": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
            "python": platform.python_version(), "tensorflow": tf.__version__,
            "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
            "op_determinism": True, "TF_NUM_INTEROP_THREADS": os.environ.get("TF_NUM_INTEROP_THREADS"),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}


def ms(v) -> str:
    v = np.asarray(v, float)
    return f"{v.mean():.1f} ± {v.std():.1f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--epochs-head", type=int, default=20)
    ap.add_argument("--epochs-finetune", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--test-split", type=float, default=0.25)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--recipe", default="auto", choices=("auto", "fixed"),
                    help="edgetl's --recipe (auto, its default, searches 4 phase-2 settings on val first)")
    ap.add_argument("--edgetl-only", action="store_true",
                    help="Run edgetl alone (e.g. --recipe fixed beside an earlier full run's textbook rows)")
    ap.add_argument("--json", default=None, help="Write every number to this file.")
    a = ap.parse_args()
    if not DATA.is_dir() or not WEIGHTS.is_file():
        sys.exit(f"needs ../shared (hymenoptera and MobileNetV2 0.35 weights) at {SHARED}")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(a.threads)
    tf.config.threading.set_inter_op_parallelism_threads(a.threads)
    tf.config.experimental.enable_op_determinism()  # edgetl turns it on; the same for every recipe
    from edgetl.data import scan
    from edgetl.stats import paired_drop, wilson

    info = machine()
    print(f"machine: {info}", flush=True)
    print(f"load average at start: {load()}", flush=True)
    res: dict[str, list[dict]] = {r: [] for r in RECIPES}
    labels = []
    for s in range(1, a.seeds + 1):
        ds = scan(DATA, seed=s, test_split=a.test_split)
        split = {k: (list(v.paths), np.asarray(v.labels)) for k, v in (("train", ds.train), ("val", ds.val),
                                                                           ("test", ds.test))}
        labels.append(split["test"][1])
        with tempfile.TemporaryDirectory() as tmp:
            l0 = load()
            e = edgetl_run(split, a.img_size, a.epochs_head, a.epochs_finetune, s, a.test_split, Path(tmp) / "run",
                           a.recipe)
            e["load"] = [l0, load()]
        res["edgetl"].append(e)
        for name in (() if a.edgetl_only else ("guide", "matched") if s % 2 else ("matched", "guide")):
            l0 = load()
            if name == "guide":
                r = textbook_guide(split, a.img_size, a.epochs_head, a.epochs_finetune, s)
            else:
                r = textbook_matched(split, a.img_size, e["phase1_steps"], e["phase2_steps"], e["epoch_steps"], s)
            r["load"] = [l0, load()]
            res[name].append(r)
        y = split["test"][1]
        print(f"seed {s}: {len(split['train'][0])} train / {len(split['val'][0])} val / {len(y)} test images", flush=True)
        print(f"  {'recipe':<9}{'steps p1+p2':>13}{'phase 1 s':>11}{'phase 2 s':>11}{'total s':>9}{'CPU p1/p2/total s':>20}"
              f"{'test acc':>10}  95% CI          load before/after", flush=True)
        for name in [r for r in RECIPES if res[r]]:
            r = res[name][-1]
            k = int((r["pred"] == y).sum())
            lo, hi = wilson(k, len(y))
            r["test_accuracy"] = k / len(y)
            print(f"  {name:<9}{r['phase1_steps']:>6}+{r['phase2_steps']:<6}{r['phase1_s']:>11.1f}"
                  f"{r['phase2_s']:>11.1f}{r['total_s']:>9.1f}"
                  f"{r['phase1_cpu']:>8.0f}/{r['phase2_cpu']:.0f}/{r['total_cpu']:.0f}{k / len(y):>10.4f}  [{lo:.3f}, {hi:.3f}]  "
                  f"{r['load'][0]} / {r['load'][1]}", flush=True)
        print(f"  edgetl: epochs run {e['epochs_run']}, selected {e['selected_phase']}, "
              f"features (decode + frozen base over 4 views) {e['features_s']:.1f}s", flush=True)
    y_all = np.concatenate(labels)
    print(f"\nhymenoptera, MobileNetV2 0.35 ImageNet, {a.img_size} px, up to {a.epochs_head}+{a.epochs_finetune} "
          f"epochs, {a.seeds} seeds, test split {a.test_split:g} of train/ per seed ({len(y_all)} test predictions "
          f"pooled), {a.threads} TF threads; load average at the end {load()}")
    print("wall seconds, then CPU seconds (all threads of this process), mean ± std over seeds")
    print(f"{'recipe':<9}{'phase 1 s':>14}{'phase 2 s':>14}{'total s':>14}{'CPU phase 1':>14}{'CPU phase 2':>14}"
          f"{'CPU total':>14}{'steps p1':>10}{'steps p2':>10}{'test acc (mean ± std)':>24}")
    for name in [r for r in RECIPES if res[r]]:
        rs = res[name]
        print(f"{name:<9}{ms([r['phase1_s'] for r in rs]):>14}{ms([r['phase2_s'] for r in rs]):>14}"
              f"{ms([r['total_s'] for r in rs]):>14}{ms([r['phase1_cpu'] for r in rs]):>14}"
              f"{ms([r['phase2_cpu'] for r in rs]):>14}{ms([r['total_cpu'] for r in rs]):>14}{np.mean([r['phase1_steps'] for r in rs]):>10.0f}"
              f"{np.mean([r['phase2_steps'] for r in rs]):>10.0f}"
              f"{np.mean([r['test_accuracy'] for r in rs]):>17.4f} ± {np.std([r['test_accuracy'] for r in rs]):.4f}")
    summary = {}
    for other in [r for r in ("guide", "matched") if res[r]]:
        ratios = {k: [o[k] / e[k] for o, e in zip(res[other], res["edgetl"])]
                  for k in ("phase1_s", "phase2_s", "total_s", "phase1_cpu", "phase2_cpu", "total_cpu")}
        print(f"\nedgetl vs {other}: speed-up (their time / edgetl's, per seed): "
              + "; ".join(f"{k.replace('_s', ' wall').replace('_cpu', ' CPU')} " + ", ".join(f"{v:.1f}x" for v in vs)
                          for k, vs in ratios.items()))
        per_seed = []
        for i, (e, o) in enumerate(zip(res["edgetl"], res[other])):
            pd = paired_drop(labels[i], o["pred"], e["pred"])  # the drop of edgetl against other
            per_seed.append({"seed": i + 1, "diff_points": -pd.drop_points,
                             "ci95_points": [-pd.ci95_points[1], -pd.ci95_points[0]], "edgetl_only_right": pd.c,
                             "other_only_right": pd.b, "mcnemar_p": pd.p_value})
            print(f"  seed {i + 1}: edgetl - {other} = {-pd.drop_points:+.1f} points, 95% CI "
                  f"[{-pd.ci95_points[1]:+.1f}, {-pd.ci95_points[0]:+.1f}], only edgetl right {pd.c}, only "
                  f"{other} right {pd.b}, McNemar p={pd.p_value:.3g}")
        pooled = paired_drop(y_all, np.concatenate([o["pred"] for o in res[other]]),
                             np.concatenate([e["pred"] for e in res["edgetl"]]))
        print(f"  pooled over seeds ({pooled.n} test predictions): {-pooled.drop_points:+.1f} points, 95% CI "
              f"[{-pooled.ci95_points[1]:+.1f}, {-pooled.ci95_points[0]:+.1f}], {pooled.c} vs {pooled.b} discordant, "
              f"McNemar p={pooled.p_value:.3g}")
        summary[other] = {"speedup": ratios, "per_seed": per_seed, "pooled": {
            "n": pooled.n, "diff_points": -pooled.drop_points, "edgetl_only_right": pooled.c,
            "other_only_right": pooled.b, "mcnemar_p": pooled.p_value,
            "ci95_points": [-pooled.ci95_points[1], -pooled.ci95_points[0]]}}
    if a.json:
        dump = {"args": vars(a), "machine": info, "summary": summary,
                "runs": {k: [{kk: (vv.tolist() if isinstance(vv, np.ndarray) else vv) for kk, vv in r.items()}
                             for r in v] for k, v in res.items()}}
        Path(a.json).write_text(json.dumps(dump, indent=1))


if __name__ == "__main__":
    main()
