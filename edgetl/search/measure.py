"""Latency, size and memory of each variant, measured before anything is trained.

An architecture's latency and size do not depend on its weights: each variant is exported
from a randomly initialised model of the same shape (backbone + the head for the task's
classes), with the same converters as ``edgetl export`` (:func:`edgetl.export.convert.convert`), and
timed in a fresh process with only its runtime (:func:`edgetl.runtime.timing.isolated_timing`, the
bundle's timing). Results are kept in the search folder and read back on a re-run.

With a device's results (``--device``), latency is predicted for that device: the device
timed some exported models of one run; the same files are timed here, and the ratio
device / here (geometric mean, per format where the device ran that format) scales every
local latency. Its error is stated: each device row predicted with the scale fitted on the
other rows (leave-one-out), or in-sample when there is only one row."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetl import artifacts, rundir
from edgetl.errors import EdgetlError
from edgetl.search.space import Variant
from edgetl.types import Echo

CALIB_IMAGES = 8  # int8 calibration of a random-weight model: only its shape matters here


def export_bytes(v: Variant, n_classes: int, seed: int = 0) -> bytes:
    """The variant's model file, from random weights of the same architecture."""
    import keras

    from edgetl import backbones
    from edgetl.export.convert import Serving, Source, convert
    from edgetl.nets import model as M

    keras.utils.set_random_seed(seed)
    bb = backbones.get(v.arch.backbone)
    base = bb.build(v.arch.size, v.arch.alpha, weights=None)
    head = M.build_head(int(base.output_shape[-1]), n_classes, 0.0, 0, 0.0)
    model, _ = M.assemble(base, bb, v.arch.size, head)
    calib = np.random.default_rng(seed).uniform(0, 255, (CALIB_IMAGES, v.arch.size, v.arch.size, 3)).astype(np.float32)
    data = convert(Source(Serving(model)), v.fmt, v.quant, calib if v.quant == "int8" else None)
    keras.backend.clear_session()
    return data


def measure_local(v: Variant, n_classes: int, folder: Path, threads: int, runs: int) -> dict[str, Any]:
    from edgetl.runtime.timing import isolated_timing

    path = folder / f"{v.key}.{v.fmt}"
    if not path.exists():
        artifacts.write_bytes(path, export_bytes(v, n_classes))
    t = isolated_timing(path, threads, runs, (v.arch.size, v.arch.size))
    return {"local_p50_ms": t["p50_ms"], "local_p90_ms": t["p90_ms"], "size_bytes": path.stat().st_size,
            "memory_kb": None if t.get("memory_mb") is None else float(t["memory_mb"]) * 1024.0,
            "threads": threads, "runs": runs}


@dataclass
class DeviceScale:
    """Latency on the device = latency here x scale (of the format, else overall)."""
    device: str
    source: str
    overall: float
    by_format: dict[str, float]
    rows: list[dict[str, Any]] = field(default_factory=list)
    error_max: float | None = None       # relative error of the prediction on the device's own rows
    error_mean: float | None = None
    error_basis: str = ""

    def scale(self, fmt: str) -> float:
        return self.by_format.get(fmt, self.overall)

    def describe(self) -> str:
        per = ", ".join(f"{f} x{s:.2f}" for f, s in sorted(self.by_format.items()))
        err = "; no error estimate (one model measured there)"
        if self.error_max is not None and self.error_mean is not None:
            err = (f"; its error on the {len(self.rows)} model(s) measured there: mean {100 * self.error_mean:.0f}%, "
                   f"max {100 * self.error_max:.0f}% ({self.error_basis})")
        return (f"latency scaled to {self.device} from {self.source}: device p50 / this machine's p50 of the same "
                f"files, geometric mean per format ({per}; overall x{self.overall:.2f}){err}")

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "source": self.source, "overall": self.overall, "by_format": self.by_format,
                "rows": self.rows, "error_max": self.error_max, "error_mean": self.error_mean,
                "error_basis": self.error_basis, "description": self.describe()}


def _gmean(xs: list[float]) -> float:
    return float(math.exp(sum(math.log(x) for x in xs) / len(xs)))


