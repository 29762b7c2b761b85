"""`edgetl run CONFIG`: the whole workflow from one validated YAML file.

Stages: train (or distill) -> calibrate -> export -> verify -> card. With a ``search:``
section, search replaces train: ``out`` is the search's folder and every later stage works on
the pick's run directory (OUT/candidates/<pick>/). Each stage
records its inputs' hash in the run's manifest when it finishes; a re-run skips
stages whose inputs did not change, ``from_stage`` reruns from there, and an
interrupted stage resumes (training from its checkpoints, export artifact by
artifact) without redoing the finished ones."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import yaml

from edgetl import artifacts, escape, rundir, yaml_io
from edgetl.config import (
    CalibrateOptions,
    DistillConfig,
    ExportOptions,
    Options,
    SearchOptions,
    TrainConfig,
    VerifyOptions,
    field_doc,
    field_types,
)
from edgetl.errors import EdgetlError, OptionError
from edgetl.search import stage as search_stage
from edgetl.types import Echo, PathLike

STAGES = ("search", "train", "calibrate", "export", "verify", "card")  # search or train, not both

# section -> (options class, fields the pipeline sets itself and the file may not)
SECTIONS: dict[str, tuple[type, tuple[str, ...]]] = {
    "train": (TrainConfig, ("data", "out")),
    "distill": (DistillConfig, ("sweep", "compare")),
    "search": (SearchOptions, ("data", "out")),
    "calibrate": (CalibrateOptions, ("seed", "val_split", "test_split")),
    "export": (ExportOptions, ("calibration", "calib_size", "force", "seed")),
    "verify": (VerifyOptions, ("data", "out")),
}
# keys holding paths: relative ones are taken from the pipeline file's folder
PATH_KEYS = {("", "data"), ("", "out"), ("distill", "teacher"), ("distill", "unlabeled"), ("train", "weights"),
             ("search", "device")}
OPTIONAL = ("distill", "search")  # sections that are off unless the file has them


def section_spec(name: str) -> dict[str, tuple[str, Any]]:
    cls, exclude = SECTIONS[name]
    return field_types(cls, exclude)


def _check_type(key: str, value: Any, kind: str) -> Any:
    opt = kind.endswith("?")
    kind = kind.rstrip("?")
    if value is None:
        if opt:
            return None
        raise EdgetlError(f"{key} = null; a value is required ({kind})")
    ok = {"int": isinstance(value, int) and not isinstance(value, bool),
          "float": isinstance(value, (int, float)) and not isinstance(value, bool),
          "str": isinstance(value, (str, int, float)) and not isinstance(value, bool),
          "bool": isinstance(value, bool),
          "list": isinstance(value, (list, str))}[kind]
    if not ok:
        allowed = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
                   "list": "a list"}[kind]
        raise EdgetlError(f"{key} = {value!r} has the wrong type; expected {allowed}")
    if kind == "float":
        return float(value)
    if kind == "str":
        return str(value)
    if kind == "list":
        return tuple(s.strip() for s in value.split(",") if s.strip()) if isinstance(value, str) else tuple(value)
    return value


@dataclasses.dataclass
class Pipeline:
    source: str
    data: str
    out: str
    train: TrainConfig
    calibrate: CalibrateOptions
    export: ExportOptions
    verify: VerifyOptions
    distill: DistillConfig | None = None
    search: SearchOptions | None = None
    given: dict[str, frozenset[str]] = dataclasses.field(default_factory=dict)  # keys the file (or --set) set

    @property
    def run_dir(self) -> Path:
        """The run directory, or with a search: the search's folder (the run is its pick's)."""
        return Path(self.out)

    @property
    def stages(self) -> tuple[str, ...]:
        return tuple(s for s in STAGES if s != ("train" if self.search else "search"))

    def section(self, name: str) -> dict[str, Any]:
        """The section as the file states it (the keys the file may set)."""
        obj = getattr(self, name)
        if obj is None:
            return {}
        d = obj.to_dict()
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items() if k in section_spec(name)}

    def resolved(self) -> dict[str, Any]:
        d: dict[str, Any] = {"data": self.data, "out": self.out}
        for name in SECTIONS:
            if getattr(self, name) is not None and not (name == "train" and self.search):
                d[name] = self.section(name)
        return d


def parse_value(text: str) -> Any:
    return yaml_io.load(text)


def _resolve(base: Path, section: str, key: str, value: Any) -> Any:
    if (section, key) not in PATH_KEYS or not isinstance(value, str) or not value:
        return value
    if section == "train" and key == "weights" and value in ("imagenet", "none"):
        return value
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else base / p)


def load(path: PathLike, overrides: list[str] | tuple[str, ...] = ()) -> Pipeline:
    """Read and validate a pipeline file; ``overrides`` are 'section.key=value' strings.

    Every problem in the file is reported at once. Relative paths in it (data, out,
    distill.teacher, distill.unlabeled, train.weights) are taken from the file's folder."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise EdgetlError(f"{path}: no such pipeline file; create one with: edgetl init --out {path}")
    try:
        raw = yaml_io.load(path.read_text()) or {}
    except yaml_io.Refused as e:
        raise EdgetlError(f"{where}: refused: {yaml_io.problem(e)}; a pipeline file is a few plain sections "
                          "(see edgetl init)") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark else ""
        raise EdgetlError(f"{where}: not valid YAML{at}: {getattr(e, 'problem', None) or yaml_io.problem(e)}") \
            from None
    except (OSError, UnicodeDecodeError) as e:
        raise EdgetlError(f"{where}: cannot be read ({e}); give a YAML text file") from None
    if not isinstance(raw, dict):
        raise EdgetlError(f"{where}: expected a mapping of sections (data, out, train, ...)")
    for o in overrides:
        if "=" not in o:
            raise EdgetlError(f"--set {o}: use SECTION.KEY=VALUE, e.g. train.alpha=0.5")
        k, v = o.split("=", 1)
        parts = k.strip().split(".")
        node = raw
        for part in parts[:-1]:
            node = node.setdefault(part, {}) if isinstance(node.get(part, {}), dict) else node
        try:
            node[parts[-1]] = parse_value(v)
        except yaml.YAMLError as e:
            raise EdgetlError(f"--set {escape.shown(o, 120)}: the value is not plain YAML data "
                              f"({yaml_io.problem(e)}); give a number, a word or a quoted string") from None
    base = path.resolve().parent
    problems: list[str] = []
    allowed_top = {"data", "out", *SECTIONS}
    problems += [f"unknown key '{k}'; allowed: {', '.join(sorted(allowed_top))}" for k in raw if k not in allowed_top]
    data = out = ""
    if raw.get("data") in (None, ""):
        problems.append("data is missing; set data: to the folder of class sub-folders")
    else:
        try:
            data = _resolve(base, "", "data", _check_type("data", raw["data"], "str"))
            if not Path(data).is_dir():
                problems.append(f"data = {raw['data']!r}: no such folder ({data}); point it at DATA/<class>/<images>")
        except EdgetlError as e:
            problems.append(e.message)
    try:
        out = _resolve(base, "", "out", _check_type("out", raw.get("out") or f"models/{path.stem}", "str"))
    except EdgetlError as e:
        problems.append(e.message)

    if raw.get("search"):
        problems += [f"{k}: and search: exclude each other; the search trains its candidates itself (set their "
                     f"training in search:, e.g. search.epochs_head)" for k in ("train", "distill") if raw.get(k)]
    objs: dict[str, Options | None] = {}
    set_keys: dict[str, frozenset[str]] = {}
    for name, (cls, _) in SECTIONS.items():
        if name in OPTIONAL and not raw.get(name):
            objs[name] = None
            continue
        given = raw.get(name) or {}
        if not isinstance(given, dict):
            problems.append(f"{name} must be a mapping of keys")
            given = {}
        spec = section_spec(name)
        kw: dict[str, Any] = {}
        for k, v in given.items():
            if k not in spec:
                problems.append(f"unknown key '{name}.{k}'; allowed: {', '.join(spec)}")
                continue
            try:
                kw[k] = _resolve(base, name, k, _check_type(f"{name}.{k}", v, spec[k][0]))
            except EdgetlError as e:
                problems.append(e.message)
        set_keys[name] = frozenset(kw)
        if name in ("train", "search"):
            kw.update(data=data, out=out)
        obj = cls(**kw)
        errs: list[OptionError] = obj.problems()
        problems += [e.in_file(where, name).split(": ", 1)[1] for e in errs]
        objs[name] = obj
    if problems:
        if len(problems) == 1:
            raise EdgetlError(f"{where}: {problems[0]}")
        raise EdgetlError(f"{where}: {len(problems)} problems:\n" + "\n".join(f"  - {m}" for m in problems))
    train = objs["train"]
    assert isinstance(train, TrainConfig)
    cal = objs["calibrate"]
    assert isinstance(cal, CalibrateOptions)
    src: TrainConfig | SearchOptions = objs["search"] or train  # type: ignore[assignment]
    cal.seed, cal.val_split, cal.test_split = src.seed, src.val_split, src.test_split
    return Pipeline(where, data, out, train, cal, objs["export"], objs["verify"], objs["distill"],  # type: ignore[arg-type]
                    objs["search"], set_keys)  # type: ignore[arg-type]


