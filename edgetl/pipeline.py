"""`edgetl run CONFIG`: the whole workflow from one validated YAML file.

Stages: train (or distill) -> calibrate -> export -> verify -> card. Each stage
records its inputs' hash in the run's manifest when it finishes; a re-run skips
stages whose inputs did not change, ``from_stage`` reruns from there, and an
interrupted stage resumes (training from its checkpoints, export artifact by
artifact) without redoing the finished ones."""
from __future__ import annotations

import dataclasses
import json
import re
import time
import typing
from pathlib import Path

import yaml

from edgetl import artifacts
from edgetl.config import TrainConfig
from edgetl.errors import EdgetlError

STAGES = ("train", "calibrate", "export", "verify", "card")
STARTER = Path(__file__).parent / "resources" / "pipeline.yaml"

SECTIONS: dict[str, dict[str, tuple[str, object]]] = {
    # key: (type, default)
    "calibrate": {"size": ("int", 200)},
    "export": {"formats": ("list", ["tflite", "onnx"]), "quants": ("list", ["fp32", "fp16", "dynamic", "int8"]),
               "io_type": ("str", "float32"), "calib_method": ("str", "minmax"), "onnx_format": ("str", "qoperator"),
               "per_channel": ("bool", True), "max_drop": ("float", 1.0)},
    "verify": {"threads": ("int", 2), "max_drop": ("float", 1.0), "min_agreement": ("float", 0.95),
               "max_latency_ms": ("float?", None), "runs": ("int", 100), "batch": ("int", 8)},
    "distill": {"teacher": ("str", None), "kd_alpha": ("float", 0.1), "temperature": ("float", 4.0),
                "unlabeled": ("str?", None)},
}


def _train_types() -> dict[str, tuple[str, object]]:
    hints = typing.get_type_hints(TrainConfig)
    out = {}
    for f in dataclasses.fields(TrainConfig):
        if f.name in ("data", "out"):
            continue
        h = hints[f.name]
        args = typing.get_args(h)
        base = next((a for a in args if a is not type(None)), h) if args else h
        out[f.name] = ({int: "int", float: "float", str: "str", bool: "bool"}[base] + ("?" if args else ""),
                       f.default)
    return out


def _check_type(where: str, key: str, value, kind: str):
    opt = kind.endswith("?")
    kind = kind.rstrip("?")
    if value is None:
        if opt:
            return None
        raise EdgetlError(f"{where}: {key} = null; a value is required ({kind})")
    ok = {"int": isinstance(value, int) and not isinstance(value, bool),
          "float": isinstance(value, (int, float)) and not isinstance(value, bool),
          "str": isinstance(value, (str, int, float)) and not isinstance(value, bool),
          "bool": isinstance(value, bool),
          "list": isinstance(value, (list, str))}[kind]
    if not ok:
        allowed = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
                   "list": "a list"}[kind]
        raise EdgetlError(f"{where}: {key} = {value!r} has the wrong type; expected {allowed}")
    if kind == "float":
        return float(value)
    if kind == "str":
        return str(value)
    if kind == "list" and isinstance(value, str):
        return [s.strip() for s in value.split(",") if s.strip()]
    return value


@dataclasses.dataclass
class Pipeline:
    source: str
    data: str
    out: str
    train: TrainConfig
    calibrate: dict
    export: dict
    verify: dict
    distill: dict | None = None

    @property
    def run_dir(self) -> Path:
        return Path(self.out)

    def resolved(self) -> dict:
        d = {"data": self.data, "out": self.out, "train": {k: v for k, v in self.train.to_dict().items()
                                                           if k not in ("data", "out")},
             "calibrate": self.calibrate, "export": self.export, "verify": self.verify}
        if self.distill:
            d["distill"] = self.distill
        return d


def parse_value(text: str):
    return yaml.safe_load(text)


