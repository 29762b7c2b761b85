#!/usr/bin/env python3
"""edgetl device check: run exported models on this device and compare them with
the reference outputs recorded where they were exported.

Needs only Python 3.8+, numpy and one runtime: onnxruntime (for .onnx and .ort), and
ai-edge-litert or tflite-runtime (for .tflite). No TensorFlow, no edgetl.

    python edgetl_check.py                      # every model in this bundle
    python edgetl_check.py --threads 4 --name raspberry-pi-5 --out results.json
    python edgetl_check.py --time model.onnx --threads 2   # timing of one model, JSON on stdout
    python edgetl_check.py --time model.tflite --runtime mediapipe   # as MediaPipe Tasks runs it

Then, on the machine with edgetl: edgetl verify RUN --device-results results.json
"""
import argparse
import hashlib
import json
import os
import platform
import resource
import socket
import sys
import time
from pathlib import Path

import numpy as np

SCHEMA = 2  # of results.json; edgetl verify refuses versions it does not know


def _proc_status_mb(key):
    """A memory line of /proc/self/status in MB (None off Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def rss_mb():
    mb = _proc_status_mb("VmRSS")
    return peak_rss_mb() if mb is None else mb


def reset_peak_rss():
    """Start this process's peak resident memory afresh (Linux: /proc/self/clear_refs); False elsewhere."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb():
    mb = _proc_status_mb("VmHWM")  # this process's own peak (ru_maxrss can carry the parent's across fork/exec)
    if mb is not None:
        return mb
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024.0 * 1024.0) if sys.platform == "darwin" else r / 1024.0


class OnnxModel:
    runtime = "onnxruntime"

    @staticmethod
    def load_runtime():
        """Import the runtime (its import cost is not the model's memory)."""
        import onnxruntime as ort

        return ort

    def __init__(self, path, threads):
        ort = self.load_runtime()
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.inp = self.sess.get_inputs()[0]
        self.version = ort.__version__

    def run(self, x):
        x = np.ascontiguousarray(x, np.uint8 if self.inp.type == "tensor(uint8)" else np.float32)  # no copy if ready
        return np.asarray(self.sess.run(None, {self.inp.name: x})[0], np.float32)


class TfliteModel:
    @staticmethod
    def load_runtime():
        try:
            import ai_edge_litert as mod
            from ai_edge_litert.interpreter import Interpreter

            return mod, Interpreter, "ai-edge-litert"
        except ImportError:
            try:
                import tflite_runtime as mod
                from tflite_runtime.interpreter import Interpreter

                return mod, Interpreter, "tflite-runtime"
            except ImportError:
                raise ImportError("no TFLite runtime: pip install ai-edge-litert (or tflite-runtime)") from None

    def __init__(self, path, threads):
        mod, Interpreter, self.runtime = self.load_runtime()
        self.version = getattr(mod, "__version__", "?")
        self.it = Interpreter(model_path=str(path), num_threads=threads)
        self.batch = None

    def run(self, x):
        if self.batch != len(x):
            i = self.it.get_input_details()[0]
            self.it.resize_tensor_input(i["index"], list(x.shape))
            self.it.allocate_tensors()
            self.batch = len(x)
        i, o = self.it.get_input_details()[0], self.it.get_output_details()[0]
        if i["dtype"] in (np.int8, np.uint8):
            scale, zp = i["quantization"]
            info = np.iinfo(i["dtype"])
            x = np.clip(np.round(x / scale + zp), info.min, info.max).astype(i["dtype"])
        else:
            x = np.ascontiguousarray(x, i["dtype"])  # no copy when already float32
        self.it.set_tensor(i["index"], x)
        self.it.invoke()
        y = self.it.get_tensor(o["index"])
        if o["dtype"] in (np.int8, np.uint8):
            scale, zp = o["quantization"]
            y = (y.astype(np.float32) - zp) * scale
        return y.astype(np.float32)