def starter_text() -> str:
    """The `edgetl init` template, generated from the option classes (defaults and docs)."""
    lines = ["# edgetl pipeline: `edgetl run pipeline.yaml` runs train -> calibrate -> export -> verify -> model card.",
             "# Re-running skips stages whose inputs did not change; `--from export` redoes export and what follows;",
             "# `--set train.alpha=0.5` overrides any key from the command line. Relative paths are taken from",
             "# this file's folder. With a search: section (instead of train:), out: is the search's folder and",
             "# calibrate, export, verify and the card work on the pick's run directory.", "",
             "data: photos/                 # DATA/<class>/<images>, or DATA/train|val[|test]/<class>/",
             "out: models/my-classifier     # the run directory (model, exports, reports, model card)", ""]
    for name, (cls, _) in SECTIONS.items():
        off = name in OPTIONAL
        if name == "distill":
            lines.append("# distill:                    # optional: train the student above from a larger teacher")
        elif name == "search":
            lines.append("# search:                     # optional, instead of train: the most accurate model "
                         "within a budget")
        else:
            lines.append(f"{name}:")
        for k, (_, d) in section_spec(name).items():
            if isinstance(d, tuple):
                d = list(d)
            val = yaml.safe_dump({k: d}, default_flow_style=True, width=200).strip()[1:-1]
            if name == "distill" and k == "teacher":
                val = "teacher: models/teacher"
            if name == "search" and k == "max_latency_ms":
                val = "max_latency_ms: 5"
            entry = ("#  " if off else "  ") + val
            lines.append(f"{entry:<30}# {field_doc(cls, k)}")
        lines.append("")
    return "\n".join(lines)


