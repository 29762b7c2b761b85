"""Calibration sets for int8 quantization: a seeded, per-class stratified sample
of training images, never of held-out ones, with a manifest of files and hashes.

Two forms:

- ``calibrate_run(RUN)``: from the run's own training split (its split.json), into
  RUN/calibration/, recorded in the run's manifest. Export uses it by default.
- ``calibrate(DATA, out=DIR)``: from DATA re-split as training splits it, into a new
  folder DIR outside DATA; given to export with ``--calibration DIR``.

Nothing a user owns is replaced: a folder is only ever replaced when it holds an
edgetl calibration manifest and no file that manifest does not list."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgetl import artifacts, rundir
from edgetl.errors import EdgetlError
from edgetl.types import Echo, PathLike

KIND = "edgetl-calibration"  # the folder manifest's "kind": what `edgetl calibrate` wrote
KEEP = ("README.md",)        # a note the user left in a calibration folder survives a re-run


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


# ------------------------------------------------------------------ the two forms ----
def calibrate(data: PathLike, size: int = 200, out: PathLike | None = None, seed: int = 42, val_split: float = 0.2,
              echo: Echo = print,
              test_split: float | None = None) -> Path:
    """Sample ``size`` training images of ``data`` into the new folder ``out`` (class
    sub-folders): the same seeded train/val/test split as training, so that no val or test
    image is used. ``out`` must not exist, or be a calibration folder this function wrote;
    it may not lie inside ``data``."""
    from edgetl.data.dataset import scan

    if size < 1:
        raise EdgetlError(f"--size {size}: must be at least 1")
    if out is None or str(out) == "":
        raise EdgetlError(f"{data}: give the folder to write with --out DIR (a new folder outside the data; then "
                          f"edgetl export RUN --calibration DIR), or sample a run's own training split: "
                          f"edgetl calibrate RUN")
    out = Path(out)
    root = Path(data).expanduser()
    if root.is_dir() and _inside(out, root):
        raise EdgetlError(f"--out {out}: inside the data folder {data}; the calibration set would become part of the "
                          f"data. Choose a folder outside it (nothing was written)")
    check_writable(out)
    ds = scan(data, val_split=val_split, seed=seed, test_split=test_split)
    idx = stratified_sample(ds.train.paths, ds.train.labels, size, seed)
    picks = [(str(ds.train.paths[i]), ds.classes[int(ds.train.labels[i])]) for i in idx]
    files = write_set(out, picks, {"data": str(ds.root.resolve()), "seed": seed, "split": "train",
                                   "val_split": val_split, "test_split": test_split, "classes": ds.classes})
    _say(files, ds.classes, out, echo)
    return out


def calibrate_run(run_dir: PathLike, size: int = 200, seed: int | None = None, echo: Echo = print) -> Path:
    """Sample ``size`` images of the run's own training split (split.json) into
    RUN/calibration/, seeded with the run's seed unless ``seed`` is given, and record it
    in the run's manifest. Training images whose bytes equal a held-out image's are left
    out (export would refuse them as a leak)."""
    from edgetl.data.dataset import same_images

    if size < 1:
        raise EdgetlError(f"--size {size}: must be at least 1")
    run = rundir.open_run(run_dir)
    seed = int(run.config.seed) if seed is None else seed
    tr, lab = run.split_files("train")
    if not tr:
        raise EdgetlError(f"{run.dir / rundir.SPLIT}: lists no training images; retrain the run, or give a folder of "
                          f"training images: edgetl calibrate DATA --out DIR")
    missing = [f for f in tr if not Path(f).is_file()]
    if len(missing) == len(tr):
        raise EdgetlError(f"{missing[0]}: the run's training images are gone ({len(missing)} listed in "
                          f"{run.dir / rundir.SPLIT}); put the data back where it was trained from")
    held = run.split_files("val")[0] + run.split_files("test")[0]
    dup = {f for f, _ in same_images([f for f in tr if f not in missing], held)}
    pool = [i for i, f in enumerate(tr) if f not in dup and f not in missing]
    if missing:
        echo(f"warning: {len(missing)} of {len(tr)} training images are missing (e.g. {missing[0]}); sampling the rest")
    if dup:
        echo(f"note: {len(dup)} training image(s) are byte-identical to a val/test image; not sampled")
    idx = stratified_sample([tr[i] for i in pool], [lab[i] for i in pool], size, seed)
    picks = [(tr[pool[i]], run.labels[lab[pool[i]]]) for i in idx]
    out = run.dir / rundir.CALIBRATION
    check_writable(out)
    files = write_set(out, picks, {"run": str(run.dir.resolve()), "data": run.split.get("root"), "seed": seed,
                                   "split": "train", "classes": run.labels})
    rundir.update_manifest(run.dir, "calibration", {
        "folder": rundir.CALIBRATION, "size": len(files), "seed": seed, "split": "train", "classes": run.labels,
        "images_sha256": set_hash([run.dir / rundir.CALIBRATION / f["file"] for f in files]),
        "left_out": {"identical_to_held_out": len(dup), "missing": len(missing)}, "created": artifacts.now_iso()})
    _say(files, run.labels, out, echo)
    return out


def _say(files: list[dict[str, str]], classes: list[str], out: Path, echo: Echo) -> None:
    counts = {c: sum(f["class"] == c for f in files) for c in classes}
    echo(f"calibration: {len(files)} training images ({', '.join(f'{c} {n}' for c, n in counts.items())}) -> {out}")


def set_hash(files) -> str:
    """The hash export records for a calibration set: over its images' bytes, in order."""
    return artifacts.sha256_text("\n".join(artifacts.sha256_file(f) for f in files))


