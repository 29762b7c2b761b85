"""A device's results.json (written by a bundle's edgetl_check.py) is untrusted
input: it is read and checked against an explicit schema, and matched against
the run's current exported models, before any of its rows reach a report.

Every violation is one line naming the file and the field, with the fix, and
exit code 2. Schema 2 (see edgetl/resources/edgetl_check.py):

    {"schema": 2, "created": str, "threads": int > 0, "samples": int > 0,
     "bundle": {"run": str, "created": str, "samples": int > 0,
                "models": [{"file": str, "sha256": 64 hex}, ...]},
     "device": {"name": str, "hostname"?, "cpu"?, "machine"?, "platform"?: str, "cores"?: int > 0},
     "models": [{"file": str, "sha256": 64 hex, "format": "tflite"|"onnx"|"ort", "quant": str, "size_bytes": int >= 0,
                 and either "skipped": str (the runtime is not installed on the device: reported as
                 skipped, not a failure), or "error": str (the runtime could not load or run the model: a
                 failure), or "runtime", "runtime_version": str, "threads": int > 0,
                 "agreement_reference", "agreement_keras", "max_abs_dprob_reference",
                 "max_abs_dprob_keras": number in [0, 1], "p50_ms" <= "p90_ms" <= "p99_ms", "mean_ms": number > 0,
                 "runs": int > 0, "warmup": int >= 0}, ...]}

Check scripts bundled before "skipped" existed wrote a missing runtime as "error" (their only
error); such an error ("No module named ...", "no TFLite runtime ...", "no MediaPipe ...") is read
as skipped too.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, NoReturn

from edgetl import artifacts, formats, rundir
from edgetl.errors import EdgetlError
from edgetl.types import PathLike
from edgetl.verify.gates import Gates

SCHEMA = 2
MAX_BYTES = 10 * 1024 * 1024
FORMATS = {f.suffix: f.name for f in formats.FORMATS.values()}  # suffix -> format: what export writes
RERUN = "re-run edgetl_check.py on the device"
_HEX64 = re.compile(r"[0-9a-f]{64}")
# what older check scripts wrote under "error" when the runtime was not installed (an ImportError)
_MISSING_RUNTIME = re.compile(r"(No module named |no TFLite runtime|no MediaPipe|no ONNX runtime)")


def skipped_reason(m: dict) -> str | None:
    """Why the device skipped this model row (its runtime is not installed there), or None."""
    if "skipped" in m:
        return str(m["skipped"])
    if "error" in m and _MISSING_RUNTIME.match(str(m["error"])):
        return f"runtime not installed on the device ({m['error']})"
    return None


def _show(v: Any) -> str:
    try:
        s = json.dumps(v)
    except (TypeError, ValueError):  # pragma: no cover - json.loads only yields JSON types
        s = repr(v)
    return s if len(s) <= 80 else s[:77] + "..."


def _at(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


class _Checker:
    def __init__(self, path: Path, run_dir: Path):
        self.path, self.run_dir = path, run_dir
        self.rebundle = (f"re-bundle (edgetl bundle {run_dir} --out bundle.zip) and re-run edgetl_check.py "
                         f"on the device")

    # -- one-line refusals -------------------------------------------------------------
    def fail(self, where: str, value: Any, why: str, fix: str = RERUN) -> NoReturn:
        raise EdgetlError(f"{self.path}: {where} = {_show(value)}: {why}; {fix}", 2)

    def get(self, obj: dict, key: str, where: str) -> Any:
        if key not in obj:
            raise EdgetlError(f"{self.path}: {_at(where, key)}: missing; {RERUN}", 2)
        return obj[key]

    # -- typed fields ------------------------------------------------------------------
    def obj(self, obj: dict, key: str, where: str) -> dict:
        v = self.get(obj, key, where)
        if not isinstance(v, dict):
            self.fail(_at(where, key), v, "must be an object")
        return v

    def array(self, obj: dict, key: str, where: str) -> list:
        v = self.get(obj, key, where)
        if not isinstance(v, list):
            self.fail(_at(where, key), v, "must be a list")
        return v

    def text(self, obj: dict, key: str, where: str, optional: bool = False, max_len: int = 200) -> str | None:
        if optional and obj.get(key) is None:
            return None
        v = self.get(obj, key, where)
        if not isinstance(v, str) or not v or len(v) > max_len or not v.isprintable():
            self.fail(_at(where, key), v, f"must be a non-empty printable string of at most {max_len} characters")
        return v

    def integer(self, obj: dict, key: str, where: str, lo: int, optional: bool = False) -> int | None:
        if optional and obj.get(key) is None:
            return None
        v = self.get(obj, key, where)
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            self.fail(_at(where, key), v, "must be a positive integer" if lo == 1 else f"must be an integer >= {lo}")
        return v

    def number(self, obj: dict, key: str, where: str, unit: bool = False) -> float:
        """A real number: in [0, 1] when ``unit``, else positive; never a bool, a string, NaN or infinite."""
        v = self.get(obj, key, where)
        real = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if unit and not (real and 0.0 <= v <= 1.0 + 1e-6):
            self.fail(_at(where, key), v, "must be a number in [0, 1]")
        if not unit and not (real and v > 0):
            self.fail(_at(where, key), v, "must be a positive number")
        return float(v)

    def sha(self, obj: dict, key: str, where: str) -> str:
        v = self.get(obj, key, where)
        if not isinstance(v, str) or not _HEX64.fullmatch(v):
            self.fail(_at(where, key), v, "must be a sha256 (64 lowercase hex digits)")
        return v

    def file_name(self, obj: dict, key: str, where: str) -> str:
        v = self.text(obj, key, where) or ""
        if "/" in v or "\\" in v or ".." in v or v.startswith(".") or Path(v).suffix not in FORMATS:
            self.fail(_at(where, key), v, f"must be a plain {', '.join(FORMATS)} file name (no path, no '..')")
        return v

    # -- the document ------------------------------------------------------------------
    def check(self, res: Any) -> dict:
        if not isinstance(res, dict):
            self.fail("(top level)", res, "must be a JSON object")
        if "schema" not in res:
            raise EdgetlError(f"{self.path}: schema: missing (written by an older edgetl_check.py); "
                              f"{self.rebundle}", 2)
        if isinstance(res["schema"], bool) or res["schema"] != SCHEMA:
            self.fail("schema", res["schema"], f"unknown version (this edgetl reads schema {SCHEMA})",
                      f"bundle and verify with the same edgetl version; {self.rebundle}")
        self.text(res, "created", "")
        self.integer(res, "threads", "", 1)
        samples = self.integer(res, "samples", "", 1) or 0
        dev = self.obj(res, "device", "")
        self.text(dev, "name", "device")
        for k in ("hostname", "cpu", "machine", "platform"):
            self.text(dev, k, "device", optional=True)
        self.integer(dev, "cores", "device", 1, optional=True)
        shipped = self.bundle(self.obj(res, "bundle", ""), samples)
        models = self.array(res, "models", "")
        if not models:
            self.fail("models", models, "no model was checked")
        seen: set[str] = set()
        for i, m in enumerate(models):
            self.model(m, f"models[{i}]", shipped, seen)
        return res

    def bundle(self, b: dict, samples: int) -> dict[str, str]:
        """The bundle the check ran: the same run, the same sample count, and what it shipped."""
        run = self.text(b, "run", "bundle")
        if run != self.run_dir.resolve().name:
            self.fail("bundle.run", run, f"these results are for another run, not {self.run_dir}",
                      f"give the run that was bundled, or {self.rebundle}")
        self.text(b, "created", "bundle")
        n = self.integer(b, "samples", "bundle", 1)
        if samples != n:
            self.fail("samples", samples, f"the bundle holds {n} sample images")
        shipped: dict[str, str] = {}
        for j, m in enumerate(self.array(b, "models", "bundle")):
            w = f"bundle.models[{j}]"
            if not isinstance(m, dict):
                self.fail(w, m, "must be an object")
            shipped[self.file_name(m, "file", w)] = self.sha(m, "sha256", w)
        return shipped

    def model(self, m: Any, w: str, shipped: dict[str, str], seen: set[str]) -> None:
        if not isinstance(m, dict):
            self.fail(w, m, "must be an object")
        name = self.file_name(m, "file", w)
        if name not in shipped:
            self.fail(f"{w}.file", name, "not a model the bundle shipped")
        if name in seen:
            self.fail(f"{w}.file", name, "listed twice")
        seen.add(name)
        sha = self.sha(m, "sha256", w)
        if sha != shipped[name]:
            self.fail(f"{w}.sha256", sha, f"the {name} that ran differs from the bundle's ({shipped[name][:12]}...)",
                      "copy the bundle to the device again and re-run edgetl_check.py")
        fmt = self.get(m, "format", w)
        if fmt != FORMATS[Path(name).suffix]:
            self.fail(f"{w}.format", fmt, f"must be {FORMATS[Path(name).suffix]!r} for {name}")
        self.text(m, "quant", w)
        size = self.integer(m, "size_bytes", w, 0)
        if "skipped" in m and "error" in m:
            self.fail(f"{w}.skipped", m["skipped"], "a row is either skipped or an error, not both")
        if "skipped" in m:
            self.text(m, "skipped", w, max_len=1000)
        elif "error" in m:
            self.text(m, "error", w, max_len=1000)
        else:
            self.text(m, "runtime", w)
            self.text(m, "runtime_version", w)
            self.integer(m, "threads", w, 1)
            for k in ("agreement_reference", "agreement_keras", "max_abs_dprob_reference", "max_abs_dprob_keras"):
                self.number(m, k, w, unit=True)
            p = [self.number(m, k, w) for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms")]
            if not p[0] <= p[1] <= p[2]:
                self.fail(f"{w}.p90_ms" if p[0] > p[1] else f"{w}.p99_ms", p[1] if p[0] > p[1] else p[2],
                          f"percentiles must satisfy p50 <= p90 <= p99 (p50 {p[0]:g}, p90 {p[1]:g}, p99 {p[2]:g})")
            self.integer(m, "runs", w, 1)
            self.integer(m, "warmup", w, 0)
        # the run's current export must be the very file the bundle shipped
        here = self.run_dir / rundir.EXPORT / name
        if not here.is_file():
            self.fail(f"{w}.file", name, f"{here} does not exist (no longer exported?)", self.rebundle)
        if artifacts.sha256_file(here) != sha:
            self.fail(f"{w}.sha256", sha, f"does not match the run's current {here} (re-exported since the bundle?)",
                      self.rebundle)
        if size != here.stat().st_size:
            self.fail(f"{w}.size_bytes", size, f"{here} is {here.stat().st_size} bytes")


def check(doc: Any, where: PathLike, run_dir) -> dict:
    """An already parsed results document (e.g. posted by the browser check), validated as
    :func:`load` validates a file; ``where`` names it in errors."""
    return _Checker(Path(where), Path(run_dir)).check(doc)


def load(path, run_dir) -> dict:
    """results.json at ``path``, parsed and validated for the run at ``run_dir``; raises EdgetlError (exit 2)."""
    p = Path(path)
    if not p.is_file():
        raise EdgetlError(f"{p}: no such results file; run the bundle's edgetl_check.py on the device first", 2)
    size = p.stat().st_size
    if size > MAX_BYTES:
        raise EdgetlError(f"{p}: {size / 1e6:.1f} MB, larger than any results.json ({MAX_BYTES // 2**20} MB at "
                          f"most); give the results.json written by edgetl_check.py", 2)
    try:
        res = json.loads(p.read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        msg = str(e).splitlines()[0][:100] if str(e) else type(e).__name__
        raise EdgetlError(f"{p}: not valid JSON ({msg}); give the results.json written by edgetl_check.py", 2) \
            from None
    return _Checker(p, Path(run_dir)).check(res)


def device_rows(path, gates: Gates, run_dir) -> list[dict]:
    """Report rows from a validated results.json, labelled with the device and gated like local rows."""
    res = load(path, run_dir)
    dev = res["device"]
    name = dev["name"]
    rows = []
    for m in res["models"]:
        base = {"artifact": m["file"], "device": name, "format": m["format"], "quant": m["quant"],
                "size_bytes": m["size_bytes"], "sha256": m["sha256"], "samples": res["samples"]}
        why = skipped_reason(m)
        if why is not None:  # not run there: neither a pass nor a failure
            rows.append({**base, "runtime": None, "status": "skipped", "skipped_reason": why, "failed_gates": []})
            continue
        if "error" in m:
            rows.append({**base, "runtime": None, "status": "fail", "failed_gates": [f"on device: {m['error']}"]})
            continue
        row = {**base, "runtime": m["runtime"], "agreement": m["agreement_keras"],
               "max_abs_dprob": m["max_abs_dprob_reference"], "p50_ms": m["p50_ms"], "p90_ms": m["p90_ms"],
               "p99_ms": m["p99_ms"], "spread_p90_p50": m["p90_ms"] / m["p50_ms"], "threads": m["threads"],
               "cpu": dev.get("cpu")}
        fails = gates.check(row)
        row["status"], row["failed_gates"] = ("fail" if fails else "pass"), fails
        rows.append(row)
    return rows
