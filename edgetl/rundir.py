"""The run directory: the one place that names its files and reads them back.

A run directory is written by ``edgetl train`` (or ``distill``) and extended by
calibrate, export, verify, bundle and the model card. Every other module asks
this one for a path or a reader, so a file is renamed here or nowhere::

    RUN/
      model.keras  labels.txt  config.yaml  split.json      (train)
      metrics.json  history.json  curves.png  confusion.png  (train)
      manifest.json                                          (written last: the run is finished)
      checkpoints/                                           (only while unfinished)
      checkpoints/view-cache/                                (the view cache's shards, unless --cache-dir)
      calibration/  export/model_<quant>.<format>[.json]     (calibrate, export)
                    export/model_<quant>.required_operators.config   (export of .ort)
      report.json  report.md  verify_*.png  MODEL_CARD.md    (verify, card)
      adapt.json                                             (adapt: the adapted run's report)
      .edgetl.lock                                           (while a process writes the run: pid, host, start)
      device-results/browser-<device>.json                   (serve: results posted by the browser check)
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetl import artifacts, escape, formats, yaml_io
from edgetl.errors import EdgetlError
from edgetl.types import PathLike

if TYPE_CHECKING:  # pragma: no cover
    from edgetl.config import TrainConfig

MODEL = "model.keras"
LABELS = "labels.txt"
CONFIG = "config.yaml"
SPLIT = "split.json"
METRICS = "metrics.json"
HISTORY = "history.json"
CURVES = "curves.png"
CONFUSION = "confusion.png"
CONFUSION_MATRICES = "confusion.npz"  # above 30 classes, instead of inline in metrics.json
MANIFEST = "manifest.json"
CHECKPOINTS = "checkpoints"
VIEW_CACHE = "view-cache"  # RUN/checkpoints/view-cache/: the on-disk view cache (edgetl.data.viewcache), unless --cache-dir
WORKERS = "workers"  # RUN/checkpoints/workers/worker-<i>.json: multi-worker announcements (edgetl.training.distributed)
TIMINGS = "timings.json"  # RUN/checkpoints/timings.json: phase 1's time, for a resumed run's summary
CALIBRATION = "calibration"
EXPORT = "export"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
VERIFY_PLOTS = {"accuracy_latency": "verify_accuracy_latency.png", "sizes": "verify_sizes.png",
                "confusion": "verify_confusion.png"}
ROBUSTNESS_PLOT = "verify_robustness.png"  # verify --robustness
CARD = "MODEL_CARD.md"
DISTILL = "distill.json"
DISTILL_CONFIG = "distill_config.json"
ADAPT = "adapt.json"
STUDENT_ALONE = "student_alone"
DEVICE_RESULTS = "device-results"  # RUN/device-results/: results.json files posted by `edgetl serve`'s page
SIDECAR_SUFFIX = ".json"  # export/model_int8.tflite -> export/model_int8.tflite.json
MODEL_SUFFIXES = formats.SUFFIXES  # every registered format's (edgetl.formats)

LOCK = ".edgetl.lock"

TRAIN_FILES = (MODEL, LABELS, CONFIG, SPLIT, HISTORY, METRICS, CURVES, CONFUSION)
# what later stages derived from a trained model: stale once it is retrained (train --force)
DERIVED = (CALIBRATION, EXPORT, REPORT_JSON, REPORT_MD, *VERIFY_PLOTS.values(), ROBUSTNESS_PLOT, CARD, DISTILL,
           DISTILL_CONFIG, ADAPT, STUDENT_ALONE, CONFUSION_MATRICES)


def artifact_file(fmt: str, quant: str) -> str:
    """Path of an exported artifact relative to the run directory."""
    return f"{EXPORT}/model_{quant}{formats.get(fmt).suffix}"


def sidecar(path: PathLike) -> Path:
    """The JSON sidecar (labels, input contract, preprocessing) beside an exported model."""
    p = Path(path)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def format_sidecars(path: PathLike) -> dict[str, Path]:
    """The files its format writes beside an exported model, by sidecar suffix (edgetl.formats):
    export/model_int8.ort -> {".required_operators.config": export/model_int8.required_operators.config}."""
    p = Path(path)
    f = formats.of_file(p)
    return {s: p.with_name(p.stem + s) for s in (f.sidecars if f else ())}


# ---------------------------------------------------------------- manifest ----
def read_manifest(folder: PathLike) -> dict[str, Any]:
    p = Path(folder) / MANIFEST
    if not p.exists():
        return {}
    try:
        man = json.loads(p.read_text())
    except ValueError:
        raise EdgetlError(f"{p}: not valid JSON; it was edited or damaged. Delete it and rerun the last stage") from None
    if not isinstance(man, dict):
        raise EdgetlError(f"{p}: not an edgetl manifest (expected a JSON object)")
    return man


def update_manifest(folder: PathLike, section: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Merge ``payload`` under ``section`` of the folder's manifest (atomically)."""
    man = read_manifest(folder)
    man.setdefault("created", artifacts.now_iso())
    man["updated"] = artifacts.now_iso()
    man["versions"] = artifacts.package_versions()
    man[section] = payload
    artifacts.write_json(Path(folder) / MANIFEST, man)
    return man