def load(path, overrides: list[str] = ()) -> Pipeline:
    """Read and validate a pipeline file; ``overrides`` are 'section.key=value' strings."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise EdgetlError(f"{path}: no such pipeline file; create one with: edgetl init --out {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark else ""
        raise EdgetlError(f"{where}: not valid YAML{at}: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict):
        raise EdgetlError(f"{where}: expected a mapping of sections (data, out, train, ...)")
    for o in overrides:
        if "=" not in o:
            raise EdgetlError(f"--set {o}: use SECTION.KEY=VALUE, e.g. train.alpha=0.5")
        k, v = o.split("=", 1)
        parts = k.strip().split(".")
        node = raw
        for p in parts[:-1]:
            node = node.setdefault(p, {}) if isinstance(node.get(p, {}), dict) else node
        node[parts[-1]] = parse_value(v)
    allowed_top = {"data", "out", "train", *SECTIONS}
    for k in raw:
        if k not in allowed_top:
            raise EdgetlError(f"{where}: unknown key '{k}'; allowed: {', '.join(sorted(allowed_top))}")
    if "data" not in raw or raw["data"] in (None, ""):
        raise EdgetlError(f"{where}: data is missing; set data: to the folder of class sub-folders")
    data = str(_check_type(where, "data", raw["data"], "str"))
    if not Path(data).expanduser().is_dir():
        raise EdgetlError(f"{where}: data = {data!r}: no such folder; point it at DATA/<class>/<images>")
    out = str(_check_type(where, "out", raw.get("out") or f"models/{path.stem}", "str"))

    def section(name, spec):
        given = raw.get(name) or {}
        if not isinstance(given, dict):
            raise EdgetlError(f"{where}: {name} must be a mapping of keys")
        for k in given:
            if k not in spec:
                raise EdgetlError(f"{where}: unknown key '{name}.{k}'; allowed: {', '.join(spec)}")
        return {k: _check_type(where, f"{name}.{k}", given.get(k, d), t) if k in given else d
                for k, (t, d) in spec.items()}

    tr = section("train", _train_types())
    cfg = TrainConfig(data=data, out=out, **tr)
    try:
        cfg.validate()
    except EdgetlError as e:
        raise EdgetlError(f"{where}: train: {_as_key(e.message)}") from None
    p = Pipeline(where, data, out, cfg, section("calibrate", SECTIONS["calibrate"]), section("export", SECTIONS["export"]),
                 section("verify", SECTIONS["verify"]), section("distill", SECTIONS["distill"]) if raw.get("distill") else None)
    _validate_values(p, where)
    return p


def _as_key(message: str) -> str:
    """A CLI error ("--epochs-head -1: ...") in the YAML file's terms ("epochs_head -1: ...")."""
    return re.sub(r"--([a-z][a-z0-9-]*)", lambda m: m.group(1).replace("-", "_"), message)


def _validate_values(p: Pipeline, where: str) -> None:
    from edgetl.export import ExportOptions

    try:
        ExportOptions(formats=tuple(p.export["formats"]), quants=tuple(p.export["quants"]),
                      io_type=p.export["io_type"], calib_method=p.export["calib_method"],
                      onnx_format=p.export["onnx_format"], max_drop=p.export["max_drop"]).validate()
    except EdgetlError as e:
        raise EdgetlError(f"{where}: export: {_as_key(e.message)}") from None
    checks = [("calibrate.size", p.calibrate["size"] >= 1, ">= 1"),
              ("verify.threads", p.verify["threads"] >= 1, ">= 1"),
              ("verify.runs", p.verify["runs"] >= 100, ">= 100"),
              ("verify.batch", p.verify["batch"] >= 1, ">= 1"),
              ("verify.min_agreement", 0 <= p.verify["min_agreement"] <= 1, "between 0 and 1"),
              ("verify.max_drop", p.verify["max_drop"] >= 0, ">= 0")]
    if p.distill:
        checks += [("distill.kd_alpha", 0 <= p.distill["kd_alpha"] <= 1, "between 0 and 1"),
                   ("distill.temperature", p.distill["temperature"] > 0, "> 0"),
                   ("distill.teacher", bool(p.distill["teacher"]), "a run directory or .keras file"),
                   ("distill.unlabeled", p.distill.get("unlabeled") is None
                    or Path(p.distill["unlabeled"]).expanduser().is_dir(), "an existing folder of images, or null")]
    for key, ok, allowed in checks:
        if not ok:
            sec, k = key.split(".")
            raise EdgetlError(f"{where}: {key} = {getattr(p, sec)[k]!r}; allowed: {allowed}")


# -------------------------------------------------------------------- running ----
def _h(obj) -> str:
    return artifacts.sha256_text(json.dumps(obj, sort_keys=True, default=str))


