"""Untrusted PyTorch checkpoints: every pickle goes through one restricted unpickler.

Checkpoints are built by hand (no torch): a fake ``torch`` module is put in
sys.modules only while pickling, so that storage types and _rebuild_tensor_v2
are written as the same globals torch writes."""

import io
import os
import pathlib
import pickle
import struct
import sys
import types
import zipfile
from collections import OrderedDict
from contextlib import contextmanager

import numpy as np
import pytest
from click.testing import CliRunner

from edgetl.cli import main
from edgetl.errors import EdgetlError
from edgetl.nets.torchvision_import import LEGACY_MAGIC, read_state_dict

SYS_INFO = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
STORAGE_NAMES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.int64): "LongStorage"}


# --- building checkpoints by hand -------------------------------------------------

class Payload:
    """Unpickling this creates ``marker``: stands for any code a crafted pickle runs."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


class Storage:
    def __init__(self, key, values):
        self.key, self.values = key, np.ascontiguousarray(values)


class Tensor:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def __reduce_ex__(self, proto):
        return FAKE["rebuild"], (self.storage, self.offset, self.size, self.stride, False, OrderedDict())


def tensor(key, values):
    """A contiguous tensor owning its storage."""
    a = np.asarray(values)
    return Tensor(Storage(key, a.ravel()), 0, a.shape, tuple(s // a.itemsize for s in a.strides))


FAKE = {}


@contextmanager
def fake_torch():
    """torch.FloatStorage, torch.LongStorage and torch._utils._rebuild_tensor_v2, for pickling only."""
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")
    for name in STORAGE_NAMES.values():
        setattr(torch, name, type(name, (), {"__module__": "torch"}))

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called")

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils = utils
    saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
    sys.modules.update({"torch": torch, "torch._utils": utils})
    FAKE.update(torch=torch, rebuild=_rebuild_tensor_v2)
    try:
        yield torch
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
        FAKE.clear()


def dump_state(obj, legacy: bool, pid=None) -> tuple[bytes, dict]:
    """The state-dict pickle (protocol 2, as torch.save) and its storages {key: Storage}."""
    storages = {}
    buf = io.BytesIO()
    with fake_torch() as torch:
        class P(pickle.Pickler):
            def persistent_id(self, o):
                if not isinstance(o, Storage):
                    return None
                storages[o.key] = o
                if pid is not None:
                    return pid
                stype = getattr(torch, STORAGE_NAMES[o.values.dtype])
                base = ("storage", stype, o.key, "cpu", o.values.size)
                return base + (None,) if legacy else base

        P(buf, protocol=2).dump(obj)
    return buf.getvalue(), storages


def legacy_bytes(state, magic=LEGACY_MAGIC, protocol=1001, sys_info=SYS_INFO, keys=None, data=None, pid=None):
    """PyTorch's legacy layout: magic, protocol, sys_info, state dict, storage keys; then per key
    an int64 element count and the raw bytes."""
    main_pkl, storages = dump_state(state, legacy=True, pid=pid)
    parts = [pickle.dumps(x, protocol=2) for x in (magic, protocol, sys_info)]
    parts += [main_pkl, pickle.dumps(list(storages) if keys is None else keys, protocol=2)]
    if data is None:
        data = b"".join(struct.pack("<q", s.values.size) + s.values.tobytes() for s in storages.values())
    return b"".join(parts) + data


def write_zip(p, state=None, data_pkl=None, data=None):
    """PyTorch's zip layout: archive/data.pkl, archive/data/<key>, archive/byteorder."""
    if data_pkl is None:
        data_pkl, storages = dump_state(state, legacy=False)
        data = {k: s.values.tobytes() for k, s in storages.items()} if data is None else data
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("archive/data.pkl", data_pkl)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
        for k, raw in (data or {}).items():
            z.writestr(f"archive/data/{k}", raw)
    return p


def state():
    return OrderedDict([("w", tensor("0", np.arange(6, dtype=np.float32).reshape(2, 3))),
                        ("n", tensor("1", np.array(7, dtype=np.int64)))])


