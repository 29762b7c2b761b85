"""Atomic writes, hashing and manifests: every artifact is written to a temp
file next to its destination and renamed into place, so a crash never leaves a
half-written file under the final name."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; rename it onto ``dest`` on success.

    The temp name keeps ``dest``'s suffix (Keras and converters check it)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix if suffix is not None else "".join(dest.suffixes) or ".tmp"
    fd, name = tempfile.mkstemp(prefix=f".{dest.stem}.", suffix=suffix, dir=dest.parent)
    os.close(fd)
    os.unlink(name)
    tmp = Path(name)
    try:
        yield tmp
        if tmp.is_dir() and dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()


def write_bytes(dest, data: bytes) -> Path:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    return Path(dest)


def write_text(dest, text: str) -> Path:
    return write_bytes(dest, text.encode("utf-8"))


NON_FINITE = "non_finite"


def write_json(dest, obj: Any, note: bool = False) -> Path:
    """Strict JSON (RFC 8259 has no NaN or Infinity, and most parsers refuse them): a NaN or
    infinite number is written as null; with ``note`` (reports), a top-level object lists
    where under ``non_finite``."""
    where: list[str] = []
    clean = _finite(obj, "", where)
    if where and note and isinstance(clean, dict):
        clean[NON_FINITE] = {"note": "these values were NaN or infinite (not a number JSON can hold); written as null",
                             "fields": where[:100], "count": len(where)}
    return write_text(dest, json.dumps(clean, indent=2, sort_keys=False, default=_jsonable, allow_nan=False) + "\n")


def _finite(o: Any, path: str, where: list[str]) -> Any:
    """``o`` with numpy values as Python ones and NaN/infinite floats as None (their paths in ``where``)."""
    import math

    try:
        import numpy as np

        if isinstance(o, np.ndarray):
            o = o.tolist()
        elif isinstance(o, np.generic):
            o = o.item()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, float):
        if math.isfinite(o):
            return o
        where.append(path or "(value)")
        return None
    if isinstance(o, dict):
        return {k: _finite(v, f"{path}.{k}" if path else str(k), where) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v, f"{path}[{i}]", where) for i, v in enumerate(o)]
    return o


def write_yaml(dest, obj: Any) -> Path:
    return write_text(dest, yaml.safe_dump(obj, sort_keys=False))


def copy_file(src, dest) -> Path:
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dest)


def _jsonable(o):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def package_versions() -> dict[str, str]:
    from importlib import metadata

    names = ["edgetl", "tensorflow", "keras", "tf-keras", "tensorflow-model-optimization",
             "onnx", "onnxruntime", "tf2onnx", "ai-edge-litert", "mediapipe", "numpy", "pillow"]
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            pass
    return out


def now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def file_hashes(run_dir, names) -> dict[str, str]:
    run_dir = Path(run_dir)
    return {n: sha256_file(run_dir / n) for n in names if (run_dir / n).is_file()}