class PipelineRunner:
    def __init__(self, pipe: Pipeline, from_stage: str | None = None, force: bool = False, echo=print):
        if from_stage is not None and from_stage not in STAGES:
            raise EdgetlError(f"--from {from_stage}: use one of {', '.join(STAGES)}")
        self.p, self.echo, self.force = pipe, echo, force
        self.from_idx = STAGES.index(from_stage) if from_stage else None
        self.run_dir = pipe.run_dir

    def state(self) -> dict:
        return artifacts.read_manifest(self.run_dir).get("pipeline", {}).get("stages", {})

    def record(self, stage: str, inputs: str, seconds: float) -> None:
        man = artifacts.read_manifest(self.run_dir)
        pl = man.get("pipeline", {"stages": {}})
        pl["config"] = self.p.resolved()
        pl["stages"][stage] = {"inputs_hash": inputs, "seconds": round(seconds, 2), "finished": artifacts.now_iso()}
        artifacts.update_manifest(self.run_dir, "pipeline", pl)

    def inputs(self, stage: str) -> str:
        p, d = self.p, self.run_dir
        if stage == "train":
            from edgetl.data import scan

            ds = scan(p.data, p.train.val_split, p.train.seed, p.train.strict)
            return _h({"train": p.resolved()["train"], "distill": p.distill, "data": ds.fingerprint()})
        if stage == "calibrate":
            return _h({"calibrate": p.calibrate, "split": artifacts.sha256_file(d / "split.json")})
        if stage == "export":
            man = d / "calibration" / "manifest.json"
            return _h({"export": p.export, "model": artifacts.sha256_file(d / "model.keras"),
                       "calibration": artifacts.sha256_file(man) if man.exists() else None})
        if stage == "verify":
            arts = artifacts.read_manifest(d).get("export", {}).get("artifacts", [])
            return _h({"verify": p.verify, "model": artifacts.sha256_file(d / "model.keras"),
                       "artifacts": sorted(a.get("sha256", "") for a in arts)})
        return _h({"report": artifacts.sha256_file(d / "report.json") if (d / "report.json").exists() else None,
                   "metrics": artifacts.sha256_file(d / "metrics.json"), "edgetl": artifacts.package_versions()
                   .get("edgetl")})

    def run(self) -> dict:
        t_all = time.perf_counter()
        timings = {}
        report = None
        for i, stage in enumerate(STAGES):
            t0 = time.perf_counter()
            redo = self.force or (self.from_idx is not None and i >= self.from_idx)
            done = self.state().get(stage)
            try:
                h = self.inputs(stage)
            except FileNotFoundError:
                h = None
            if not redo and done and h is not None and done["inputs_hash"] == h and self.outputs_exist(stage):
                self.echo(f"== stage {stage}: skipped (inputs unchanged since {done['finished']})")
                timings[stage] = {"seconds": 0.0, "skipped": True}
                if stage == "verify":
                    report = json.loads((self.run_dir / "report.json").read_text())
                continue
            self.echo(f"== stage {stage} ...")
            result = getattr(self, "stage_" + stage)(redo)
            if stage == "verify":
                report = result
            if h is None:  # its inputs did not exist before it ran (a predecessor was missing)
                h = self.inputs(stage)
            secs = time.perf_counter() - t0
            self.record(stage, h, secs)
            timings[stage] = {"seconds": round(secs, 2), "skipped": False}
            self.echo(f"== stage {stage}: done in {secs:.1f}s")
        self.echo("")
        parts = [f"{s} skipped" if t["skipped"] else f"{s} {t['seconds']:.1f}s" for s, t in timings.items()]
        self.echo(f"pipeline finished in {time.perf_counter() - t_all:.1f}s: " + ", ".join(parts))
        if report is not None:
            from edgetl.verify import table

            self.echo(table(report))
        self.echo(f"model card: {self.run_dir / 'MODEL_CARD.md'}")
        return {"timings": timings, "report": report}

    def outputs_exist(self, stage: str) -> bool:
        d = self.run_dir
        need = {"train": ["model.keras", "metrics.json"], "calibrate": ["calibration/manifest.json"],
                "export": [], "verify": ["report.json"], "card": ["MODEL_CARD.md"]}[stage]
        return all((d / n).exists() for n in need)

    # ---- stages ----
    def stage_train(self, redo: bool):
        from edgetl.train import CKPT_DIR, Trainer

        cfg = dataclasses.replace(self.p.train)
        resume = (self.run_dir / CKPT_DIR).exists()
        if resume:
            self.echo(f"resuming the interrupted training in {self.run_dir}")
        if self.p.distill:
            from edgetl.distill import DistillConfig, distill

            dc = DistillConfig(teacher=self.p.distill["teacher"], kd_alpha=self.p.distill["kd_alpha"],
                               temperature=self.p.distill["temperature"], unlabeled=self.p.distill.get("unlabeled"))
            return distill(cfg, dc, resume=resume, echo=self.echo)
        return Trainer(cfg, resume=resume, echo=self.echo).run()

    def stage_calibrate(self, redo: bool):
        from edgetl.calibrate import calibrate

        return calibrate(self.p.data, self.p.calibrate["size"], self.run_dir / "calibration", self.p.train.seed,
                         self.p.train.val_split, echo=self.echo)

    def stage_export(self, redo: bool):
        from edgetl.export import ExportOptions, export

        e = self.p.export
        opts = ExportOptions(formats=tuple(e["formats"]), quants=tuple(e["quants"]), io_type=e["io_type"],
                             calibration=str(self.run_dir / "calibration"), calib_method=e["calib_method"],
                             onnx_format=e["onnx_format"], per_channel=e["per_channel"], max_drop=e["max_drop"],
                             force=redo and self.force)
        res = export(self.run_dir, opts, echo=self.echo)
        failed = [a for a in res if a.status == "failed"]
        if failed:
            self.echo(f"warning: {len(failed)} artifact(s) failed; verify goes on with the others")
        return res

    def stage_verify(self, redo: bool):
        from edgetl.verify import Gates, verify

        v = self.p.verify
        return verify(self.run_dir, threads=v["threads"], gates=Gates(v["max_drop"], v["min_agreement"],
                                                                        v["max_latency_ms"]),
                      runs=v["runs"], batch=v["batch"], echo=self.echo)

    def stage_card(self, redo: bool):
        from edgetl.card import write_card

        return write_card(self.run_dir, self.p, echo=self.echo)


def run(config, from_stage=None, force=False, overrides=(), echo=print) -> dict:
    return PipelineRunner(load(config, overrides), from_stage, force, echo).run()


def write_starter(out) -> Path:
    out = Path(out)
    if out.exists():
        raise EdgetlError(f"{out}: already exists; choose another --out or remove it")
    artifacts.copy_file(STARTER, out)
    return out