# --- the checks ---------------------------------------------------------------------

@pytest.fixture
def marker(tmp_path):
    return tmp_path / "PWNED"


def refused(tmp_path, p, marker=None, expect=""):
    """Drive the CLI; assert one error line naming the file, exit 2, nothing run, nothing written."""
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["weights", "import-torchvision", str(p), "--out", str(out)])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {p}: "), r.output
    assert expect in lines[0], lines[0]
    if marker is not None:
        assert not marker.exists(), "the payload ran"
    assert not out.exists()
    return lines[0]


def test_the_payload_is_live_under_plain_pickle(marker):
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()


@pytest.mark.parametrize("position", ["magic", "protocol", "sys_info", "keys"])
def test_legacy_plain_data_pickles_refuse_any_global(tmp_path, marker, position):
    evil = Payload(marker)
    kw = {"magic": dict(magic=evil), "protocol": dict(protocol=evil),
          "sys_info": dict(sys_info={**SYS_INFO, "x": evil}), "keys": dict(keys=["0", evil])}[position]
    p = tmp_path / f"evil_{position}.pth"
    p.write_bytes(legacy_bytes(state(), **kw))
    part = {"magic": "magic number", "protocol": "protocol version", "sys_info": "sys_info",
            "keys": "storage key list"}[position]
    line = refused(tmp_path, p, marker, f"refused: its {part} asks for __builtin__.getattr")  # protocol 2
    assert "which a weights checkpoint never needs; nothing in the file was run" in line


def test_legacy_state_dict_refuses_a_global_off_the_allow_list(tmp_path, marker):
    p = tmp_path / "evil_main.pth"
    p.write_bytes(legacy_bytes(OrderedDict([("w", tensor("0", np.zeros(3, np.float32))), ("x", Payload(marker))])))
    refused(tmp_path, p, marker, "refused: its state dict asks for __builtin__.getattr")


def test_legacy_refuses_os_system_too(tmp_path, marker):
    class System:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    p = tmp_path / "system.pth"
    p.write_bytes(pickle.dumps(System()) + legacy_bytes(state())[len(pickle.dumps(LEGACY_MAGIC, protocol=2)):])
    refused(tmp_path, p, marker, "system, which a weights checkpoint never needs")


def test_zip_data_pkl_refuses_a_global_off_the_allow_list(tmp_path, marker):
    p = write_zip(tmp_path / "evil.pth", OrderedDict([("w", tensor("0", np.zeros(3, np.float32))),
                                                      ("x", Payload(marker))]))
    refused(tmp_path, p, marker, "refused: its data.pkl asks for __builtin__.getattr")


def test_zip_without_data_pkl(tmp_path):
    p = tmp_path / "nodata.pth"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("archive/version", "3\n")
    refused(tmp_path, p, expect="no data.pkl")


@pytest.mark.parametrize("layout", ["legacy", "zip"])
def test_truncated_storage_bytes(tmp_path, layout):
    p = tmp_path / f"short_{layout}.pth"
    full = np.arange(6, dtype=np.float32)
    st = OrderedDict([("w", tensor("0", full))])
    if layout == "legacy":
        p.write_bytes(legacy_bytes(st, data=struct.pack("<q", 6) + full[:3].tobytes()))
    else:
        write_zip(p, st, data={"0": full[:3].tobytes()})
    refused(tmp_path, p, expect="truncated")


def test_absurd_storage_size_is_refused_before_reading(tmp_path):
    p = tmp_path / "huge.pth"
    p.write_bytes(legacy_bytes(OrderedDict([("w", tensor("0", np.zeros(2, np.float32)))]),
                               data=struct.pack("<q", 1 << 60) + b"\0" * 8))
    refused(tmp_path, p, expect="claims 1152921504606846976 x 4 bytes")