# ----------------------------------------------------------------- readers ----
def read_labels(run_dir: PathLike) -> list[str]:
    p = Path(run_dir) / LABELS
    if not p.exists():
        raise EdgetlError(f"{run_dir}: no {LABELS}; give a run directory written by 'edgetl train'")
    return [line for line in p.read_text().splitlines() if line.strip()]


def run_of(model_path: PathLike) -> Path | None:
    """The run directory a model file belongs to: the folder holding labels.txt, beside the
    file or above it (export/)."""
    p = Path(model_path)
    return next((d for d in (p.parent, p.parent.parent) if (d / LABELS).exists()), None)


def labels_near(model_path: PathLike) -> list[str] | None:
    """labels.txt beside a model file or in the run directory above it (export/)."""
    d = run_of(model_path)
    return read_labels(d) if d is not None else None


def resize_near(model_path: PathLike) -> str | None:
    """The resize mode of the run a model file belongs to (a .keras file has no sidecar)."""
    import yaml

    d = run_of(model_path)
    if d is None or not (d / CONFIG).exists():
        return None
    try:
        cfg = yaml_io.load((d / CONFIG).read_text())
    except (yaml.YAMLError, OSError, UnicodeDecodeError):
        return None
    return cfg.get("resize") if isinstance(cfg, dict) and isinstance(cfg.get("resize"), str) else None


def load_run_config(run_dir: PathLike) -> TrainConfig:
    import yaml

    from edgetl.config import TrainConfig

    p = Path(run_dir) / CONFIG
    if not p.exists():
        raise EdgetlError(f"{run_dir}: no {CONFIG}; give a run directory written by 'edgetl train'")
    try:
        raw = yaml_io.load(p.read_text())
    except yaml.YAMLError as e:
        raise EdgetlError(f"{p}: not valid YAML ({yaml_io.problem(e)}); it was edited or damaged") from None
    except UnicodeDecodeError:
        raise EdgetlError(f"{p}: not UTF-8 text; it was edited or damaged") from None
    if not isinstance(raw, dict):
        raise EdgetlError(f"{p}: expected a mapping of training options")
    return TrainConfig.from_dict(raw, where=str(p))


def read_json(path: PathLike) -> dict[str, Any]:
    p = Path(path)
    try:
        out = json.loads(p.read_text())
    except FileNotFoundError:
        raise EdgetlError(f"{p}: missing; the run is incomplete (rerun the stage that writes it)") from None
    except ValueError:
        raise EdgetlError(f"{p}: not valid JSON; it was edited or damaged") from None
    if not isinstance(out, dict):
        raise EdgetlError(f"{p}: expected a JSON object")
    return out


def is_run_dir(path: PathLike) -> bool:
    """A run directory (finished or not) rather than a folder of data: training wrote its
    labels and config there."""
    d = Path(path)
    return (d / LABELS).is_file() and (d / CONFIG).is_file()


def is_finished(run_dir: PathLike) -> bool:
    d = Path(run_dir)
    return (d / MODEL).is_file() and "train" in read_manifest(d)


