"""Preprocessing baked into every model: it takes RGB 0-255 and applies the
backbone's own normalisation, so no user can mis-preprocess."""
from __future__ import annotations

import keras
from keras import ops

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="edgetl")
class Preprocess(keras.layers.Layer):
    """``mode``: ``tf`` (scale to [-1, 1]), ``torch`` (ImageNet mean/std),
    ``caffe`` (RGB->BGR, mean subtraction) or ``none`` (the base normalises)."""

    def __init__(self, mode: str = "tf", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("tf", "torch", "caffe", "none"):
            raise ValueError(f"unknown preprocessing mode {mode!r}")
        self.mode = mode

    def call(self, x):
        x = ops.cast(x, "float32")
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            mean = ops.convert_to_tensor([m * 255.0 for m in IMAGENET_MEAN])
            std = ops.convert_to_tensor([s * 255.0 for s in IMAGENET_STD])
            return (x - mean) / std
        if self.mode == "caffe":
            x = ops.flip(x, axis=-1)
            return x - ops.convert_to_tensor(CAFFE_MEAN_BGR)
        return x

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}

    def describe(self) -> dict:
        """Preprocessing as numbers, for sidecars and metadata."""
        if self.mode == "tf":
            return {"mode": "tf", "mean": [127.5] * 3, "std": [127.5] * 3, "channel_order": "RGB"}
        if self.mode == "torch":
            return {"mode": "torch", "mean": [m * 255 for m in IMAGENET_MEAN],
                    "std": [s * 255 for s in IMAGENET_STD], "channel_order": "RGB"}
        if self.mode == "caffe":
            return {"mode": "caffe", "mean": list(CAFFE_MEAN_BGR), "std": [1.0] * 3, "channel_order": "BGR"}
        return {"mode": "none", "note": "the model normalises internally"}
