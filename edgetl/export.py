"""`edgetl export`: every requested (format, quantization) pair becomes one
artifact under RUN/export/, converted independently from the float model,
written atomically with a JSON sidecar (labels, input contract, preprocessing),
recorded in the run's manifest with its inputs' hash, and skipped on a re-run
when those inputs did not change.

int8 artifacts are scored on the run's held-out split; when one loses more
than ``max_drop`` points of top-1 against the Keras model, remedies are tried
in order (per-channel, a larger calibration set, another calibration method,
float fallback for the most sensitive layers) and recorded. An int8 model that
still misses the budget is not written."""
from __future__ import annotations

import functools
import json
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgetl import __version__, artifacts
from edgetl.errors import EdgetlError
from edgetl.runinfo import Run, open_run

FORMATS = ("tflite", "onnx")
QUANTS = ("fp32", "fp16", "dynamic", "int8")
IO_TYPES = ("float32", "int8", "uint8")
CALIB_METHODS = ("minmax", "entropy", "percentile")
ONNX_FORMATS = ("qoperator", "qdq")
EXPORT_DIR = "export"


@dataclass
class ExportOptions:
    formats: tuple = FORMATS
    quants: tuple = ("fp32", "int8")
    io_type: str = "float32"           # int8 TFLite I/O: float32 | int8 | uint8
    calibration: str | None = None      # folder of images; default calibration/ else the run's training split
    calib_size: int = 200
    calib_method: str = "minmax"
    onnx_format: str = "qoperator"
    per_channel: bool = True
    max_drop: float = 1.0
    force: bool = False
    seed: int = 42

    def validate(self) -> "ExportOptions":
        self.formats = _parse_list(self.formats, FORMATS, "--format")
        self.quants = _parse_list(self.quants, QUANTS, "--quant")
        for name, val, allowed in (("--io-type", self.io_type, IO_TYPES),
                                   ("--calib-method", self.calib_method, CALIB_METHODS),
                                   ("--onnx-format", self.onnx_format, ONNX_FORMATS)):
            if val not in allowed:
                raise EdgetlError(f"{name} {val}: use one of {', '.join(allowed)}")
        if self.max_drop < 0:
            raise EdgetlError(f"--max-drop {self.max_drop}: must be >= 0")
        if self.calib_size < 1:
            raise EdgetlError(f"--calib-size {self.calib_size}: must be >= 1")
        return self


def _parse_list(v, allowed, opt) -> tuple:
    items = [s.strip() for s in v.split(",")] if isinstance(v, str) else list(v)
    items = [s for s in items if s]
    bad = [s for s in items if s not in allowed]
    if bad or not items:
        raise EdgetlError(f"{opt} {','.join(items) or '(empty)'}: use a comma list of {','.join(allowed)}")
    return tuple(dict.fromkeys(items))


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


def artifact_file(fmt: str, quant: str) -> str:
    return f"{EXPORT_DIR}/model_{quant}.{fmt}"


