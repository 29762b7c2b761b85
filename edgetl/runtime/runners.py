"""One Runner interface for Keras, LiteRT, onnxruntime and MediaPipe Tasks.

A runner loads a model file, describes its input, and turns a batch of RGB
0-255 images (uint8 or float32, NHWC, at the model's input size) into class
probabilities. Verification, prediction and benchmarks use nothing else, so no
format is special-cased anywhere: the format registry (:mod:`edgetl.formats`) names each
suffix's runner and the other runtimes that run files of a format (MediaPipe Tasks runs
.tflite files as an app would), each a verify row of its own."""
from __future__ import annotations

import atexit
import json
import os
import weakref
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from edgetl import formats, native_stderr
from edgetl.errors import EdgetlError


def softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


class Runner(ABC):
    format: str = ""
    runtime: str = ""

    @staticmethod
    def io_names(path) -> tuple[str, str]:
        """(input, output) tensor names of the file, as its runtime reports them."""
        raise NotImplementedError

    def __init__(self, path, threads: int | None = None):
        self.path = Path(path)
        self.threads = threads
        self.meta = read_sidecar(self.path)

    @property
    @abstractmethod
    def input_size(self) -> tuple[int, int]:
        """(height, width) the model takes."""

    @property
    def input_dtype(self) -> str:
        return "float32"

    @abstractmethod
    def _run(self, images: np.ndarray) -> np.ndarray:
        """Model outputs for float32 0-255 images."""

    def predict(self, images) -> np.ndarray:
        x = np.asarray(images)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[-1] != 3:
            raise EdgetlError(f"{self.path.name}: expected images of shape (N, H, W, 3), got {x.shape}")
        if tuple(x.shape[1:3]) != tuple(self.input_size):
            raise EdgetlError(f"{self.path.name}: takes {self.input_size[0]}x{self.input_size[1]} images, "
                              f"got {x.shape[1]}x{x.shape[2]}; resize first")
        return self._run(np.ascontiguousarray(x, np.float32))

    @property
    def labels(self) -> list[str] | None:
        return self.meta.get("labels")

    @classmethod
    def unavailable(cls, path) -> str | None:
        """Why this runner cannot run ``path`` on this machine (None: it can)."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook, not abstract
        """Release the runtime's resources (most runtimes need nothing)."""

    def describe(self) -> dict:
        return {"path": str(self.path), "format": self.format, "runtime": self.runtime,
                "input_size": list(self.input_size), "input_dtype": self.input_dtype,
                "threads": self.threads, "size_bytes": file_size(self.path)}


def io_names(path) -> tuple[str, str]:
    """(input, output) tensor names of a .tflite, .onnx or .ort file, as its runtime reports
    them: what an app feeds and fetches by name (the sidecar states these)."""
    p = Path(path)
    cls = _runners().get(p.suffix.lower())
    if cls is None:
        raise EdgetlError(f"{p}: unknown model format '{p.suffix}'; use {', '.join(formats.SUFFIXES)}")
    return cls.io_names(p)


def file_size(path) -> int:
    p = Path(path)
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return p.stat().st_size


def read_sidecar(path) -> dict:
    """Labels and preprocessing travelling with a model: the JSON sidecar, else
    labels.txt beside it or in the run directory above."""
    from edgetl.rundir import LABELS, labels_near, resize_near, run_of, sidecar

    sc = sidecar(path)
    if sc.exists():
        try:
            meta = json.loads(sc.read_text())
        except ValueError:
            raise EdgetlError(f"{sc}: not valid JSON; re-export the model") from None
        if not isinstance(meta, dict):
            raise EdgetlError(f"{sc}: expected a JSON object; re-export the model")
        return {**check_meta(meta, sc), "labels_source": str(sc)}
    labels = labels_near(path)
    f = formats.of_file(path)
    if not labels and f is not None and f.metadata == formats.TFLITE_METADATA:
        from edgetl.runtime.tflite_metadata import packed_labels

        labels = packed_labels(path)  # labels.txt packed into the model with its metadata
    if not labels:
        return {}
    resize = resize_near(path)
    run = run_of(path)
    return {"labels": labels, "labels_source": str(run / LABELS) if run else str(path),
            **({"input": {"resize": resize}} if resize else {})}


def check_meta(meta: dict, where) -> dict:
    """A sidecar's fields of the types edgetl reads (a hand-edited sidecar is named, field
    and all, instead of failing later)."""
    from edgetl.config import RESIZES

    def bad(field: str, want: str) -> EdgetlError:
        return EdgetlError(f"{where}: {field} must be {want}; it was edited: export the model again "
                           f"(edgetl export RUN --force)")

    labels = meta.get("labels")
    if labels is not None and not (isinstance(labels, list) and all(isinstance(s, str) for s in labels)):
        raise bad("labels", "a list of strings")
    inp = meta.get("input")
    if inp is not None and not isinstance(inp, dict):
        raise bad("input", "a mapping (size, resize, ...)")
    if isinstance(inp, dict) and "resize" in inp and inp["resize"] not in RESIZES:
        raise bad("input.resize", " or ".join(RESIZES))
    return meta


