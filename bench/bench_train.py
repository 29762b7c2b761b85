"""Benchmark: the textbook Keras transfer-learning recipe vs `edgetl train`.

Same data (../shared/datasets/hymenoptera), backbone (MobileNetV2 alpha 0.35,
ImageNet weights from ../shared/weights), image size and epochs, one process,
2 CPU threads as on the reference machine. Prints phase-1 time, total time and
val accuracy of both, and the ratios.

The textbook recipe follows the keras.io transfer-learning guide: a
directory dataset, augmentation layers inside the model, the frozen base run on
every batch of every epoch, then the last 20 layers unfrozen at 1e-5.

    python bench/bench_train.py [--img-size 128] [--epochs-head 20] [--epochs-finetune 10]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "datasets" / "hymenoptera"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"


def textbook(img, e1, e2, seed):
    import keras

    keras.utils.set_random_seed(seed)
    kw = dict(image_size=(img, img), batch_size=32, seed=seed, label_mode="int")
    train = keras.utils.image_dataset_from_directory(DATA / "train", shuffle=True, **kw).prefetch(2)
    val = keras.utils.image_dataset_from_directory(DATA / "val", shuffle=False, **kw).prefetch(2)
    aug = keras.Sequential([keras.layers.RandomFlip("horizontal"), keras.layers.RandomRotation(0.1),
                            keras.layers.RandomZoom(0.1)])
    base = keras.applications.MobileNetV2(alpha=0.35, include_top=False, weights=None, input_shape=(img, img, 3))
    base.load_weights(str(WEIGHTS))
    base.trainable = False
    inputs = keras.Input((img, img, 3))
    x = keras.applications.mobilenet_v2.preprocess_input(aug(inputs))
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
    t0 = time.perf_counter()
    model.fit(train, validation_data=val, epochs=e1, verbose=0)
    t1 = time.perf_counter() - t0
    base.trainable = True
    for layer in base.layers[:-20]:
        layer.trainable = False
    model.compile(keras.optimizers.Adam(1e-5), loss, metrics=["accuracy"])
    if e2:
        model.fit(train, validation_data=val, epochs=e1 + e2, initial_epoch=e1, verbose=0)
    total = time.perf_counter() - t0
    acc = model.evaluate(val, verbose=0)[1]
    return t1, total, acc


def edgetl_run(img, e1, e2, seed, out):
    from edgetl.config import TrainConfig
    from edgetl.train import train

    t0 = time.perf_counter()
    r = train(TrainConfig(data=str(DATA), alpha=0.35, img_size=img, weights=str(WEIGHTS), epochs_head=e1,
                          epochs_finetune=e2, patience=max(e1, e2), seed=seed, out=str(out)), echo=lambda *a: None)
    total = time.perf_counter() - t0
    tm = r.metrics["timings"]
    t1 = tm.get("features_s", 0.0) + tm.get("phase1_train_s", 0.0)
    return t1, total, r.metrics["val_accuracy"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--epochs-head", type=int, default=20)
    ap.add_argument("--epochs-finetune", type=int, default=10)
    ap.add_argument("--seed", type=int, default=42)
    a = ap.parse_args()
    if not DATA.is_dir() or not WEIGHTS.is_file():
        sys.exit(f"needs ../shared (hymenoptera and MobileNetV2 0.35 weights) at {SHARED}")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        e = edgetl_run(a.img_size, a.epochs_head, a.epochs_finetune, a.seed, Path(tmp) / "run")
    t = textbook(a.img_size, a.epochs_head, a.epochs_finetune, a.seed)
    print(f"\nhymenoptera, MobileNetV2 0.35 ImageNet, {a.img_size} px, "
          f"{a.epochs_head}+{a.epochs_finetune} epochs, seed {a.seed}, {os.cpu_count()} CPUs")
    print(f"{'recipe':<10}{'phase-1 s':>11}{'total s':>10}{'val acc':>9}")
    print(f"{'textbook':<10}{t[0]:>11.1f}{t[1]:>10.1f}{t[2]:>9.4f}")
    print(f"{'edgetl':<10}{e[0]:>11.1f}{e[1]:>10.1f}{e[2]:>9.4f}")
    print(f"speed-up: phase 1 {t[0] / e[0]:.1f}x, total {t[1] / e[1]:.1f}x; "
          f"accuracy difference {100 * (e[2] - t[2]):+.1f} points")


if __name__ == "__main__":
    main()