def resume_hint(run_dir: PathLike) -> str:
    """The command that finishes an interrupted run, with its real paths."""
    d = Path(run_dir)
    kind, data = "train", "DATA"
    try:
        cfg = load_run_config(d)
        data = cfg.data or data
    except EdgetlError:
        pass
    if (d / DISTILL_CONFIG).exists():
        kind = "distill"
        try:
            teacher = json.loads((d / DISTILL_CONFIG).read_text()).get("teacher")
            kind = f"distill --teacher {escape.shell(teacher)}" if teacher else kind
        except ValueError:
            pass
    return f"edgetl {kind} {escape.shell(data)} --out {escape.shell(d)} --resume"


@dataclass
class Run:
    """A finished run directory, as later stages read it: model, labels, config, split."""

    dir: Path
    labels: list[str]
    config: TrainConfig
    split: dict[str, Any] = field(default_factory=dict)

    @property
    def model_path(self) -> Path:
        return self.dir / MODEL

    @property
    def export_dir(self) -> Path:
        return self.dir / EXPORT

    @property
    def img_size(self) -> int:
        return int(self.config.img_size or 0)

    @property
    def resize(self) -> str:
        return self.config.resize

    def path(self, name: str) -> Path:
        return self.dir / name

    def manifest(self) -> dict[str, Any]:
        return read_manifest(self.dir)

    def split_files(self, name: str) -> tuple[list[str], list[int]]:
        rows = self.split.get(name) or []
        return [r["file"] for r in rows], [int(r["label"]) for r in rows]

    def held_out(self) -> tuple[str, list[str], list[int]]:
        """('test' or 'val', files, labels): the split models are scored on."""
        for name in ("test", "val"):
            files, labels = self.split_files(name)
            if files:
                return name, files, labels
        raise EdgetlError(f"{self.dir / SPLIT}: lists no val or test images")

    def load_model(self) -> Any:
        from edgetl.nets.model import load_keras

        return load_keras(self.model_path)


def open_run(run_dir: PathLike, finished: bool = True) -> Run:
    """Open a run directory for a later stage. ``finished`` (the default) refuses a run
    without its manifest: training wrote it last, so without it the run is unfinished."""
    d = Path(run_dir)
    if not d.is_dir():
        raise EdgetlError(f"{d}: no such run directory; give a folder written by 'edgetl train'")
    if not (d / MODEL).exists() or (finished and "train" not in read_manifest(d)):
        if (d / CHECKPOINTS).exists() or (d / CONFIG).exists():
            raise EdgetlError(f"{d}: an unfinished run (no {MANIFEST}); finish it first: {resume_hint(d)}")
        raise EdgetlError(f"{d}: no {MODEL}; give a finished run directory written by 'edgetl train'")
    split = read_json(d / SPLIT) if (d / SPLIT).exists() else {}
    return Run(d, read_labels(d), load_run_config(d), split)


def list_artifacts(run_dir: PathLike) -> list[dict[str, Any]]:
    """The Keras reference and every exported model of the run, with their quantization."""
    d = Path(run_dir)
    out: list[dict[str, Any]] = [{"name": MODEL, "path": d / MODEL, "format": "keras", "quant": "fp32"}]
    exp = d / EXPORT
    for p in sorted(exp.glob("*")) if exp.is_dir() else []:
        if p.suffix in MODEL_SUFFIXES and not p.name.startswith("."):
            side = sidecar(p)
            meta: dict[str, Any] = {}
            if side.exists():
                try:
                    meta = json.loads(side.read_text())
                except ValueError:
                    meta = {}
            quant = meta.get("quantization") if isinstance(meta, dict) else None
            out.append({"name": p.name, "path": p, "format": formats.BY_SUFFIX[p.suffix].name,
                        "quant": quant or p.stem.replace("model_", "")})
    return out


# ------------------------------------------------------------------ locking ----
_held: dict[str, int] = {}  # run directories this process holds, with their nesting depth


def _proc_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux /proc), to tell a live
    holder from a new process that reuses a dead one's pid; None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def _alive(holder: dict[str, Any]) -> bool:
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) writes nothing any more
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z":
            return False
    except (OSError, IndexError):
        pass
    start = _proc_start(pid)
    return holder.get("proc_start") is None or start is None or start == holder.get("proc_start")