class KerasRunner(Runner):
    format, runtime = "keras", "keras"

    def __init__(self, path, threads=None):
        super().__init__(path, threads)
        if threads:
            _tf_threads(threads)
        from edgetl.nets.model import load_keras

        self.model = load_keras(self.path)
        last = self.model.layers[-1]
        act = getattr(getattr(last, "activation", None), "__name__", "")
        self.outputs_probs = act == "softmax" or last.__class__.__name__ == "Softmax"
        import tensorflow as tf

        shape = self.model.inputs[0].shape
        self._size = (int(shape[1]), int(shape[2]))
        self._fn = tf.function(lambda x: self.model(x, training=False),
                               input_signature=[tf.TensorSpec([None, *self._size, 3], tf.float32)])

    @property
    def input_size(self):
        return self._size

    def _run(self, images):
        out = self._fn(images).numpy()
        return out.astype(np.float32) if self.outputs_probs else softmax(out)


def _tf_threads(n: int) -> None:
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(n)
    except RuntimeError:  # already initialised: keep what is set
        pass


class LiteRTRunner(Runner):
    """ai_edge_litert interpreter (XNNPACK delegate by default); int8/uint8 I/O is fed
    and read through the tensors' scale and zero-point."""

    format, runtime = formats.TFLITE.name, formats.TFLITE.runtime

    @staticmethod
    def io_names(path) -> tuple[str, str]:
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=str(path))
        return str(it.get_input_details()[0]["name"]), str(it.get_output_details()[0]["name"])

    def __init__(self, path, threads=None):
        super().__init__(path, threads)
        from ai_edge_litert.interpreter import Interpreter

        try:
            self.interp = Interpreter(model_path=str(self.path), num_threads=threads or os.cpu_count())
        except Exception as e:
            raise EdgetlError(f"{self.path}: not a loadable TFLite model ({str(e).splitlines()[0][:100]})") from None
        self._in = self.interp.get_input_details()[0]
        self._out = self.interp.get_output_details()[0]
        self._batch = None

    @property
    def input_size(self):
        s = self._in["shape"]
        return int(s[1]), int(s[2])

    @property
    def input_dtype(self):
        return np.dtype(self._in["dtype"]).name

    def _resize(self, n: int) -> None:
        if self._batch != n:
            self.interp.resize_tensor_input(self._in["index"], [n, *self.input_size, 3])
            with native_stderr.quiet():  # the XNNPACK delegate's INFO line
                self.interp.allocate_tensors()
            self._in = self.interp.get_input_details()[0]
            self._out = self.interp.get_output_details()[0]
            self._batch = n

    def _run(self, images):
        self._resize(len(images))
        dt = self._in["dtype"]
        if dt in (np.int8, np.uint8):
            scale, zp = self._in["quantization"]
            info = np.iinfo(dt)
            x = np.clip(np.round(images / scale + zp), info.min, info.max).astype(dt)
        else:
            x = np.ascontiguousarray(images, dt)  # no copy when already float32
        self.interp.set_tensor(self._in["index"], x)
        self.interp.invoke()
        y = self.interp.get_tensor(self._out["index"])
        if self._out["dtype"] in (np.int8, np.uint8):
            scale, zp = self._out["quantization"]
            y = (y.astype(np.float32) - zp) * scale
        return y.astype(np.float32)


