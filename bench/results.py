"""One results file per benchmark: ``bench/results/<NAME>.json``, written atomically.

Every figure the README and docs show comes from one of these files (rendered by
``bench/render_tables.py``), so each file says what produced it::

    {"name", "commit", "dirty", "date", "machine": {cpu, cores, ram_gib, python, tensorflow},
     "load": {"start": [1, 5, 15 min], "end": [...]}, "command": "python bench/x.py --seeds 3",
     "runs": [every run's values], "summary": {..., "table": {"columns": [...], "rows": [[...]],
     "notes": [...]}}}

``summary["table"]`` is what the docs show: cells are already formatted strings, chosen by the
benchmark; the renderer only lays them out. Usage in a benchmark::

    rec = Recorder("train")          # at start: command, commit, load
    ...
    rec.write(runs, summary)         # at the end: load again, then the file

This module never imports TensorFlow (the renderer and the CI check must stay fast)."""
from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from edgetl.runtime.timing import cpu_model  # numpy only: no TensorFlow at import

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
NAMES = ("train", "train-guide-224", "train-torch", "train-model-maker", "train-peers", "profile-0.35-128",
         "profile-1-224", "recipe", "distill", "scale",
         "runtimes", "entropy", "adapt", "search")


def _git(*args: str) -> str:
    """git's output without its trailing newline (leading spaces kept: `status --porcelain` starts lines with
    one, and stripping it made `bench/results/x.json` read as `ench/results/x.json`, so a tree whose only
    change was a results file counted as dirty)."""
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.rstrip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def commit() -> tuple[str, bool]:
    """(HEAD, dirty): dirty when a tracked file other than a results file differs from HEAD."""
    head = _git("rev-parse", "HEAD") or "unknown"
    changed = [line[3:] for line in _git("status", "--porcelain", "--untracked-files=no").splitlines()]
    return head, any(not p.startswith("bench/results/") for p in changed)


def _ram_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine() -> dict[str, Any]:
    def version(pkg: str) -> str | None:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "ram_gib": _ram_gib(),
            "python": platform.python_version(), "tensorflow": version("tensorflow")}


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def command_line(argv: list[str] | None = None) -> str:
    """The exact argv as a shell line, the script as it was typed (e.g. bench/bench_train.py)."""
    return shlex.join(["python", *(sys.argv if argv is None else argv)])


class Recorder:
    """Captures what produced a benchmark's figures (command, commit, machine, load at start)
    and writes the results file at the end."""

    def __init__(self, name: str, argv: list[str] | None = None, out_dir: Path | None = None):
        if name not in NAMES:
            raise ValueError(f"unknown results name {name!r}; one of {', '.join(NAMES)}")
        self.name = name
        # BENCH_RESULTS_DIR: a trial run that must not replace the committed results file
        self.out_dir = Path(out_dir or os.environ.get("BENCH_RESULTS_DIR") or RESULTS)
        self.command = command_line(argv)
        self.commit, self.dirty = commit()
        self.date = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.load_start = loadavg()
        self.machine = machine()

    @property
    def path(self) -> Path:
        return self.out_dir / f"{self.name}.json"

    def record(self, runs: list[Any], summary: dict[str, Any]) -> dict[str, Any]:
        if "table" in summary:
            check_table(summary["table"], self.name)
        return {"name": self.name, "commit": self.commit, "dirty": self.dirty, "date": self.date,
                "machine": self.machine, "load": {"start": self.load_start, "end": loadavg()},
                "command": self.command, "runs": runs, "summary": summary}

    def write(self, runs: list[Any], summary: dict[str, Any]) -> Path:
        write_json_atomic(self.path, self.record(runs, summary))
        print(f"results: {self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path}",
              flush=True)
        return self.path


def write_json_atomic(dest: Path, obj: Any) -> None:
    """Write JSON to a temporary file beside ``dest`` and rename it into place."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.stem}.", suffix=".json", dir=dest.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, default=_jsonable)
            f.write("\n")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _jsonable(o: Any) -> Any:
    """numpy scalars and arrays, paths, tuples-in-sets: as plain JSON."""
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def check_table(table: dict[str, Any], name: str) -> None:
    cols = table.get("columns")
    rows = table.get("rows")
    if not isinstance(cols, list) or not isinstance(rows, list):
        raise ValueError(f"{name}: summary['table'] needs 'columns' and 'rows' lists")
    for r in rows:
        if len(r) != len(cols):
            raise ValueError(f"{name}: table row {r!r} has {len(r)} cells for {len(cols)} columns")
