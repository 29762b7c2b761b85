"""`edgetl export`: every requested (format, quantization) pair becomes one
artifact under RUN/export/, converted independently from the float model,
written atomically with a JSON sidecar (labels, input contract, preprocessing) --
TFLite files also carry standard TFLite metadata with labels.txt packed in --
recorded in the run's manifest with its inputs' hash, and skipped on a re-run
when those inputs did not change.

Every artifact is scored on the run's validation split before it is written,
and kept or refused by one accuracy budget (``max_drop`` points of top-1
against the Keras model, judged by the paired drop's 95% lower bound). When an
int8 model misses it, remedies are tried in order (per-channel, a larger
calibration set, another calibration method, float fallback for the most
sensitive layers) and recorded; fp32, fp16 and dynamic have no remedies. An
artifact that still misses the budget is not written; the manifest records why."""
from __future__ import annotations

import functools
import json
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetl import __version__, artifacts, formats, rundir
from edgetl.config import CALIB_METHODS, ExportOptions, VerifyOptions, default
from edgetl.errors import EdgetlError
from edgetl.rundir import Run, artifact_file, open_run
from edgetl.types import Echo, PathLike

__all__ = ["Artifact", "ExportOptions", "Exporter", "export", "artifact_file"]


@dataclass
class Artifact:
    format: str
    quant: str
    file: str
    status: str = "pending"               # written | skipped | failed
    reason: str = ""
    io_type: str = "float32"
    size_bytes: int = 0
    sha256: str = ""
    inputs_hash: str = ""
    seconds: float = 0.0
    accuracy: float | None = None
    keras_accuracy: float | None = None
    drop_points: float | None = None
    agreement: float | None = None
    remedies: list = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return Path(self.file).name


@dataclass
class Attempt:
    """One rung of the int8 budget ladder: what is tried, with which settings and images."""

    step: str
    settings: Callable[[], Any]          # -> convert.Int8Settings (may be costly: chosen lazily)
    calib: Callable[[], np.ndarray]


