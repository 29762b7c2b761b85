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
      device-results/browser-<device>.json                   (serve: results posted by the browser check)
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetl import artifacts
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
VIEW_CACHE = "view-cache"  # RUN/checkpoints/view-cache/: the on-disk view cache (edgetl.viewcache), unless --cache-dir
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
MODEL_SUFFIXES = (".tflite", ".onnx", ".ort")
ORT_CONFIG_SUFFIX = ".required_operators.config"  # export/model_int8.ort -> export/model_int8.required_operators.config

TRAIN_FILES = (MODEL, LABELS, CONFIG, SPLIT, HISTORY, METRICS, CURVES, CONFUSION)


def artifact_file(fmt: str, quant: str) -> str:
    """Path of an exported artifact relative to the run directory."""
    return f"{EXPORT}/model_{quant}.{fmt}"


def sidecar(path: PathLike) -> Path:
    """The JSON sidecar (labels, input contract, preprocessing) beside an exported model."""
    p = Path(path)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def ort_config(path: str | Path) -> Path:
    """The required-operators config beside an ORT model (named as onnxruntime's converter names it)."""
    p = Path(path)
    return p.with_name(p.stem + ORT_CONFIG_SUFFIX)


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
        cfg = yaml.safe_load((d / CONFIG).read_text())
    except yaml.YAMLError:
        return None
    return cfg.get("resize") if isinstance(cfg, dict) and isinstance(cfg.get("resize"), str) else None


def load_run_config(run_dir: PathLike) -> TrainConfig:
    import yaml

    from edgetl.config import TrainConfig

    p = Path(run_dir) / CONFIG
    if not p.exists():
        raise EdgetlError(f"{run_dir}: no {CONFIG}; give a run directory written by 'edgetl train'")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError:
        raise EdgetlError(f"{p}: not valid YAML; it was edited or damaged") from None
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
            kind = f"distill --teacher {teacher}" if teacher else kind
        except ValueError:
            pass
    return f"edgetl {kind} {data} --out {d} --resume"


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
        from edgetl.model import load_keras

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
            out.append({"name": p.name, "path": p, "format": p.suffix[1:],
                        "quant": quant or p.stem.replace("model_", "")})
    return out