def fit_scale(rows: list[dict[str, Any]], device: str, source: str) -> DeviceScale:
    """Rows: {file, format, device_ms, local_ms}. Leave-one-out error when there are two or more."""
    ratios = [r["device_ms"] / r["local_ms"] for r in rows]
    fmts = sorted({r["format"] for r in rows})
    by_format = {f: _gmean([q for q, r in zip(ratios, rows) if r["format"] == f]) for f in fmts}
    ds = DeviceScale(device, source, _gmean(ratios), by_format, rows)
    if len(rows) >= 2:
        errs = []
        for i, r in enumerate(rows):
            rest = [j for j in range(len(rows)) if j != i]
            same = [ratios[j] for j in rest if rows[j]["format"] == r["format"]]
            s = _gmean(same) if same else _gmean([ratios[j] for j in rest])
            pred = r["local_ms"] * s
            r["predicted_ms"] = pred
            errs.append(abs(pred - r["device_ms"]) / r["device_ms"])
        ds.error_max, ds.error_mean, ds.error_basis = max(errs), float(np.mean(errs)), "leave-one-out"
    return ds


def find_device_run(results: Path, doc: dict[str, Any], search_dirs: list[Path]) -> Path:
    """The run whose exported models the device timed: RUN/device-results/x.json lies inside it;
    a bundle's results.json names the run, looked up beside the file and in ``search_dirs``."""
    if results.parent.name == rundir.DEVICE_RESULTS and rundir.is_run_dir(results.parent.parent):
        return results.parent.parent
    name = (doc.get("bundle") or {}).get("run") if isinstance(doc.get("bundle"), dict) else None
    if isinstance(name, str) and name and "/" not in name and name not in (".", ".."):
        for d in [results.parent, *search_dirs]:
            if rundir.is_run_dir(d / name):
                return d / name
    raise EdgetlError(f"{results}: the run whose models the device timed ({name or 'unnamed'}) was not found; put "
                      f"the run directory beside the results file (or keep the browser check's results in "
                      f"RUN/{rundir.DEVICE_RESULTS}/)")


def device_scale(results: str | Path, search_dirs: list[Path], threads: int, runs: int, echo: Echo) -> DeviceScale:
    from edgetl.runtime.timing import isolated_timing
    from edgetl.verify import device_results

    p = Path(results)
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        doc = {}
    run = find_device_run(p, doc if isinstance(doc, dict) else {}, search_dirs)
    res = device_results.load(p, run)  # validated against the run's exported files (sha256)
    cfg = rundir.load_run_config(run)
    rows = []
    for m in res["models"]:
        if "p50_ms" not in m or device_results.skipped_reason(m) is not None or "error" in m:
            continue
        f = run / rundir.EXPORT / Path(m["file"]).name
        t = isolated_timing(f, threads, runs, (int(cfg.img_size or 0),) * 2)
        rows.append({"file": f.name, "format": m["format"], "quant": m["quant"], "device_ms": float(m["p50_ms"]),
                     "local_ms": float(t["p50_ms"])})
        echo(f"  {f.name}: device {m['p50_ms']:.2f} ms, here {t['p50_ms']:.2f} ms")
    if not rows:
        raise EdgetlError(f"{p}: no model was timed on the device (all skipped or failed); run the check again "
                          f"with a runtime installed there")
    return fit_scale(rows, str(res["device"]["name"]), str(p))


class Measurements:
    """The measured variants of a search, kept in its folder (read back on a re-run)."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, dict[str, Any]] = {}
        self.fresh = False  # whether the last get() measured (rather than read back)
        if path.exists():
            try:
                d = json.loads(path.read_text())
            except ValueError:
                raise EdgetlError(f"{path}: not valid JSON; it was edited or damaged. Delete it (the models are "
                                  f"measured again)") from None
            self.data = d.get("variants", {}) if isinstance(d, dict) else {}

    def get(self, v: Variant, n_classes: int, threads: int, runs: int, folder: Path) -> dict[str, Any]:
        rec = self.data.get(v.key)
        self.fresh = rec is None or rec.get("n_classes") != n_classes or rec.get("threads") != threads
        if rec is None or self.fresh:
            rec = {**measure_local(v, n_classes, folder, threads, runs), "n_classes": n_classes}
            self.data[v.key] = rec
            artifacts.write_json(self.path, {"variants": self.data})
        return rec
