"""edgetl: from a folder of photos to a verified image classifier on a device.

The command line (``edgetl``) is a thin layer over these functions, which a
notebook can call directly::

    from edgetl import TrainConfig, train
    run = train(TrainConfig(data="photos/", backbone="mobilenetv2", alpha=0.35))
"""
import os as _os

_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"

from edgetl.errors import EdgetlError  # noqa: E402


def __getattr__(name):  # lazy: importing edgetl must not import TensorFlow
    if name in ("TrainConfig", "train"):
        from edgetl.training import train as _train

        return getattr(_train, name)
    raise AttributeError(name)


__all__ = ["EdgetlError", "TrainConfig", "train", "__version__"]
