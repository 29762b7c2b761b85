"""Crafted PyTorch checkpoints that are small on disk and huge to read (memory bombs), built
by hand from pickle opcodes and zipfile. Used by tests/test_faults_bombs.py; run as a script
to write the full-size ones the reliability page measures:

    python tests/ckpt_bombs.py OUT_DIR     # -> OUT_DIR/{message,message_zip,shared,zipbomb}.pth
"""
from __future__ import annotations

import pickle
import struct
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
from test_faults_pickle import LEGACY_MAGIC, SYS_INFO, Storage, Tensor, dump_state

PROTO = b"\x80\x02"


def _nested_list_ops(levels: int) -> bytes:
    """Pickle opcodes (no STOP) leaving on the stack a list of 2 references to a list of 2
    references to ... ``levels`` deep: a few bytes a level, 2**levels items when rendered."""
    ops = b"]" + b"q\x00"  # EMPTY_LIST, BINPUT 0
    for i in range(1, levels + 1):
        ops += b"](" + b"h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"e" + b"q" + bytes([i])  # [prev, prev]
    return ops


def message_bomb(levels: int = 40) -> bytes:
    """Legacy layout whose protocol-version field is the nested list: refusing it renders it."""
    return (pickle.dumps(LEGACY_MAGIC, protocol=2) + PROTO + _nested_list_ops(levels) + b".")


def message_bomb_zip(path: Path, levels: int = 40) -> Path:
    """Zip layout whose data.pkl asks for a persistent id holding the nested list."""
    pkl = PROTO + b"(" + b"X" + struct.pack("<I", 7) + b"storage" + _nested_list_ops(levels) + b"tQ."
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/byteorder", "little")
    return path


def shared_storage(path: Path, numel: int = 1 << 20, entries: int = 200) -> Path:
    """Zip layout: one storage of ``numel`` float32 zeros (deflated: a few KB) that ``entries``
    state-dict entries all view whole; reading copies each entry out."""
    s = Storage("0", np.zeros(0, np.float32))
    s.values = _Lazy(numel)
    state = OrderedDict((f"w{i}", Tensor(s, 0, (numel,), (1,))) for i in range(entries))
    pkl, _ = dump_state(state, legacy=False)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/byteorder", "little")
        _zeros_member(z, "archive/data/0", numel * 4)
    return path


def zip_bomb(path: Path, nbytes: int = 600 << 20) -> Path:
    """Zip layout: one tensor whose storage member is ``nbytes`` of deflated zeros (about
    1,000 to 1 on disk); an honest declaration, so only a budget refuses it unread."""
    numel = nbytes // 4
    s = Storage("0", np.zeros(0, np.float32))
    s.values = _Lazy(numel)
    pkl, _ = dump_state(OrderedDict([("w", Tensor(s, 0, (numel,), (1,)))]), legacy=False)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/byteorder", "little")
        _zeros_member(z, "archive/data/0", nbytes)
    return path


def legacy_shared(numel: int = 1 << 16, entries: int = 4000) -> bytes:
    """Legacy layout: one stored storage of ``numel`` float32 (its bytes are in the file) viewed
    whole by ``entries`` entries."""
    s = Storage("0", np.zeros(numel, np.float32))
    state = OrderedDict((f"w{i}", Tensor(s, 0, (numel,), (1,))) for i in range(entries))
    main_pkl, storages = dump_state(state, legacy=True)
    head = b"".join(pickle.dumps(x, protocol=2) for x in (LEGACY_MAGIC, 1001, SYS_INFO))
    return head + main_pkl + pickle.dumps(["0"], protocol=2) + struct.pack("<q", numel) + s.values.tobytes()


class _Lazy:
    """Stands in for a storage's values while pickling: only .size and .dtype are read."""

    def __init__(self, numel: int):
        self.size, self.dtype = numel, np.dtype(np.float32)


def _zeros_member(z: zipfile.ZipFile, name: str, nbytes: int, chunk: int = 8 << 20) -> None:
    zero = bytes(chunk)
    with z.open(name, "w", force_zip64=True) as f:
        for i in range(0, nbytes, chunk):
            f.write(zero[: min(chunk, nbytes - i)])


if __name__ == "__main__":  # the full-size files of the issue, for /usr/bin/time -v
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    (out / "message.pth").write_bytes(message_bomb(40))
    message_bomb_zip(out / "message_zip.pth", 40)
    shared_storage(out / "shared.pth", numel=4 << 20, entries=120)          # 16 MB viewed 120 times: 2.0 GB
    (out / "legacy_shared.pth").write_bytes(legacy_shared(1 << 16, 8000))  # 256 KB viewed 8,000 times: 2.1 GB
    zip_bomb(out / "zipbomb.pth", 4 << 30)                                 # 4.3 GB of zeros
    for p in sorted(out.glob("*.pth")):
        print(f"{p.name}: {p.stat().st_size:,} bytes")