# ----------------------------------------------------------- writing, owned folders ----
def _inside(path: Path, folder: Path) -> bool:
    p, f = Path(os.path.abspath(path.expanduser())), Path(os.path.abspath(folder))
    try:
        p, f = p.resolve(), f.resolve()
    except OSError:
        pass
    return p == f or f in p.parents


def read_folder_manifest(folder: PathLike) -> dict[str, Any] | None:
    """The calibration manifest of ``folder``, or None when it has none that edgetl wrote."""
    p = Path(folder) / rundir.MANIFEST
    if not p.is_file():
        return None
    try:
        man = json.loads(p.read_text())
    except (ValueError, OSError, UnicodeDecodeError):
        return None
    if not isinstance(man, dict) or not isinstance(man.get("files"), list):
        return None
    legacy = man.get("split") == "train" and isinstance(man.get("classes"), list)  # written before "kind"
    return man if man.get("kind") == KIND or legacy else None


def check_writable(out: Path) -> None:
    """Refuse an ``out`` edgetl did not write: an existing file, a non-empty folder without a
    calibration manifest, or a calibration folder holding files its manifest does not list."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise EdgetlError(f"--out {out}: exists and is not a folder edgetl calibrate wrote; choose a new folder "
                          f"(nothing was changed)")
    if not out.is_dir() or not any(out.iterdir()):
        return
    man = read_folder_manifest(out)
    if man is None:
        raise EdgetlError(f"--out {out}: exists and was not written by edgetl calibrate (no calibration "
                          f"{rundir.MANIFEST}); choose a new folder (nothing was changed)")
    listed = {str(f.get("file")) for f in man["files"] if isinstance(f, dict)} | {rundir.MANIFEST, *KEEP}
    extra = [p for p in sorted(out.rglob("*")) if not p.is_dir() and str(p.relative_to(out)) not in listed]
    if extra:
        raise EdgetlError(f"--out {out}: holds {len(extra)} file(s) edgetl calibrate did not write (e.g. {extra[0]}); "
                          f"move them out or choose a new folder (nothing was changed)")


def write_set(out: Path, picks: list[tuple[str, str]], meta: dict[str, Any]) -> list[dict[str, str]]:
    """Copy ``picks`` ((source, class) pairs) into class sub-folders of a new folder beside
    ``out`` with its manifest, then swap it in for ``out`` (see :func:`check_writable`)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        files: list[dict[str, str]] = []
        for src_name, cls in picks:
            src = Path(src_name)
            dest = tmp / cls / f"{len(files):05d}_{src.name}"
            dest.parent.mkdir(exist_ok=True)
            shutil.copyfile(src, dest)
            files.append({"file": str(dest.relative_to(tmp)), "source": str(src.resolve()),
                          "class": cls, "sha256": artifacts.sha256_file(src)})
        artifacts.write_json(tmp / rundir.MANIFEST, {"kind": KIND, "created": artifacts.now_iso(), **meta,
                                                     "size": len(files), "files": files})
        _swap_in(out, tmp)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)  # our own temporary copy only
    return files


def _swap_in(out: Path, new: Path) -> None:
    """Replace ``out`` (absent, empty, or checked by :func:`check_writable`) by the finished
    folder ``new``, keeping a README.md that lives there. The old folder's files are removed
    one by one (only what its manifest lists), never as a tree."""
    for k in KEEP:
        if (out / k).is_file():
            shutil.copyfile(out / k, new / k)
    if not out.exists():
        new.rename(out)
        return
    check_writable(out)  # again: nothing was added since the first check
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
    old.rmdir()
    out.rename(old)
    new.rename(out)
    man = read_folder_manifest(old) or {"files": []}
    for f in [*(str(x.get("file")) for x in man["files"] if isinstance(x, dict)), rundir.MANIFEST, *KEEP]:
        p = old / f
        if p.is_file() and _inside(p, old):
            p.unlink()
    for d in sorted((p for p in old.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        try:
            d.rmdir()
        except OSError:
            pass
    try:
        old.rmdir()
    except OSError:  # something appeared meanwhile: left where it is, not deleted
        pass


# -------------------------------------------------------------------- checks at export ----
def check_classes(folder: PathLike, files: list[str], labels: list[str], fix: str) -> None:
    """Refuse a calibration set of other classes than the run's: by its manifest's class
    list, else by its class sub-folders (which must be among the run's labels)."""
    folder = Path(folder)
    man = read_folder_manifest(folder)
    if man is not None and isinstance(man.get("classes"), list):
        theirs = [str(c) for c in man["classes"]]
        if set(theirs) != set(labels):
            raise EdgetlError(f"{folder}: a calibration set of other classes ({_few(theirs)}) than the run's "
                              f"({_few(labels)}); {fix}")
        return
    rel = [Path(os.path.relpath(f, folder)).parts for f in files]
    if rel and all(len(r) > 1 for r in rel):
        theirs = sorted({r[0] for r in rel})
        other = [c for c in theirs if c not in labels]
        if other:
            raise EdgetlError(f"{folder}: a calibration set of other classes ({_few(theirs)}) than the run's "
                              f"({_few(labels)}); {fix}")


def _few(names: list[str], k: int = 5) -> str:
    return ", ".join(names[:k]) + (f" and {len(names) - k} more" if len(names) > k else "")


def check_overlap(calib_files, held_out_files, where: str, fix: str) -> None:
    """Refuse a calibration set that shares an image (by content) with the held-out split."""
    from edgetl.data.dataset import same_images

    clash = same_images(calib_files, held_out_files)
    if clash:
        c, h = clash[0]
        raise EdgetlError(
            f"{where}: {len(clash)} calibration image(s) are also in the run's held-out split (e.g. {c} = {h}); "
            f"{fix}")