class Exporter:
    def __init__(self, run_dir, opts: ExportOptions, echo=print):
        self.run: Run = open_run(run_dir)
        self.opts = opts.validate()
        self.echo = echo
        self.model_sha = artifacts.sha256_file(self.run.model_path)
        self._calib: tuple[np.ndarray, str, list[str]] | None = None
        self.calibration_source: str | None = None  # recorded in the manifest when int8 used it
        self._noted: set[str] = set()
        self._held: tuple[np.ndarray, np.ndarray, np.ndarray, str] | None = None

    # -- lazily built inputs ------------------------------------------------
    @functools.cached_property
    def source(self) -> Any:
        from edgetl.export.convert import Serving, Source

        return Source(Serving(self.run.load_model()))

    @property
    def serving(self) -> Any:
        return self.source.serving

    def calibration(self) -> tuple[np.ndarray, str, list[str]]:
        """(images, hash, files) of the calibration set: --calibration DIR when given, else the
        run's own RUN/calibration/ (``edgetl calibrate RUN``), else a sample of the run's training
        split. Never a folder of the working directory: another run's set is not picked up."""
        if self._calib is None:
            from edgetl.data.calibrate import check_classes, check_overlap, set_hash
            from edgetl.data.dataset import readable_images
            from edgetl.data.tfdata import load_array

            explicit = bool(self.opts.calibration)
            folder = Path(self.opts.calibration) if explicit else self.run.dir / rundir.CALIBRATION  # type: ignore[arg-type]
            fix = f"sample the run's own training split: edgetl calibrate {self.run.dir}" + (
                " (then export without --calibration)" if explicit else "")
            files = [str(p) for p in readable_images(folder)]
            if not files and explicit:
                raise EdgetlError(f"{folder}: no calibration images; give a folder of training images, or "
                                  f"{fix}")
            if files:
                held = self.run.split_files("val")[0] + self.run.split_files("test")[0]
                check_overlap(files, held, str(folder), fix)
                check_classes(folder, files, self.run.labels, fix)
                src = str(folder)
                self.calibration_source = str(folder.resolve())
            else:
                tr, lab = self.run.split_files("train")
                if not tr:
                    raise EdgetlError(f"{self.run.dir}: no calibration set and no training split in "
                                      f"{rundir.SPLIT}; give --calibration DIR (a folder of training images)")
                from edgetl.data.calibrate import stratified_sample

                idx = stratified_sample(tr, lab, self.opts.calib_size, self.opts.seed)
                files = [tr[i] for i in idx]
                src = (f"{len(files)} images sampled from the run's training split (no {rundir.CALIBRATION}/ in "
                       f"the run; edgetl calibrate {self.run.dir} writes one)")
                self.calibration_source = f"{len(files)} images of the run's training split, seed {self.opts.seed}"
            self.echo(f"calibration: {src} ({len(files)} images)")
            self._calib = (load_array(files, self.run.img_size, self.run.resize), set_hash(files), files)
        return self._calib

    def larger_calibration(self, factor: int = 2) -> np.ndarray | None:
        """More training images than the current set, for the budget ladder."""
        from edgetl.data.calibrate import stratified_sample
        from edgetl.data.tfdata import load_array

        x, _, files = self.calibration()
        tr, lab = self.run.split_files("train")
        if len(tr) <= len(files):
            return None
        idx = stratified_sample(tr, lab, min(len(tr), factor * max(len(files), 1)), self.opts.seed + 1)
        return load_array([tr[i] for i in idx], self.run.img_size, self.run.resize)

    def held_out(self):
        """(images, labels, keras probabilities, split name) of the split the budget ladder chooses
        on: validation, the selection split, so that verify's test numbers stay untouched."""
        if self._held is None:
            from edgetl.data.tfdata import load_array
            from edgetl.runtime.runners import KerasRunner

            files, labels = self.run.split_files("val")
            name = "val"
            if not files:
                name, files, labels = self.run.held_out()
            x = load_array(files, self.run.img_size, self.run.resize)
            ref = KerasRunner(self.run.model_path).predict(x)
            self._held = (x, np.asarray(labels), ref, name)
        return self._held

    def metadata(self, quant: str, io_type: str) -> dict:
        from edgetl import backbones
        from edgetl.nets.layers import Preprocess

        bb = backbones.get(self.run.config.backbone)
        h, w = self.run.img_size, self.run.img_size
        return {
            "labels": self.run.labels,
            "input": {"name": "", "shape": [-1, h, w, 3], "layout": "NHWC", "color": "RGB",
                      "range": [0, 255], "dtype": io_type, "resize": self.run.resize,
                      "note": "RGB 0-255 at the input size; the backbone's preprocessing is inside the model"},
            "preprocessing": {"baked_in": True, **Preprocess(bb.preprocess).describe()},
            "output": {"name": "", "meaning": "class probabilities in the order of labels"},
            "quantization": quant,
            "backbone": bb.name,
            "source_model_sha256": self.model_sha,
            "edgetl_version": __version__,
        }

    # -- one artifact -----------------------------------------------------------
    def inputs_hash(self, fmt: str, quant: str) -> str:
        parts: dict[str, Any] = {"model": self.model_sha, "format": fmt, "quant": quant, "edgetl": __version__,
                                 "max_drop": self.opts.max_drop, "scored": "every-mode-1"}
        f = formats.get(fmt)
        if quant == "int8":
            parts.update(io=self.opts.io_type if f.int8_io_type else "float32", calib=self.calibration()[1])
            if f.int8 == formats.ORT_QUANTIZATION:
                parts.update(method=self.opts.calib_method, onnx_format=self.opts.onnx_format,
                             per_channel=self.opts.per_channel)
        if f.metadata == formats.TFLITE_METADATA:
            parts["metadata"] = "tflite-metadata-1"  # app metadata and packed labels.txt
        return artifacts.sha256_text(json.dumps(parts, sort_keys=True))

    def export_one(self, fmt: str, quant: str, previous: dict) -> Artifact:
        a = Artifact(fmt, quant, artifact_file(fmt, quant))
        a.io_type = self.opts.io_type if (formats.get(fmt).int8_io_type and quant == "int8") else "float32"
        dest = self.run.dir / a.file
        t0 = time.perf_counter()
        try:
            a.inputs_hash = self.inputs_hash(fmt, quant)
            old = previous.get(a.file)
            if (not self.opts.force and old and old.get("status") in ("written", "skipped")
                    and old.get("inputs_hash") == a.inputs_hash and dest.exists()
                    and artifacts.sha256_file(dest) == old.get("sha256")):
                kept = Artifact(**{**old, "status": "skipped", "reason": "inputs unchanged (use --force to redo)"})
                return kept
            data = self.convert(a)
            if quant == "int8":
                a.settings["calibration"] = self.calibration_source
            with artifacts.atomic_path(dest) as tmp:
                tmp.write_bytes(data)
            meta = self.metadata(quant, a.io_type)
            meta["settings"] = a.settings
            with_io_names(meta, dest)
            artifacts.write_json(rundir.sidecar(dest), meta)
            for suffix, path in rundir.format_sidecars(dest).items():  # e.g. .ort: its required operators
                artifacts.write_text(path, formats.resolve(formats.get(fmt).sidecars[suffix])(data, dest.name))
            a.status = "written"
            a.size_bytes = dest.stat().st_size
            a.sha256 = artifacts.sha256_file(dest)
        except EdgetlError as e:
            a.status, a.reason = "failed", e.message
        except Exception as e:  # a converter failing: report, keep going with the others
            a.status, a.reason = "failed", f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            if _debug():
                traceback.print_exc()
        a.seconds = round(time.perf_counter() - t0, 2)
        return a

    def onnx_metadata(self, a: Artifact) -> dict[str, str]:
        meta = self.metadata(a.quant, a.io_type)
        for k in ("input", "output"):  # the graph itself names its tensors (the sidecar repeats them)
            meta[k].pop("name", None)
        return {"labels": json.dumps(self.run.labels), "edgetl": json.dumps(meta)}

    def convert(self, a: Artifact) -> bytes:
        from edgetl.export import convert as C

        if a.quant == "int8":
            return self.with_metadata(a, self.int8_with_budget(a))
        data = self.with_metadata(a, C.convert(self.source, a.format, a.quant, metadata=self.onnx_metadata(a)))
        self.within_budget(data, a)
        return data

    def within_budget(self, data: bytes, a: Artifact) -> None:
        """Score a float/fp16/dynamic artifact on the selection split and refuse it by the same
        accuracy budget as int8 (no remedies: these modes have no settings to try)."""
        from edgetl.stats import drop_gate

        pd = self.score(data, a)
        verdict = drop_gate(pd, self.opts.max_drop)
        a.remedies.append({"step": "as converted", "accuracy": a.accuracy, "drop_points": pd.drop_points,
                           "agreement": a.agreement, "drop_lower_points": pd.lower_points, "mcnemar_p": pd.p_value,
                           "kept": not verdict.fails})
        self.echo(f"  {a.format} {a.quant}: accuracy {a.accuracy:.4f} (Keras {a.keras_accuracy:.4f}, drop "
                  f"{pd.drop_points:+.2f} points, 95% lower bound {pd.lower_points:+.2f}, agreement "
                  f"{a.agreement:.3f}, on {pd.n} {self.held_out()[3]} images)")
        if verdict.fails:
            raise EdgetlError(f"{a.quant} misses the accuracy budget: drop {pd.drop_points:.2f} points (95% lower "
                              f"bound {pd.lower_points:.2f}) > --max-drop {self.opts.max_drop:g} on {pd.n} "
                              f"{self.held_out()[3]} images; not written")
        if not verdict.resolvable and verdict.reason not in self._noted:  # said once per export
            self._noted.add(verdict.reason)
            self.echo(f"  note: {verdict.reason}")

    def with_metadata(self, a: Artifact, data: bytes) -> bytes:
        """TFLite: standard TFLite metadata with labels.txt packed in, which app runtimes
        (MediaPipe Tasks, the Task Library, Android Studio) require; other formats as they are."""
        if formats.get(a.format).metadata != formats.TFLITE_METADATA:
            return data
        from edgetl import backbones
        from edgetl.runtime.tflite_metadata import ModelInfo, add_metadata

        labels = self.run.labels
        shown = ", ".join(labels[:10]) + (f" and {len(labels) - 10} more" if len(labels) > 10 else "")
        size = self.run.img_size
        info = ModelInfo(
            name=self.run.dir.name,
            description=(f"Image classifier of {len(labels)} classes ({shown}): {backbones.get(self.run.config.backbone).name} "
                         f"at {size}x{size} px, fine-tuned with edgetl, {a.quant} TFLite. Input: RGB pixels 0-255 "
                         f"({self.run.resize} resize to {size}x{size}); output: class probabilities."),
            version=f"{a.quant}, source model sha256 {self.model_sha[:12]}",
            author=f"edgetl {__version__}",
            labels=tuple(labels))
        return add_metadata(data, info)

    # -- int8 and the accuracy budget ---------------------------------------------
    def score(self, data: bytes, a: Artifact) -> Any:
        """Score candidate bytes on the selection split; record it on ``a``; return its paired drop."""
        from edgetl.runtime.evaluate import score_model

        x, y, ref, _ = self.held_out()
        s = score_model(data, a.format, x, y, ref)
        a.accuracy, a.keras_accuracy, a.agreement, a.drop_points = s.accuracy, s.keras_accuracy, s.agreement, \
            s.drop_points
        a.settings["scored_on"] = self.held_out()[3]
        return s.paired

    def ladder(self, fmt: str) -> list[Attempt]:
        """The int8 attempts in order: the requested settings first, then remedies."""
        from edgetl.export.convert import Int8Settings, onnx_sensitive_nodes, tflite_sensitive_layers

        o = self.opts
        calib = lambda: self.calibration()[0]  # noqa: E731
        bigger = self.larger_calibration()
        n_more = 0 if bigger is None else len(bigger)
        more: Callable[[], np.ndarray] | None = (lambda: bigger) if bigger is not None else None
        if formats.get(fmt).int8 == formats.TFLITE_CONVERTER:
            base = Int8Settings(io_type=o.io_type)
            out = [Attempt("post-training int8, per-channel", lambda: base, calib)]
            if more is not None:
                out.append(Attempt(f"larger calibration set ({n_more} images)", lambda: base, more))
            def keep_float(k: int) -> Callable[[], Any]:
                return lambda: Int8Settings(io_type=o.io_type, float_layers=tuple(
                    tflite_sensitive_layers(self.serving, o.io_type, calib(), k)))

            for k in (3, 8):
                out.append(Attempt(f"{k} most sensitive layers kept in float (quantization debugger)",
                                   keep_float(k), calib))
            return out
        req = Int8Settings(calib_method=o.calib_method, onnx_format=o.onnx_format, per_channel=o.per_channel)
        pc = Int8Settings(calib_method=o.calib_method, onnx_format=o.onnx_format, per_channel=True)
        out = [Attempt(f"static int8 ({o.onnx_format}, {o.calib_method}, "
                       f"{'per-channel' if o.per_channel else 'per-tensor'})", lambda: req, calib)]
        if not o.per_channel:
            out.append(Attempt("per-channel weights", lambda: pc, calib))
        if more is not None:
            out.append(Attempt(f"larger calibration set ({n_more} images)", lambda: pc, more))
        for m in CALIB_METHODS:
            if m != o.calib_method:
                out.append(Attempt(f"calibration method {m}", fixed(Int8Settings(
                    calib_method=m, onnx_format=o.onnx_format, per_channel=True)), calib))
        out.append(Attempt("sensitive nodes kept in float (first conv, classifier)", lambda: Int8Settings(
            calib_method=o.calib_method, onnx_format=o.onnx_format, per_channel=True,
            exclude=tuple(onnx_sensitive_nodes(self.source.onnx_fp32))), calib))
        return out

    def int8_with_budget(self, a: Artifact) -> bytes:
        from edgetl.export import convert as C
        from edgetl.stats import drop_gate

        attempts = self.ladder(a.format)
        meta = self.onnx_metadata(a)
        best = None
        target = default(VerifyOptions, "min_agreement")  # what verify's default gate will ask of it
        within: tuple[int, bytes, dict] | None = None  # (remedy index, bytes, settings) of the best attempt
        # within the budget but below that agreement
        for att in attempts:
            settings = att.settings()
            data = C.convert(self.source, a.format, "int8", att.calib(), settings, meta)
            a.settings = settings_record(a.format, settings)
            pd = self.score(data, a)
            verdict = drop_gate(pd, self.opts.max_drop)  # above the budget with 95% confidence?
            drop = pd.drop_points
            a.remedies.append({"step": att.step, "accuracy": a.accuracy, "drop_points": drop, "agreement": a.agreement,
                               "drop_lower_points": pd.lower_points, "mcnemar_p": pd.p_value})
            self.echo(f"  {a.format} int8: {att.step}: accuracy {a.accuracy:.4f} "
                      f"(Keras {a.keras_accuracy:.4f}, drop {drop:+.2f} points, 95% lower bound "
                      f"{pd.lower_points:+.2f}, on {pd.n} {self.held_out()[3]} images)")
            if best is None or pd.lower_points < best[0]:
                best = (pd.lower_points, drop, a.accuracy, a.agreement)
            if not verdict.fails:
                if not verdict.resolvable:
                    self.echo(f"  note: {verdict.reason}")
                if a.agreement >= target:
                    a.remedies[-1]["kept"] = True
                    return data
                # within the budget, but verify's default agreement gate would fail it: try the
                # remedies still, and keep the attempt that agrees best
                self.echo(f"  {a.format} int8: agreement {a.agreement:.3f} < {target:g} (verify's default gate); "
                          f"trying the next remedy")
                if within is None or a.agreement > a.remedies[within[0]]["agreement"]:
                    within = (len(a.remedies) - 1, data, dict(a.settings))
        if within is not None:
            k, data, a.settings = within
            kept = a.remedies[k]
            a.accuracy, a.drop_points, a.agreement = kept["accuracy"], kept["drop_points"], kept["agreement"]
            kept["kept"] = True
            self.echo(f"  {a.format} int8: kept the attempt that agrees best ({a.agreement:.3f}); it is within the "
                      f"accuracy budget, below {target:g} agreement")
            return data
        assert best is not None
        lower, drop, a.accuracy, a.agreement = best
        a.drop_points = drop
        raise EdgetlError(f"int8 misses the accuracy budget: best drop {drop:.2f} points (95% lower bound "
                          f"{lower:.2f}) > --max-drop {self.opts.max_drop} after {len(attempts)} attempt(s); "
                          f"not written")

    # -- all of them --------------------------------------------------------------------
    def run_all(self) -> list[Artifact]:
        man = self.run.manifest()
        previous = {r["file"]: r for r in man.get("export", {}).get("artifacts", [])}
        results: list[Artifact] = []
        # failures of earlier runs that this run does not retry are dropped from the record
        merged = {f: r for f, r in previous.items()
                  if r.get("status") != "failed" and (self.run.dir / f).exists()}  # no records of vanished files
        for fmt in self.opts.formats:
            for quant in self.opts.quants:
                self.echo(f"export {fmt} {quant} ...")
                a = self.export_one(fmt, quant, previous)
                results.append(a)
                msg = {"written": f"wrote {a.file} ({a.size_bytes / 1024:.0f} KiB, {a.seconds:.1f}s)",
                       "skipped": f"up to date: {a.file}",
                       "failed": f"FAILED {a.file}: {a.reason}"}[a.status]
                self.echo(f"  {msg}")
                # recorded as each one finishes: a killed export resumes without redoing it
                merged[a.file] = asdict(a)
                rundir.update_manifest(self.run.dir, "export", {
                    "options": asdict(self.opts), "model_sha256": self.model_sha,
                    "calibration": self.calibration_source or man.get("export", {}).get("calibration"),
                    "artifacts": list(merged.values())})
        self.summary(results)
        return results

    def summary(self, results: list[Artifact]) -> None:
        self.echo("")
        self.echo(f"{'artifact':<26}{'status':<9}{'size KiB':>9}{'acc':>8}{'drop':>7}  note")
        for a in results:
            acc = f"{a.accuracy:.4f}" if a.accuracy is not None else "-"
            drop = f"{a.drop_points:+.1f}" if a.drop_points is not None else "-"
            kept = next((r["step"] for r in a.remedies if r.get("kept")), a.remedies[-1]["step"] if a.remedies else "")
            note = a.reason if a.status != "written" else kept
            self.echo(f"{a.name:<26}{a.status:<9}{a.size_bytes / 1024:>9.0f}{acc:>8}{drop:>7}  {note}")