@pytest.mark.parametrize("offset,size,stride", [(3, (4,), (1,)), (0, (2, 3), (4, 1)), (0, (7,), (0,))])
def test_out_of_bounds_tensor_view(tmp_path, offset, size, stride):
    s = Storage("0", np.arange(6, dtype=np.float32))
    p = tmp_path / "oob.pth"
    p.write_bytes(legacy_bytes(OrderedDict([("w", Tensor(s, offset, size, stride))])))
    refused(tmp_path, p, expect="tensor w")
    z = write_zip(tmp_path / "oob_zip.pth", OrderedDict([("w", Tensor(s, offset, size, stride))]))
    refused(tmp_path, z, expect="reaches outside its storage of 6 elements")


def test_bad_persistent_ids_and_missing_storage_keys(tmp_path):
    p = tmp_path / "pid.pth"
    p.write_bytes(legacy_bytes(state(), pid="storage"))
    refused(tmp_path, p, expect="unsupported persistent id")
    p.write_bytes(legacy_bytes(state(), keys=["0"]))
    refused(tmp_path, p, expect="storage 1 is used by the state dict but missing")
    z = write_zip(tmp_path / "pid_zip.pth", state(), data={"0": np.arange(6, dtype=np.float32).tobytes()})
    refused(tmp_path, z, expect="storage data/1 is used by data.pkl but missing")


def test_malformed_files_are_one_line(tmp_path):
    p = tmp_path / "junk.pth"
    p.write_text("hello\n")
    refused(tmp_path, p, expect="not a PyTorch checkpoint (bad magic number)")
    good = legacy_bytes(state())
    p.write_bytes(good[: len(good) // 2])  # cut inside the state-dict pickle
    refused(tmp_path, p, expect="not a readable PyTorch checkpoint")
    p.write_bytes(b"PK\x03\x04" + b"\0" * 30 + good)  # a zip header, no zip behind it
    refused(tmp_path, p, expect="not a readable PyTorch checkpoint (BadZipFile")
    z = write_zip(tmp_path / "bad.pth", data_pkl=b"\x80\x02garbage")
    refused(tmp_path, z, expect="not a readable PyTorch checkpoint (UnpicklingError")


def test_a_valid_state_dict_of_another_model_is_one_line(tmp_path):
    p = tmp_path / "other.pth"
    p.write_bytes(legacy_bytes(state()))
    refused(tmp_path, p, expect="not torchvision's mobilenet_v2 (missing features.0.0.weight)")


@pytest.mark.parametrize("layout", ["legacy", "zip"])
def test_valid_hand_built_checkpoints_read_back(tmp_path, layout):
    shared = Storage("2", np.arange(12, dtype=np.float32))
    st = state()
    st["t"] = Tensor(shared, 0, (3, 4), (1, 3))        # a transposed view: column-major
    st["s"] = Tensor(shared, 5, (2, 2), (4, 1))        # an offset view into the same storage
    st["e"] = Tensor(Storage("3", np.zeros(0, np.float32)), 0, (0, 5), (5, 1))
    p = tmp_path / f"ok_{layout}.pth"
    if layout == "legacy":
        p.write_bytes(legacy_bytes({"state_dict": st}))
    else:
        write_zip(p, st)
    sd = read_state_dict(p)
    assert list(sd) == ["w", "n", "t", "s", "e"]
    np.testing.assert_array_equal(sd["w"], np.arange(6, dtype=np.float32).reshape(2, 3))
    assert sd["w"].dtype == np.float32 and sd["n"].dtype == np.int64 and sd["n"].shape == () and sd["n"] == 7
    np.testing.assert_array_equal(sd["t"], np.arange(12, dtype=np.float32).reshape(4, 3).T)
    np.testing.assert_array_equal(sd["s"], [[5, 6], [9, 10]])
    assert sd["e"].shape == (0, 5)


def test_read_state_dict_raises_edgetl_error_naming_the_file(tmp_path, marker):
    p = tmp_path / "evil.pth"
    p.write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(EdgetlError) as e:
        read_state_dict(p)
    assert e.value.exit_code == 2 and str(e.value).startswith(f"{p}: refused") and "\n" not in str(e.value)
    assert not marker.exists()