# -------------------------------------------------------------------- running ----
def _h(obj) -> str:
    return artifacts.sha256_text(json.dumps(obj, sort_keys=True, default=str))


class PipelineRunner:
    def __init__(self, pipe: Pipeline, from_stage: str | None = None, force: bool = False, echo=print):
        if from_stage is not None and from_stage not in pipe.stages:
            why = "" if from_stage not in STAGES else \
                (" (this pipeline has a search: section)" if pipe.search else " (this pipeline has no search: section)")
            raise EdgetlError(f"--from {from_stage}: use one of {', '.join(pipe.stages)}{why}")
        self.p, self.echo, self.force = pipe, echo, force
        self.from_idx = pipe.stages.index(from_stage) if from_stage else None
        # the run the stages after train work on; with a search, its pick's (known once the search ran)
        self.run_dir = pipe.run_dir if pipe.search is None else search_stage.pick_run(pipe.run_dir)

    def state(self) -> dict:
        if self.run_dir == self.p.run_dir and self.p.search is not None:
            return {}  # no pick yet: the search has not run
        return rundir.read_manifest(self.run_dir).get("pipeline", {}).get("stages", {})

    def record(self, stage: str, inputs: str, seconds: float) -> None:
        man = rundir.read_manifest(self.run_dir)
        pl = man.get("pipeline", {"stages": {}})
        pl["config"] = self.p.resolved()
        pl["stages"][stage] = {"inputs_hash": inputs, "seconds": round(seconds, 2), "finished": artifacts.now_iso()}
        rundir.update_manifest(self.run_dir, "pipeline", pl)

    def inputs(self, stage: str) -> str:
        p, d = self.p, self.run_dir
        if stage == "search" and p.search:
            return _h(search_stage.inputs(p.search, p.section("search")))
        if stage == "train":
            from edgetl.data.dataset import scan

            ds = scan(p.data, p.train.val_split, p.train.seed, p.train.strict, test_split=p.train.test_split)
            return _h({"train": p.section("train"), "distill": p.section("distill") or None,
                       "data": ds.fingerprint()})
        if stage == "calibrate":
            return _h({"calibrate": p.section("calibrate"), "split": artifacts.sha256_file(d / rundir.SPLIT)})
        if stage == "export":
            man = d / rundir.CALIBRATION / rundir.MANIFEST
            return _h({"export": p.section("export"), "model": artifacts.sha256_file(d / rundir.MODEL),
                       "calibration": artifacts.sha256_file(man) if man.exists() else None})
        if stage == "verify":
            arts = rundir.read_manifest(d).get("export", {}).get("artifacts", [])
            return _h({"verify": p.section("verify"), "model": artifacts.sha256_file(d / rundir.MODEL),
                       "artifacts": sorted(a.get("sha256", "") for a in arts)})
        report = d / rundir.REPORT_JSON
        return _h({"report": artifacts.sha256_file(report) if report.exists() else None,
                   "metrics": artifacts.sha256_file(d / rundir.METRICS), "edgetl": artifacts.package_versions()
                   .get("edgetl")})

    def run(self) -> dict:
        with rundir.writing(self.p.run_dir, "edgetl run", echo=self.echo), contextlib.ExitStack() as held:
            self._held = held
            return self._run()

    def hold_run(self) -> None:
        """With a search: hold the pick's run too, while the stages after the search write it."""
        if self.run_dir != self.p.run_dir and self.run_dir not in self._holding:
            self._held.enter_context(rundir.writing(self.run_dir, "edgetl run", echo=self.echo))
            self._holding.append(self.run_dir)

    def _run(self) -> dict:
        t_all = time.perf_counter()
        timings = {}
        report = None
        self._holding: list[Path] = []
        for i, stage in enumerate(self.p.stages):
            if stage != "search":
                self.hold_run()
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
                    report = rundir.read_json(self.run_dir / rundir.REPORT_JSON)
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
            from edgetl.verify.verifier import table

            self.echo(table(report))
        self.echo(f"model card: {self.run_dir / rundir.CARD}")
        return {"timings": timings, "report": report}

    def outputs_exist(self, stage: str) -> bool:
        d = self.run_dir
        if stage == "search":
            return (self.p.run_dir / rundir.SEARCH_JSON).exists() and rundir.is_finished(d)
        need = {"train": [rundir.MODEL, rundir.METRICS, rundir.MANIFEST],
                "calibrate": [f"{rundir.CALIBRATION}/{rundir.MANIFEST}"],
                "export": [], "verify": [rundir.REPORT_JSON], "card": [rundir.CARD]}[stage]
        return all((d / n).exists() for n in need)

    # ---- stages ----
    def stage_search(self, redo: bool) -> Any:
        assert self.p.search is not None
        self.run_dir = search_stage.run_search(self.p.search, self.p.source, self.echo)
        self.hold_run()

    def stage_train(self, redo: bool) -> Any:
        from edgetl.training.train import Trainer

        cfg = dataclasses.replace(self.p.train)
        resume = (self.run_dir / rundir.CHECKPOINTS).exists()
        if resume:
            self.echo(f"resuming the interrupted training in {self.run_dir}")
        if self.p.distill:
            from edgetl.training.distill import distill

            return distill(cfg, dataclasses.replace(self.p.distill), resume=resume, echo=self.echo, force=True)
        # the pipeline owns its run: when the training's inputs changed it retrains in place
        return Trainer(cfg, resume=resume, echo=self.echo, force=True).run()

    def stage_calibrate(self, redo: bool) -> Any:
        from edgetl.data.calibrate import calibrate_run

        c = self.p.calibrate
        return calibrate_run(self.run_dir, c.size, c.seed, echo=self.echo)  # the run's own training split

    def stage_export(self, redo: bool) -> Any:
        from edgetl.export.exporter import export

        # a stage that is redone (--from, --force) redoes its artifacts too
        opts = dataclasses.replace(self.p.export, force=redo)  # calibrates on the run's own calibration/
        opts = search_stage.stage_options(opts, self.p.given.get("export", frozenset()), self.p.search, self.p.run_dir)
        res = export(self.run_dir, opts, echo=self.echo)
        failed = [a for a in res if a.status == "failed"]
        if failed:
            self.echo(f"warning: {len(failed)} artifact(s) failed; verify goes on with the others")
        return res

    def stage_verify(self, redo: bool) -> Any:
        from edgetl.verify.verifier import verify

        opts = search_stage.stage_options(dataclasses.replace(self.p.verify), self.p.given.get("verify", frozenset()),
                                          self.p.search, self.p.run_dir)
        return verify(self.run_dir, opts, echo=self.echo)

    def stage_card(self, redo: bool) -> Any:
        from edgetl.card import write_card

        return write_card(self.run_dir, self.p, echo=self.echo)


def run(config: PathLike, from_stage: str | None = None, force: bool = False, overrides: tuple[str, ...] | list[str] = (),
        echo: Echo = print) -> dict[str, Any]:
    return PipelineRunner(load(config, overrides), from_stage, force, echo).run()


def write_starter(out: str | Path) -> Path:
    out = Path(out)
    if out.exists():
        raise EdgetlError(f"{out}: already exists; choose another --out or remove it")
    artifacts.write_text(out, starter_text())
    return out