def with_io_names(meta: dict[str, Any], model: Path) -> dict[str, Any]:
    """Put the tensor names the model file really has into its sidecar's input and output."""
    from edgetl.runtime.runners import io_names

    meta["input"]["name"], meta["output"]["name"] = io_names(model)
    return meta


def fixed(value: Any) -> Callable[[], Any]:
    return lambda: value


def settings_record(fmt: str, s: Any) -> dict[str, Any]:
    """The int8 settings that matter for ``fmt``, as recorded in the sidecar and manifest."""
    if formats.get(fmt).int8 == formats.TFLITE_CONVERTER:
        return {"float_layers": list(s.float_layers)} if s.float_layers else {}
    return {"calib_method": s.calib_method, "onnx_format": s.onnx_format, "per_channel": s.per_channel,
            "excluded_nodes": list(s.exclude)}


def _debug() -> bool:
    import os

    return bool(os.environ.get("EDGETL_DEBUG"))


def export(run_dir: PathLike, opts: ExportOptions | None = None, echo: Echo = print) -> list[Artifact]:
    """Export the run's model; returns one Artifact per requested (format, quantization).
    The run directory is locked meanwhile."""
    from edgetl.rundir import writing

    with writing(run_dir, "edgetl export", echo=echo, create=False):
        return Exporter(run_dir, opts or ExportOptions(), echo).run_all()