def _read_lock(lock: Path) -> dict[str, Any] | None:
    try:
        holder = json.loads(lock.read_text()[:4096])
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    from edgetl.escape import shown

    started = str(holder.get("started", "?"))
    hhmm = started[11:16] + " UTC" if len(started) >= 16 else "?"
    host = holder.get("host")
    on = f" on {shown(host, 64)}" if host and host != socket.gethostname() else ""
    return (f"pid {shown(holder.get('pid', '?'), 16)}{on} ({shown(holder.get('command', 'edgetl'), 64)}, "
            f"started {hhmm})")


def _acquire(d: Path, command: str, echo: Callable[[str], None]) -> None:
    lock = d / LOCK
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": artifacts.now_iso(), "command": command,
          "proc_start": _proc_start(os.getpid())}
    for _ in range(5):
        tmp = d / f"{LOCK}.{os.getpid()}"
        tmp.write_text(json.dumps(me))
        try:
            os.link(tmp, lock)  # atomic, and refused when a lock is there: the file appears whole or not at all
            return
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        holder = _read_lock(lock)
        if holder is None:  # released meanwhile
            continue
        same_host = holder.get("host") == socket.gethostname()
        if holder and (not same_host or _alive(holder)):
            fix = "wait for it or stop it" if same_host else \
                f"wait for it, or delete {lock} if that process is gone"
            raise EdgetlError(f"{d} is being written by {_describe(holder)}; {fix}", exit_code=1)
        echo(f"warning: {lock} was left by {_describe(holder) if holder else 'an unreadable lock'}, which is no "
             f"longer running; taking the run directory over")
        stale = d / f"{LOCK}.stale.{os.getpid()}"
        try:
            os.rename(lock, stale)  # of two processes taking over, one renames it; the other retries
            stale.unlink()
        except FileNotFoundError:
            continue
    raise EdgetlError(f"{lock}: could not take the run directory's lock; delete the file if no edgetl process "
                      "writes this run", exit_code=1)


@contextlib.contextmanager
def writing(run_dir: PathLike, command: str, echo: Callable[[str], None] = print,
            create: bool = True) -> Iterator[Path]:
    """Hold the run directory's lock while ``command`` writes it: a second writer (another
    process) is refused in one line naming the holder; a lock left by a process that is gone
    is taken over with a warning. Nested use in one process (``edgetl run`` training, then
    exporting) holds it once. A directory this call created is removed again when the
    command leaves nothing in it (a refused input). ``create=False``: a missing directory is
    not made (the command reports it)."""
    d = Path(run_dir)
    if not create and not d.is_dir():
        yield d
        return
    key = str(d.resolve())
    if key in _held:
        _held[key] += 1
        try:
            yield d
        finally:
            _held[key] -= 1
        return
    created = not d.exists()
    d.mkdir(parents=True, exist_ok=True)
    _acquire(d, command, echo)
    _held[key] = 1
    try:
        yield d
    finally:
        del _held[key]
        holder = _read_lock(d / LOCK)
        if holder and holder.get("pid") == os.getpid():
            (d / LOCK).unlink(missing_ok=True)
        if created and d.is_dir() and not any(d.iterdir()):
            d.rmdir()


def clear_derived(run_dir: PathLike) -> list[str]:
    """Before a finished run is retrained in place (train --force): remove its manifest (the
    run is unfinished from here on) and every file later stages derived from the old model,
    by the names this module gives them; nothing else in the folder is touched."""
    import shutil

    d = Path(run_dir)
    gone = []
    for name in (MANIFEST, *DERIVED):
        p = d / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
        else:
            continue
        gone.append(name)
    return gone


# ------------------------------------------------------------------ search ----
# SEARCH/ (edgetl search --out SEARCH): candidates/<key>/ are ordinary run directories
SEARCH_CANDIDATES = "candidates"
SEARCH_MEASURE = "measure"                # random-weight exports timed before training
SEARCH_MEASUREMENTS = "measurements.json"
SEARCH_JSON = "search.json"
SEARCH_MD = "search.md"
SEARCH_PLOT = "search_front.png"


def search_candidate_dir(search_dir: PathLike, key: str) -> Path:
    """The run directory of one search candidate (``key`` from :class:`edgetl.search.space.Candidate`)."""
    return Path(search_dir) / SEARCH_CANDIDATES / key
