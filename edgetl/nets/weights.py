"""Pretrained weights: Keras' own cache (``$KERAS_HOME/models``), installing a
file there after checking it loads, and listing what is available offline."""
from __future__ import annotations

import os
from pathlib import Path

from edgetl import backbones
from edgetl.artifacts import copy_file
from edgetl.errors import EdgetlError
from edgetl.types import PathLike


def keras_models_dir() -> Path:
    """Where Keras looks for cached weights: ``$KERAS_HOME/models`` (default ``~/.keras/models``)."""
    import sys

    if "keras" in sys.modules:  # Keras fixes its home when imported; follow it
        from keras.src.backend import config

        return Path(config.keras_home()) / "models"
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


def cached_weight_file(bb: backbones.Backbone, alpha: float | None, img_size: int) -> Path | None:
    """The cached official file for these weights, preferring the exact name Keras asks for."""
    d = keras_models_dir()
    exact = d / bb.weight_file_for(alpha, img_size)
    if exact.is_file():
        return exact
    for name in bb.weight_file_candidates(alpha):
        if (d / name).is_file():
            return d / name
    return None


def install_hint(bb: backbones.Backbone, alpha: float | None) -> str:
    if bb.offline:
        return f"create them offline with '{bb.offline}' (or use --weights none)"
    a = f" --alpha {alpha if alpha is not None else bb.default_alpha}" if bb.has_alpha else ""
    return (f"download {bb.weight_file_for(alpha, 224)} on a machine with internet, then run "
            f"'edgetl weights install FILE --backbone {bb.name}{a}' (or use --weights none)")


def build_base(bb: backbones.Backbone, img_size: int, alpha: float | None, weights: str | None):
    """Build the backbone without top. ``weights``: 'imagenet', 'none'/None, or a file path."""
    if weights in (None, "none", "None"):
        return bb.build(img_size, alpha, weights=None)
    if weights == "imagenet":
        cached = cached_weight_file(bb, alpha, img_size)
        if cached is not None and cached.name != bb.weight_file_for(alpha, img_size):
            # MobileNet ships one identical file per input size; load the one we have.
            base = bb.build(img_size, alpha, weights=None)
            base.load_weights(str(cached))
            return base
        try:
            return bb.build(img_size, alpha, weights="imagenet")
        except Exception as e:  # no cache and no network
            reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
            raise EdgetlError(
                f"ImageNet weights for {bb.name}"
                + (f" alpha {alpha if alpha is not None else bb.default_alpha}" if bb.has_alpha else "")
                + f" are not in {keras_models_dir()} and could not be downloaded ({reason}); "
                + install_hint(bb, alpha)
            ) from None
    path = Path(weights).expanduser()
    if not path.is_file():
        raise EdgetlError(f"{path}: weights file not found; use --weights imagenet, none, or a path to a .h5 file")
    base = bb.build(img_size, alpha, weights=None)
    try:
        base.load_weights(str(path))
    except Exception as e:
        raise EdgetlError(f"{path}: does not load into {bb.name} ({str(e).splitlines()[0][:120]}); "
                          f"check --backbone/--alpha match the file") from None
    return base


def install(file: PathLike, backbone: str, alpha: float | None = None) -> Path:
    """Check ``file`` loads into the backbone (no top), then copy it into Keras' cache."""
    bb = backbones.get(backbone)
    file = Path(file).expanduser()
    if not file.is_file():
        raise EdgetlError(f"{file}: no such file; give the downloaded Keras weights file (.h5)")
    if not bb.has_alpha and alpha is not None:
        raise EdgetlError(f"--alpha applies to mobilenetv2 only, not {bb.name}")
    base = bb.build(224 if bb.default_size <= 224 else bb.default_size, alpha, weights=None)
    try:
        base.load_weights(str(file))
    except Exception as e:
        raise EdgetlError(f"{file}: does not load into {bb.name}"
                          + (f" alpha {alpha or bb.default_alpha}" if bb.has_alpha else "")
                          + f" without top ({str(e).splitlines()[0][:100]}); check --backbone and --alpha") from None
    dest = keras_models_dir() / bb.weight_file_for(alpha, 224)
    copy_file(file, dest)
    return dest


def available() -> list[dict]:
    """One row per backbone (and MobileNetV2 width): is its ImageNet file cached here?"""
    rows = []
    for name, bb in backbones.REGISTRY.items():
        alphas = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4) if bb.has_alpha else (None,)
        for a in alphas:
            f = cached_weight_file(bb, a, bb.default_size)
            rows.append({"backbone": name, "alpha": a, "file": bb.weight_file_for(a, bb.default_size),
                         "cached": f is not None, "path": str(f) if f else None})
    return rows