class OnnxRunner(Runner):
    format, runtime = formats.ONNX.name, formats.ONNX.runtime

    @staticmethod
    def io_names(path) -> tuple[str, str]:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return sess.get_inputs()[0].name, sess.get_outputs()[0].name

    def __init__(self, path, threads=None):
        super().__init__(path, threads)
        import onnxruntime as ort

        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.sess = ort.InferenceSession(str(self.path), so, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise EdgetlError(f"{self.path}: not a loadable ONNX model ({str(e).splitlines()[0][:100]})") from None
        self._in = self.sess.get_inputs()[0]
        props = self.sess.get_modelmeta().custom_metadata_map
        if "labels" in props and "labels" not in self.meta:
            try:
                labels = json.loads(props["labels"][:1 << 20])
            except ValueError:
                labels = None
            where = f"{self.path} (its 'labels' metadata)"
            self.meta = {**self.meta, **check_meta({"labels": labels if labels is not None else 0}, where),
                         "labels_source": where}
        s = self._in.shape
        if len(s) != 4 or not all(isinstance(v, int) and v > 0 for v in s[1:3]):
            raise EdgetlError(f"{self.path}: its input {self._in.name!r} has shape {s}; edgetl runs image models "
                              f"with a fixed NHWC size (N, height, width, 3): export it with a fixed input size")

    @property
    def input_size(self):
        s = self._in.shape
        return int(s[1]), int(s[2])

    @property
    def input_dtype(self):
        return {"tensor(float)": "float32", "tensor(uint8)": "uint8"}.get(self._in.type, self._in.type)

    def _run(self, images):
        x = np.ascontiguousarray(images, np.uint8) if self.input_dtype == "uint8" else images
        return np.asarray(self.sess.run(None, {self._in.name: x})[0], np.float32)


class OrtRunner(OnnxRunner):
    """onnxruntime on an ORT-format model (its mobile format): the same session API."""

    format, runtime = formats.ORT.name, formats.ORT.runtime


class MediaPipeRunner(Runner):
    """MediaPipe Tasks' ImageClassifier on a .tflite file as it is, the way an Android, iOS,
    web or Python app runs it: it reads the input size, normalisation and labels from the
    model's TFLite metadata (a model without metadata is refused, as in an app). Images go in
    as uint8 RGB at the model's size, so MediaPipe does not resize them. MediaPipe's Python
    API has no thread setting; it uses its own default."""

    format, runtime = formats.TFLITE.name, "mediapipe"
    INSTALL = "pip install --no-deps mediapipe==1.2.2 (make install does)"

    def __init__(self, path, threads=None):
        super().__init__(path, threads)
        why = self.unavailable(self.path)
        if why:
            raise EdgetlError(f"{self.path}: MediaPipe cannot run it: {why}")
        from mediapipe.tasks.python import BaseOptions, vision

        from edgetl.runtime.tflite_metadata import io_contract

        data = self.path.read_bytes()
        c = io_contract(data)
        self._size, self._dtype, self._k = (c["height"], c["width"]), c["input_type"], c["classes"]
        opts = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_buffer=data), max_results=-1)
        try:
            with native_stderr.quiet():  # the XNNPACK delegate's INFO line
                self.classifier = vision.ImageClassifier.create_from_options(opts)
        except Exception as e:
            raise EdgetlError(f"{self.path}: MediaPipe's ImageClassifier refuses it ({str(e).splitlines()[0][:150]})"
                              ) from None
        _OPEN_CLASSIFIERS.add(self)

    @classmethod
    def unavailable(cls, path) -> str | None:
        """Why MediaPipe cannot run this file here (None: it can)."""
        import importlib.util

        if importlib.util.find_spec("mediapipe") is None:
            return f"mediapipe is not installed ({cls.INSTALL})"
        from edgetl.runtime.tflite_metadata import io_contract

        try:
            c = io_contract(Path(path).read_bytes())
        except (OSError, ValueError) as e:
            return str(e)
        if c["input_type"] == "int8":
            return "int8 input; MediaPipe Tasks takes uint8 or float32 images (export with --io-type uint8 or float32)"
        from edgetl.runtime.tflite_metadata import metadata_buffer

        if metadata_buffer(Path(path).read_bytes()) is None:
            return "no TFLite metadata, so an app's ImageClassifier would refuse it; re-export: edgetl export RUN"
        return None

    @property
    def input_size(self):
        return self._size

    @property
    def input_dtype(self):
        return self._dtype

    def _run(self, images):
        import mediapipe as mp

        out = np.zeros((len(images), self._k), np.float32)
        pixels = np.clip(np.round(images), 0, 255).astype(np.uint8)
        for i, x in enumerate(pixels):
            res = self.classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(x)))
            for c in res.classifications[0].categories:
                out[i, c.index] = c.score
        return out

    def close(self) -> None:
        c = getattr(self, "classifier", None)
        if c is not None:
            c.close()
            self.classifier = None


# MediaPipe's classifier fails in its own __del__ once the interpreter is shutting down:
# the runners still open then are closed while it is alive.
_OPEN_CLASSIFIERS: weakref.WeakSet = weakref.WeakSet()
atexit.register(lambda: [r.close() for r in list(_OPEN_CLASSIFIERS)])

def _runners() -> dict[str, type[Runner]]:
    """File suffix -> Runner: the Keras reference, then each registered format's (edgetl.formats)."""
    return {".keras": KerasRunner, **{f.suffix: formats.resolve(f.runner) for f in formats.FORMATS.values()}}


def _runtimes() -> dict[str, type[Runner]]:
    return {rt: formats.resolve(ref) for rt, ref in formats.RUNTIMES.items()}


def open_runner(path, threads: int | None = None, runtime: str | None = None) -> Runner:
    """The runner of ``path``: by its suffix, or the named ``runtime`` (see RUNTIMES)."""
    p = Path(path)
    if not p.exists():
        raise EdgetlError(f"{p}: no such model file")
    runners, runtimes = _runners(), _runtimes()
    cls = runtimes.get(runtime) if runtime else runners.get(p.suffix.lower())
    if cls is None:
        if runtime:
            raise EdgetlError(f"unknown runtime '{runtime}'; use one of {', '.join(runtimes)}")
        raise EdgetlError(f"{p}: unknown model format '{p.suffix}'; use {', '.join(runners)}")
    return cls(p, threads)


def extra_runtimes(path) -> list[tuple[str, str | None]]:
    """(runtime, why it cannot run here or None) for each extra runtime of the file's suffix."""
    f = formats.of_file(path)
    return [(rt, formats.resolve(ref).unavailable(path)) for rt, ref in (f.extra_runtimes if f else {}).items()]
