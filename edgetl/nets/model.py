"""The classifier: RGB 0-255 in, preprocessing baked in, backbone (BatchNorm
always in inference mode), a small head emitting logits."""
from __future__ import annotations

import keras

from edgetl.backbones import Backbone
from edgetl.nets.layers import Preprocess


def build_head(n_features: int, n_classes: int, dropout: float, dense: int, l2: float):
    """The trainable head as a list of layers (shared by the feature model and the full model)."""
    reg = keras.regularizers.L2(l2) if l2 else None
    layers = [keras.layers.Dropout(dropout, name="head_dropout")] if dropout else []
    if dense:
        layers.append(keras.layers.Dense(dense, activation="relu", kernel_regularizer=reg, name="head_dense"))
        if dropout:
            layers.append(keras.layers.Dropout(dropout, name="head_dropout_2"))
    layers.append(keras.layers.Dense(n_classes, kernel_regularizer=reg, name="logits"))
    return layers


def assemble(base, bb: Backbone, img_size: int, head_layers, name: str = "edgetl_classifier"):
    """Full model and the frozen feature extractor (same base, same preprocessing)."""
    inputs = keras.Input((img_size, img_size, 3), name="image")
    x = Preprocess(bb.preprocess, name="preprocess")(inputs)
    x = base(x, training=False)  # BatchNorm stays in inference mode, frozen or not
    feats = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    extractor = keras.Model(inputs, feats, name="feature_extractor")
    y = feats
    for layer in head_layers:
        y = layer(y)
    return keras.Model(inputs, y, name=name), extractor


def head_model(n_features: int, head_layers):
    inp = keras.Input((n_features,), name="features")
    y = inp
    for layer in head_layers:
        y = layer(y)
    return keras.Model(inp, y, name="head")


def set_trainable(base, layers_to_train) -> int:
    """Freeze the base except ``layers_to_train``; BatchNorm layers stay frozen. Returns the count."""
    base.trainable = True
    keep = set(id(l) for l in layers_to_train)
    n = 0
    for layer in base.layers:
        train = id(layer) in keep and not isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = train
        n += bool(train and layer.weights)
    return n


def count_trainable(base, layers_to_train) -> int:
    """How many layers :func:`set_trainable` would train (with weights, BatchNorm excluded),
    without changing any flag."""
    keep = set(id(l) for l in layers_to_train)
    return sum(1 for layer in base.layers
               if id(layer) in keep and not isinstance(layer, keras.layers.BatchNormalization) and layer.weights)


def count_params(model) -> dict:
    tr = sum(int(w.numpy().size) for w in model.trainable_weights)
    total = sum(int(w.numpy().size) for w in model.weights)
    return {"total": total, "trainable": tr}


def load_keras(path) -> object:
    """keras.models.load_model in safe mode (edgetl never runs code stored in a model file),
    with one clear line for each way it fails: a file that is not a whole zip archive
    (Keras reports those as "File not found"), a Lambda layer, anything else."""
    import zipfile
    from pathlib import Path

    from edgetl.errors import EdgetlError

    path = Path(path)
    why = None
    if path.suffix.lower() == ".keras":  # a zip archive
        try:
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()  # reads every member and checks its CRC
            why = bad and f"corrupt or truncated zip: {bad} fails its CRC check"
        except (zipfile.BadZipFile, EOFError, OSError, ValueError):
            why = "zero-byte file" if path.stat().st_size == 0 else "corrupt or truncated zip, or not a zip at all"
    if why:
        raise EdgetlError(f"{path}: not a loadable Keras model ({why}); copy or save it again")
    try:
        return keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as e:
        msg = str(e)
        if "Lambda" in msg and "safe_mode" in msg:
            raise EdgetlError(f"{path}: refused: the model contains a Lambda layer, whose Python code would run on "
                              f"load; rebuild it without Lambda layers (edgetl never loads code from model "
                              f"files)") from None
        first = (msg.strip().splitlines() or [type(e).__name__])[0]
        raise EdgetlError(f"{path}: not a loadable Keras model ({first})") from None
