"""Calibration sets for int8 quantization: a seeded, per-class stratified sample
of training images, never of held-out ones, with a manifest of files and hashes."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from edgetl import artifacts, rundir
from edgetl.errors import EdgetlError
from edgetl.types import Echo, PathLike

DEFAULT_DIR = rundir.CALIBRATION


def stratified_sample(paths, labels, size: int, seed: int) -> list[int]:
    """Indices of a seeded sample of ``size`` items, taken round-robin over the classes."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per = {c: rng.permutation(np.flatnonzero(labels == c)).tolist() for c in classes}
    out: list[int] = []
    while len(out) < min(size, len(labels)):  # round-robin over classes: stratified
        for c in classes:
            if per[c] and len(out) < size:
                out.append(per[c].pop())
    return sorted(out)


def calibrate(data: PathLike, size: int = 200, out: PathLike = DEFAULT_DIR, seed: int = 42, val_split: float = 0.2,
              echo: Echo = print,
              test_split: float | None = None) -> Path:
    """Sample ``size`` training images of ``data`` into ``out`` (class sub-folders): the same
    seeded train/val/test split as training, so that no val or test image is used."""
    from edgetl.data import scan

    if size < 1:
        raise EdgetlError(f"--size {size}: must be at least 1")
    ds = scan(data, val_split=val_split, seed=seed, test_split=test_split)
    idx = stratified_sample(ds.train.paths, ds.train.labels, size, seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        files: list[dict[str, str]] = []
        for i in idx:
            src = Path(ds.train.paths[i])
            cls = ds.classes[int(ds.train.labels[i])]
            dest = tmp / cls / f"{len(files):05d}_{src.name}"
            dest.parent.mkdir(exist_ok=True)
            shutil.copyfile(src, dest)
            files.append({"file": str(dest.relative_to(tmp)), "source": str(src.resolve()),
                          "class": cls, "sha256": artifacts.sha256_file(src)})
        artifacts.write_json(tmp / rundir.MANIFEST, {
            "created": artifacts.now_iso(), "data": str(ds.root.resolve()), "size": len(files), "seed": seed,
            "split": "train", "classes": ds.classes, "files": files,
        })
        _swap_in(out, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    counts = {c: sum(f["class"] == c for f in files) for c in ds.classes}
    echo(f"calibration: {len(files)} training images ({', '.join(f'{c} {n}' for c, n in counts.items())}) -> {out}")
    return out


def _swap_in(out: Path, new: Path) -> None:
    """Replace ``out`` by the finished folder ``new`` (keeping a README.md that lives there)."""
    keep = out / "README.md"
    if keep.exists():
        shutil.copyfile(keep, new / "README.md")
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        old.rmdir()
        out.rename(old)
    new.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def check_overlap(calib_files, held_out_files, where: str, data: str = "DATA") -> None:
    """Refuse a calibration set that shares an image (by content) with the held-out split."""
    from edgetl.data import same_images

    clash = same_images(calib_files, held_out_files)
    if clash:
        c, h = clash[0]
        raise EdgetlError(
            f"{where}: {len(clash)} calibration image(s) are also in the run's held-out split (e.g. {c} = {h}); "
            f"calibrate from training images only: edgetl calibrate {data} --out {where}")