class MediaPipeModel:
    """MediaPipe Tasks' ImageClassifier on a .tflite file with TFLite metadata, as an app runs it
    (uint8 RGB images at the model's size; MediaPipe chooses its own threads)."""

    runtime = "mediapipe"

    @staticmethod
    def load_runtime():
        try:
            import mediapipe as mp
            from mediapipe.tasks.python import BaseOptions, vision
        except ImportError:
            raise ImportError("no MediaPipe: pip install mediapipe") from None
        return mp, BaseOptions, vision

    def __init__(self, path, threads):
        mp, BaseOptions, vision = self.load_runtime()
        self.mp, self.version = mp, mp.__version__
        opts = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(path)), max_results=-1)
        self.classifier = vision.ImageClassifier.create_from_options(opts)
        self.k = None

    def run(self, x):
        out = []
        for img in np.clip(np.round(x), 0, 255).astype(np.uint8):
            res = self.classifier.classify(self.mp.Image(image_format=self.mp.ImageFormat.SRGB,
                                                         data=np.ascontiguousarray(img)))
            cats = res.classifications[0].categories
            self.k = self.k or max(c.index for c in cats) + 1
            p = np.zeros(self.k, np.float32)
            for c in cats:
                p[c.index] = c.score
            out.append(p)
        return np.stack(out)

    def close(self):
        if self.classifier is not None:
            self.classifier.close()
            self.classifier = None


RUNTIMES = {"onnxruntime": OnnxModel, "litert": TfliteModel, "mediapipe": MediaPipeModel}
# file suffix -> the runtime that opens it. bundle.json names each model's runtime (written from
# edgetl's format registry); this copy serves --time on a loose file and bundles made before that.
# tests/test_formats.py checks it equals the registry.
SUFFIX_RUNTIME = {".tflite": "litert", ".onnx": "onnxruntime", ".ort": "onnxruntime"}


def model_class(path, runtime=None):
    if runtime:
        return RUNTIMES[runtime]
    suffix = os.path.splitext(str(path))[1].lower()
    return RUNTIMES[SUFFIX_RUNTIME.get(suffix, "litert")]


def open_model(path, threads, runtime=None):
    return model_class(path, runtime)(path, threads)


def time_model(model, x1, runs, warmup):
    for _ in range(warmup):
        model.run(x1)
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        model.run(x1)
        t.append((time.perf_counter() - t0) * 1000.0)
    p50, p90, p99 = np.percentile(t, [50, 90, 99])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "mean_ms": float(np.mean(t)),
            "runs": runs, "warmup": warmup}


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(name):
    return {"name": name or socket.gethostname(), "hostname": socket.gethostname(), "cpu": cpu_name(),
            "cores": os.cpu_count(), "machine": platform.machine(), "platform": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__}


def time_one(path, threads, runs, warmup, size, runtime=None):
    """Latency and memory of one model. memory_mb is the model's own: the peak resident memory while
    loading and running it, above the resident memory once the runtime is imported (MediaPipe's
    import alone pulls in TensorFlow: hundreds of MB that an app pays once, whatever the model);
    import_mb is that import's cost, reported apart."""
    cls = model_class(path, runtime)
    x = np.random.default_rng(0).integers(0, 256, (1, size[0], size[1], 3)).astype(np.float32)
    start = rss_mb()
    cls.load_runtime()
    imported = rss_mb()
    basis = "peak" if reset_peak_rss() else "peak-including-import"  # off Linux the peak cannot be reset
    m = cls(path, threads)
    res = time_model(m, x, runs, warmup)
    model_mb = peak_rss_mb() - (imported if basis == "peak" else start)
    res.update(runtime=m.runtime, version=m.version, threads=threads, memory_mb=round(max(0.0, model_mb), 1),
               import_mb=round(max(0.0, imported - start), 1), memory_basis=basis,
               peak_rss_mb=round(peak_rss_mb(), 1))
    if hasattr(m, "close"):
        m.close()
    return res


class BundleError(Exception):
    """bundle.json names something this script will not open; main() prints it in one line."""


def plain_name(name):
    """A model file named by bundle.json must be a plain file name in the bundle's folder:
    no folder part ('/', '\\'), no '..', not absolute, no drive letter, no control character."""
    ok = (isinstance(name, str) and name not in ("", ".", "..") and len(name) <= 255
          and not any(c in name for c in "/\\:") and all(ord(c) >= 32 and c != "\x7f" for c in name))
    if not ok:
        shown = repr(name)[:80] if isinstance(name, str) else type(name).__name__
        raise BundleError(f"bundle.json: the model file {shown} is not a plain file name in this bundle (no '/', "
                          f"'\\', '..', drive or absolute path); nothing was opened. Copy the bundle again as "
                          f"'edgetl bundle' wrote it")
    return name


