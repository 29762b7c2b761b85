"""Peer for speed races: MediaPipe Model Maker's image classifier as its users run it.

The recipe of MediaPipe's "Image classification model customization guide": folders of images
→ ``image_classifier.Dataset.from_folder``, ``SupportedModels.MOBILENET_V2`` (MobileNetV2 1.0 @224
from TF Hub, frozen), ``HParams(export_dir=...)`` with every other hyperparameter at its documented
default (batch size 2, 10 epochs, learning rate 0.001 scaled by batch/256, RMSprop with warm-up and
cosine decay, augmentation on, no fine-tuning), ``ImageClassifier.create(train_data,
validation_data, options)``, then ``model.evaluate(test_data)``. Run in an environment of its own
(``bench/peers/setup_envs.sh mm``: mediapipe-model-maker 0.2.1.4, mediapipe 0.10.21, TF 2.15).

What differs from how its users run it, and why:

* Offline: the TF Hub module cannot be downloaded here. ``--hub-cache DIR`` sets
  ``TFHUB_CACHE_DIR`` to a cache that ``bench/peers/mm_backbone.py`` filled beforehand, so TF Hub
  finds the module where a user's second run finds it, and downloads nothing. Its weights are the
  torchvision MobileNetV2 1.0 checkpoint edgetl imports (the race's one checkpoint), not Google's
  TF-slim checkpoint the real module holds; the module's interface (images in [0, 1], a 1280-wide
  pooled feature vector) is the same.
* Harness only: data come from DATA/train and DATA/val as given (the guide splits one folder; the
  race fixes the splits for every side), DATA/test is scored once after training if it exists,
  ``tf.keras.utils.set_random_seed(SEED)`` (a seed, no op determinism), ``export_dir`` is --out,
  the final ``export_model()`` (.tflite) is not timed or run (the other sides export nothing
  either; leaving it out only makes this side faster). ``--epochs`` is for smoke tests.

    python model_maker.py DATA --hub-cache DIR --seed S --out DIR [--epochs N]

Prints one line:  model_maker total_s=.. val_acc=.. [test_acc=..]"""
import time

T_START = time.perf_counter()
import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("data")
ap.add_argument("--hub-cache", required=True, help="TF Hub cache holding the module (bench/peers/mm_backbone.py)")
ap.add_argument("--seed", type=int, required=True)
ap.add_argument("--out", required=True, help="export_dir (must not hold a checkpoint: Model Maker would resume it)")
ap.add_argument("--epochs", type=int, default=None, help="smoke tests only (default: Model Maker's, 10)")
args = ap.parse_args()
os.environ["TFHUB_CACHE_DIR"] = os.path.abspath(args.hub_cache)  # offline: the module where hub looks first

import tensorflow as tf  # noqa: E402
from mediapipe_model_maker import image_classifier  # noqa: E402

tf.keras.utils.set_random_seed(args.seed)
train_data = image_classifier.Dataset.from_folder(os.path.join(args.data, "train"))
validation_data = image_classifier.Dataset.from_folder(os.path.join(args.data, "val"))
spec = image_classifier.SupportedModels.MOBILENET_V2
hparams = image_classifier.HParams(export_dir=args.out)
if args.epochs is not None:
    hparams.epochs = args.epochs
options = image_classifier.ImageClassifierOptions(supported_model=spec, hparams=hparams)
model = image_classifier.ImageClassifier.create(train_data=train_data, validation_data=validation_data,
                                                options=options)
T_TRAINED = time.perf_counter()
_, val_acc = model.evaluate(validation_data)
out = f"model_maker total_s={time.perf_counter() - T_START:.1f} val_acc={val_acc:.4f}"
res = {"val_acc": float(val_acc), "train_end_s": T_TRAINED - T_START, "epochs": hparams.epochs,
       "batch_size": hparams.batch_size, "labels": train_data.label_names}
test_dir = os.path.join(args.data, "test")
if os.path.isdir(test_dir):
    test_data = image_classifier.Dataset.from_folder(test_dir)
    assert test_data.label_names == train_data.label_names, (test_data.label_names, train_data.label_names)
    _, test_acc = model.evaluate(test_data)
    out += f" test_acc={test_acc:.4f}"
    res["test_acc"] = float(test_acc)
    res["test_n"] = test_data.size
res["total_s"] = time.perf_counter() - T_START
os.makedirs(args.out, exist_ok=True)
with open(os.path.join(args.out, "result.json"), "w") as f:
    json.dump(res, f)
print(out, flush=True)