class Exporter:
    def __init__(self, run_dir, opts: ExportOptions, echo=print):
        self.run: Run = open_run(run_dir)
        self.opts = opts.validate()
        self.echo = echo
        self.model_sha = artifacts.sha256_file(self.run.model_path)
        self._calib = None
        self._held = None
        self._onnx_fp32 = None

    # -- lazily built inputs ------------------------------------------------
    @functools.cached_property
    def serving(self):
        from edgetl.convert import Serving

        return Serving(self.run.load_model())

    def calibration(self) -> tuple[np.ndarray, str, list[str]]:
        """(images, hash, files) of the calibration set."""
        if self._calib is None:
            from edgetl.calibrate import DEFAULT_DIR, check_overlap
            from edgetl.data import readable_images
            from edgetl.tfdata import load_array

            folder = self.opts.calibration or DEFAULT_DIR
            files = [str(p) for p in readable_images(folder)]
            if not files and self.opts.calibration:
                raise EdgetlError(f"{folder}: no calibration images; give a folder of training images "
                                  f"or create one with: edgetl calibrate DATA --out {folder}")
            if files:
                _, held, _ = self.run.held_out()
                check_overlap(files, held, str(folder))
                src = str(folder)
            else:
                tr, lab = self.run.split_files("train")
                if not tr:
                    raise EdgetlError(f"no calibration images in {folder}/ and no training split in {self.run.dir}; "
                                      f"run: edgetl calibrate DATA")
                from edgetl.calibrate import stratified_sample

                idx = stratified_sample(tr, lab, self.opts.calib_size, self.opts.seed)
                files = [tr[i] for i in idx]
                src = f"{len(files)} images sampled from the run's training split (no {folder}/ set)"
            h = artifacts.sha256_text("\n".join(artifacts.sha256_file(f) for f in files))
            self.echo(f"calibration: {src} ({len(files)} images)")
            self._calib = (load_array(files, self.run.img_size, self.run.resize), h, files)
        return self._calib

    def larger_calibration(self, factor: int = 2) -> np.ndarray | None:
        """More training images than the current set, for the budget ladder."""
        from edgetl.calibrate import stratified_sample
        from edgetl.tfdata import load_array

        x, _, files = self.calibration()
        tr, lab = self.run.split_files("train")
        if len(tr) <= len(files):
            return None
        idx = stratified_sample(tr, lab, min(len(tr), factor * max(len(files), 1)), self.opts.seed + 1)
        return load_array([tr[i] for i in idx], self.run.img_size, self.run.resize)

    def held_out(self):
        """(images, labels, keras probabilities) of the held-out split."""
        if self._held is None:
            from edgetl.runners import KerasRunner
            from edgetl.tfdata import load_array

            name, files, labels = self.run.held_out()
            x = load_array(files, self.run.img_size, self.run.resize)
            ref = KerasRunner(self.run.model_path).predict(x)
            self._held = (x, np.asarray(labels), ref, name)
        return self._held

    def metadata(self, quant: str, io_type: str) -> dict:
        from edgetl import backbones
        from edgetl.layers import Preprocess

        bb = backbones.get(self.run.config.backbone)
        h, w = self.run.img_size, self.run.img_size
        return {
            "labels": self.run.labels,
            "input": {"name": "image", "shape": [-1, h, w, 3], "layout": "NHWC", "color": "RGB",
                      "range": [0, 255], "dtype": io_type, "resize": self.run.resize,
                      "note": "RGB 0-255 at the input size; the backbone's preprocessing is inside the model"},
            "preprocessing": {"baked_in": True, **Preprocess(bb.preprocess).describe()},
            "output": {"name": "probabilities", "meaning": "class probabilities in the order of labels"},
            "quantization": quant,
            "backbone": bb.name,
            "source_model_sha256": self.model_sha,
            "edgetl_version": __version__,
        }

    # -- one artifact -----------------------------------------------------------
    def inputs_hash(self, fmt: str, quant: str) -> str:
        parts = {"model": self.model_sha, "format": fmt, "quant": quant, "edgetl": __version__}
        if quant == "int8":
            parts.update(io=self.opts.io_type if fmt == "tflite" else "float32", max_drop=self.opts.max_drop,
                         calib=self.calibration()[1])
            if fmt == "onnx":
                parts.update(method=self.opts.calib_method, onnx_format=self.opts.onnx_format,
                             per_channel=self.opts.per_channel)
        return artifacts.sha256_text(json.dumps(parts, sort_keys=True))

    def export_one(self, fmt: str, quant: str, previous: dict) -> Artifact:
        a = Artifact(fmt, quant, artifact_file(fmt, quant))
        a.io_type = self.opts.io_type if (fmt == "tflite" and quant == "int8") else "float32"
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
            with artifacts.atomic_path(dest) as tmp:
                tmp.write_bytes(data)
            meta = self.metadata(quant, a.io_type)
            meta["settings"] = a.settings
            artifacts.write_json(Path(str(dest) + ".json"), meta)
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

    def convert(self, a: Artifact) -> bytes:
        from edgetl import convert as C

        if a.format == "tflite":
            if a.quant != "int8":
                return C.tflite_bytes(self.serving, a.quant)
            return self.int8_with_budget(a)
        meta = {"labels": json.dumps(self.run.labels),
                "edgetl": json.dumps(self.metadata(a.quant, a.io_type))}
        if self._onnx_fp32 is None:
            self._onnx_fp32 = C.onnx_fp32(self.serving, meta)
        if a.quant == "fp32":
            m = self._onnx_fp32
            C.set_onnx_metadata(m, meta)
        elif a.quant == "fp16":
            m = C.onnx_fp16(self._onnx_fp32, meta)
        elif a.quant == "dynamic":
            m = C.onnx_dynamic(self._onnx_fp32, meta)
        else:
            return self.int8_with_budget(a, meta)
        return m.SerializeToString()

    # -- int8 and the accuracy budget ---------------------------------------------
    def _score(self, fmt: str, data: bytes, a: Artifact) -> float:
        import tempfile

        from edgetl.runners import open_runner

        x, y, ref, _ = self.held_out()
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / f"m.{fmt}"
            p.write_bytes(data)
            r = open_runner(p, threads=2)
            probs = np.concatenate([r.predict(x[i:i + 32]) for i in range(0, len(x), 32)])
        acc = float((probs.argmax(-1) == y).mean())
        a.keras_accuracy = float((ref.argmax(-1) == y).mean())
        a.accuracy = acc
        a.drop_points = round(100 * (a.keras_accuracy - acc), 3)
        a.agreement = float((probs.argmax(-1) == ref.argmax(-1)).mean())
        return a.drop_points

    def int8_with_budget(self, a: Artifact, meta: dict | None = None) -> bytes:
        from edgetl import convert as C

        calib, _, _ = self.calibration()
        o = self.opts
        if a.format == "tflite":
            attempts = [("post-training int8, per-channel", lambda: C.tflite_bytes(self.serving, "int8", o.io_type, calib))]
            bigger = self.larger_calibration()
            if bigger is not None:
                attempts.append((f"larger calibration set ({len(bigger)} images)",
                                 lambda: C.tflite_bytes(self.serving, "int8", o.io_type, bigger)))
            for k in (3, 8):
                def deny(k=k):
                    data, names = C.tflite_int8_denylist(self.serving, o.io_type, calib, k)
                    a.settings["float_layers"] = names
                    return data
                attempts.append((f"{k} most sensitive layers kept in float (quantization debugger)", deny))
        else:
            a.settings.update(calib_method=o.calib_method, onnx_format=o.onnx_format, per_channel=o.per_channel)

            def q(method=o.calib_method, per_channel=o.per_channel, data=calib, exclude=None):
                a.settings.update(calib_method=method, per_channel=per_channel, excluded_nodes=exclude or [])
                return C.onnx_int8(self._onnx_fp32, meta, data, method, o.onnx_format, per_channel,
                                   exclude).SerializeToString()

            attempts = [(f"static int8 ({o.onnx_format}, {o.calib_method}, "
                         f"{'per-channel' if o.per_channel else 'per-tensor'})", q)]
            if not o.per_channel:
                attempts.append(("per-channel weights", lambda: q(per_channel=True)))
            bigger = self.larger_calibration()
            if bigger is not None:
                attempts.append((f"larger calibration set ({len(bigger)} images)",
                                 lambda: q(per_channel=True, data=bigger)))
            for m in CALIB_METHODS:
                if m != o.calib_method:
                    attempts.append((f"calibration method {m}", lambda m=m: q(method=m, per_channel=True)))
            attempts.append(("sensitive nodes kept in float (first conv, classifier)",
                             lambda: q(per_channel=True, exclude=C.onnx_sensitive_nodes(self._onnx_fp32))))
        best = None
        for i, (what, make) in enumerate(attempts):
            data = make()
            drop = self._score(a.format, data, a)
            a.remedies.append({"step": what, "accuracy": a.accuracy, "drop_points": drop, "agreement": a.agreement})
            self.echo(f"  {a.format} int8: {what}: accuracy {a.accuracy:.4f} "
                      f"(Keras {a.keras_accuracy:.4f}, drop {drop:+.2f} points)")
            if best is None or drop < best[0]:
                best = (drop, data, dict(a.settings), a.accuracy, a.agreement)
            if drop <= o.max_drop:
                return data
        drop, _, _, acc, agr = best
        a.accuracy, a.drop_points, a.agreement = acc, drop, agr
        raise EdgetlError(f"int8 misses the accuracy budget: best drop {drop:.2f} points > --max-drop {o.max_drop} "
                          f"after {len(attempts)} attempt(s); not written")

    # -- all of them --------------------------------------------------------------------
    def run_all(self) -> list[Artifact]:
        man = artifacts.read_manifest(self.run.dir)
        previous = {r["file"]: r for r in man.get("export", {}).get("artifacts", [])}
        results = []
        for fmt in self.opts.formats:
            for quant in self.opts.quants:
                self.echo(f"export {fmt} {quant} ...")
                a = self.export_one(fmt, quant, previous)
                results.append(a)
                msg = {"written": f"wrote {a.file} ({a.size_bytes / 1024:.0f} KiB, {a.seconds:.1f}s)",
                       "skipped": f"up to date: {a.file}",
                       "failed": f"FAILED {a.file}: {a.reason}"}[a.status]
                self.echo(f"  {msg}")
        merged = {**previous, **{a.file: asdict(a) for a in results}}
        for f, r in list(merged.items()):
            if r.get("status") == "failed" and f not in {a.file for a in results}:
                merged.pop(f)
        artifacts.update_manifest(self.run.dir, "export", {
            "options": asdict(self.opts), "model_sha256": self.model_sha, "artifacts": list(merged.values())})
        self.summary(results)
        return results

    def summary(self, results: list[Artifact]) -> None:
        self.echo("")
        self.echo(f"{'artifact':<26}{'status':<9}{'size KiB':>9}{'acc':>8}{'drop':>7}  note")
        for a in results:
            acc = f"{a.accuracy:.4f}" if a.accuracy is not None else "-"
            drop = f"{a.drop_points:+.1f}" if a.drop_points is not None else "-"
            note = a.reason if a.status != "written" else (a.remedies[-1]["step"] if a.remedies else "")
            self.echo(f"{a.name:<26}{a.status:<9}{a.size_bytes / 1024:>9.0f}{acc:>8}{drop:>7}  {note}")


def _debug() -> bool:
    import os

    return bool(os.environ.get("EDGETL_DEBUG"))


def export(run_dir, opts: ExportOptions | None = None, echo=print) -> list[Artifact]:
    """Export the run's model; returns one Artifact per requested (format, quantization)."""
    return Exporter(run_dir, opts or ExportOptions(), echo).run_all()