def check_bundle(folder, threads, runs, warmup, only):
    spec = json.loads((folder / "bundle.json").read_text())
    if not (isinstance(spec, dict) and isinstance(spec.get("models"), list)
            and all(isinstance(m, dict) for m in spec["models"])):
        raise BundleError("bundle.json: not a bundle description (no list of models); copy the bundle again")
    for m in spec["models"]:  # every name is checked before any file is opened
        plain_name(m.get("file"))
    data = np.load(folder / "samples.npz")
    x = data["images"].astype(np.float32)
    keras = data["keras_probs"]
    rows = []
    for m in spec["models"]:
        if only and m["file"] not in only:
            continue
        row = {"file": m["file"], "sha256": sha256_file(folder / m["file"]), "format": m["format"],
               "quant": m["quant"], "size_bytes": (folder / m["file"]).stat().st_size}
        if row["sha256"] != m.get("sha256"):
            print(f"  {m['file']:<26} WARNING: differs from the file bundled (sha256); copy the bundle again")
        try:
            model = open_model(folder / m["file"], threads, m.get("runtime") if m.get("runtime") in RUNTIMES else None)
        except ImportError as e:  # the runtime is not installed here: not a failure of the model
            row["skipped"] = f"runtime not installed on this device ({e})"
            print(f"  {m['file']:<26} skipped: {row['skipped']}")
            rows.append(row)
            continue
        except Exception as e:  # the runtime is here but cannot load the model: a real failure
            row["error"] = f"the runtime could not load it: {type(e).__name__}: {str(e).splitlines()[0][:300]}"
            print(f"  {m['file']:<26} FAILED: {row['error']}")
            rows.append(row)
            continue
        try:
            probs = np.concatenate([model.run(x[i:i + 1]) for i in range(len(x))])
        except Exception as e:
            row["error"] = f"the runtime could not run it: {type(e).__name__}: {str(e).splitlines()[0][:300]}"
            print(f"  {m['file']:<26} FAILED: {row['error']}")
            rows.append(row)
            continue
        ref = data["ref_" + m["key"]]
        row.update(runtime=model.runtime, runtime_version=model.version, threads=threads,
                   agreement_reference=float((probs.argmax(1) == ref.argmax(1)).mean()),
                   agreement_keras=float((probs.argmax(1) == keras.argmax(1)).mean()),
                   max_abs_dprob_reference=float(np.abs(probs - ref).max()),
                   max_abs_dprob_keras=float(np.abs(probs - keras).max()))
        row.update(time_model(model, x[:1], runs, warmup))
        rows.append(row)
        print(f"  {m['file']:<26} {model.runtime:<15} agree(ref) {row['agreement_reference']:.3f}  "
              f"agree(keras) {row['agreement_keras']:.3f}  p50 {row['p50_ms']:.2f} ms  "
              f"p90 {row['p90_ms']:.2f}  p99 {row['p99_ms']:.2f}")
    return spec, rows, len(x)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--name", default=None, help="Device name for the report (default: hostname).")
    ap.add_argument("--out", default="results.json")
    ap.add_argument("--models", default="", help="Comma list of model files to check (default: all).")
    ap.add_argument("--time", metavar="MODEL", help="Only time one model file; print JSON.")
    ap.add_argument("--size", default="224,224", help="With --time: input height,width.")
    ap.add_argument("--runtime", choices=sorted(RUNTIMES), default=None,
                    help="With --time: the runtime (default: onnxruntime for .onnx/.ort, LiteRT for .tflite).")
    a = ap.parse_args()
    if a.time:
        h, w = (int(v) for v in a.size.split(","))
        print(json.dumps(time_one(a.time, a.threads, a.runs, a.warmup, (h, w), a.runtime)))
        return 0
    folder = Path(__file__).resolve().parent
    print(f"edgetl device check: {folder.name}, {a.threads} thread(s), {a.runs} timed runs")
    try:
        spec, rows, n = check_bundle(folder, a.threads, a.runs, a.warmup, {s for s in a.models.split(",") if s})
    except BundleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    res = {"schema": SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "samples": n,
           "bundle": {"run": spec.get("run"), "created": spec.get("created"), "samples": spec.get("samples"),
                      "models": [{"file": m["file"], "sha256": m["sha256"]} for m in spec["models"]]},
           "device": device_info(a.name), "threads": a.threads, "models": rows}
    Path(a.out).write_text(json.dumps(res, indent=2))
    print(f"results: {a.out}")
    ok = [r for r in rows if "error" not in r and "skipped" not in r]
    skipped = [r for r in rows if "skipped" in r]
    if skipped:
        print(f"{len(skipped)} model(s) skipped: their runtime is not installed here (not a failure)")
    if not ok:
        print("no model could be checked: install onnxruntime or ai-edge-litert and run again")
    return 0 if ok and all(r["agreement_reference"] >= 0.95 for r in ok) \
        and not any("error" in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
