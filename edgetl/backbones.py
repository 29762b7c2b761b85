"""One table of backbones and their defaults (after timm's registry).

Each entry knows how to build the Keras application without its top, the
preprocessing it expects, its default input size, the official Keras weight
file name (so the cache in ``$KERAS_HOME/models`` can be checked), and how its
layers group into units of unfreezing (whole blocks, never half a block)."""
from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass

from edgetl.errors import EdgetlError

MOBILENET_ROWS = (96, 128, 160, 192, 224)


@dataclass(frozen=True)
class Backbone:
    name: str
    builder: str                    # attribute of keras.applications, or "module:function" for edgetl's own
    preprocess: str                 # mode of edgetl.nets.layers.Preprocess: tf | torch | caffe | none
    default_size: int
    min_size: int
    unit: str                       # unit of --unfreeze: "layer" or "block"
    block_of: Callable[[str], str | None]
    weight_file: Callable[[float, int], str]
    has_alpha: bool = False
    default_alpha: float = 1.0
    params_hint: str = ""
    offline: str = ""               # how to get the ImageNet weights without internet, if not a download

    def build(self, img_size: int, alpha: float | None = None, weights=None, input_tensor=None):
        import importlib

        import keras

        if ":" in self.builder:
            module, name = self.builder.split(":")
            fn = getattr(importlib.import_module(module), name)
        else:
            fn = getattr(keras.applications, self.builder)
        kw = dict(include_top=False, weights=weights, input_shape=(img_size, img_size, 3))
        if input_tensor is not None:
            kw["input_tensor"] = input_tensor
        if self.has_alpha:
            kw["alpha"] = float(alpha if alpha is not None else self.default_alpha)
        with warnings.catch_warnings():  # sizes without their own weight file: edgetl loads the 224 one
            warnings.filterwarnings("ignore", message=".*input_shape.*")
            return fn(**kw)

    def weight_file_for(self, alpha: float | None, img_size: int) -> str:
        return self.weight_file(float(alpha if alpha is not None else self.default_alpha), img_size)

    def weight_file_candidates(self, alpha: float | None) -> list[str]:
        """Every official file name holding these weights (MobileNet ships one per input size)."""
        names = [self.weight_file_for(alpha, s) for s in (224,) + MOBILENET_ROWS]
        return list(dict.fromkeys(names))


def _mnv2_block(name: str) -> str | None:
    m = re.match(r"(block_\d+)_", name)
    if m:
        return m.group(1)
    if name.startswith(("expanded_conv_",)):
        return "block_0"
    if name.startswith(("Conv_1", "out_relu")):
        return "top"
    if name.startswith(("Conv1", "bn_Conv1", "Conv1_relu")):
        return "stem"
    return None


def _effnet_block(name: str) -> str | None:
    m = re.match(r"(block\d+[a-z])_", name)
    if m:
        return m.group(1)
    if name.startswith("top_"):
        return "top"
    if name.startswith("stem_") or name in ("rescaling", "normalization", "rescaling_1"):
        return "stem"
    return None


def _resnet_block(name: str) -> str | None:
    m = re.match(r"(conv\d_block\d+)_", name)
    if m:
        return m.group(1)
    if name.startswith(("conv1_", "pool1_")):
        return "stem"
    return None


def _mnv2_file(alpha: float, size: int) -> str:
    rows = size if size in MOBILENET_ROWS else 224
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{rows}_no_top.h5"


def _fixed(name: str) -> Callable[[float, int], str]:
    return lambda alpha, size: name


REGISTRY: dict[str, Backbone] = {}


def register(b: Backbone) -> Backbone:
    REGISTRY[b.name] = b
    return b


register(Backbone("mobilenetv2", "MobileNetV2", "tf", 224, 32, "layer", _mnv2_block, _mnv2_file,
                  has_alpha=True, default_alpha=1.0, params_hint="2.3M at alpha 1.0, 0.4M at 0.35"))
for _i, (_size) in enumerate((224, 240, 260, 300, 380, 456, 528, 600)):
    register(Backbone(f"efficientnetb{_i}", f"EfficientNetB{_i}", "none", _size, 32, "block",
                      _effnet_block, _fixed(f"efficientnetb{_i}_notop.h5")))
register(Backbone("efficientnet_lite0", "edgetl.nets.efficientnet_lite:EfficientNetLite0", "tf", 224, 32, "block",
                  _effnet_block, _fixed("efficientnet_lite0_notop.h5"), params_hint="3.4M; int8-friendly (ReLU6, no SE)",
                  offline="edgetl weights import-torchvision --arch efficientnet_lite0"))
register(Backbone("resnet50", "ResNet50", "caffe", 224, 32, "block", _resnet_block,
                  _fixed("resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"), params_hint="23.6M"))
register(Backbone("resnet50v2", "ResNet50V2", "tf", 224, 32, "block", _resnet_block,
                  _fixed("resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5")))

ALIASES = {"mobilenet_v2": "mobilenetv2", "mnv2": "mobilenetv2", "efficientnet_b0": "efficientnetb0",
           "resnet": "resnet50", "efficientnet-lite0": "efficientnet_lite0", "efficientnetlite0": "efficientnet_lite0",
           "lite0": "efficientnet_lite0"}


def get(name: str) -> Backbone:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in REGISTRY:
        raise EdgetlError(f"unknown backbone '{name}'; choose one of: {', '.join(REGISTRY)}")
    return REGISTRY[key]


def units(base, backbone: Backbone) -> list[tuple[str, list]]:
    """Group the base's layers into consecutive units of unfreezing, in order.

    Layers the registry can't place (pads, adds) join the unit before them."""
    groups: list[tuple[str, list]] = []
    for layer in base.layers:
        if layer.__class__.__name__ == "InputLayer":
            continue
        b = backbone.block_of(layer.name)
        if groups and (b is None or b == groups[-1][0]):
            groups[-1][1].append(layer)
        else:
            groups.append((b or layer.name, [layer]))
    return groups


def layers_to_unfreeze(base, backbone: Backbone, n_layers: int | None = None, n_blocks: int | None = None) -> list:
    """The trailing layers to make trainable.

    ``n_blocks`` counts whole units from the end; ``n_layers`` counts layers and,
    for block-unit backbones, widens to the start of the block it lands in."""
    layers = [l for l in base.layers if l.__class__.__name__ != "InputLayer"]
    if n_blocks is not None:
        groups = units(base, backbone)
        chosen = groups[len(groups) - min(n_blocks, len(groups)):] if n_blocks > 0 else []
        return [l for _, ls in chosen for l in ls]
    n = max(0, min(int(n_layers or 0), len(layers)))
    if n == 0:
        return []
    tail = layers[len(layers) - n:]
    if backbone.unit == "block":
        first = tail[0]
        for _, ls in units(base, backbone):
            if first in ls:
                start = layers.index(ls[0])
                return layers[start:]
    return tail
