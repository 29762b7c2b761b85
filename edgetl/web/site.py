"""The browser device check as a folder of static files, for one run.

``build_site(run, folder)`` writes everything the page needs and nothing else:

    index.html  check.js  style.css          the page (edgetl/web/page/)
    vendor/                                   LiteRT.js and onnxruntime-web (edgetl/web/vendor.py)
    models/<file>                             every exported .tflite / .onnx / .ort of the run
    images/<i>.<ext>                          the held-out images as they are on disk (shown in the page)
    samples.bin                               those images as the models' uint8 input tensors (N, H, W, 3)
    check.json                                the run, labels, input contract of each model, the Keras
                                              reference's and each model's Python-runtime probabilities

Preprocessing is the model's own by construction: the input tensors are decoded in Python by
edgetl's own decoder (edgetl.data.images: EXIF orientation, central crop to the aspect ratio, bilinear
resize), exactly as training and `edgetl verify` decode them, and the page feeds those bytes to
the models. The page therefore never decodes an image itself; the originals are shipped only to
be looked at.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from edgetl import __version__, artifacts
from edgetl import formats as registry
from edgetl.errors import EdgetlError
from edgetl.rundir import list_artifacts, open_run
from edgetl.types import Echo, PathLike
from edgetl.web import vendor

PAGE = Path(__file__).resolve().parent / "page"
PAGE_FILES = ("index.html", "check.js", "style.css")
SPEC = "check.json"
TENSORS = "samples.bin"
WEB_FORMATS = tuple(f.name for f in registry.FORMATS.values() if f.web)  # edgetl.formats
DEFAULT_SAMPLES = 100
MAX_IMAGE_BYTES = 8 * 1024 * 1024  # an original larger than this is not copied (its tensor still is)


def _io(runner: Any) -> dict[str, Any]:
    """The input/output contract the page must honour: dtypes and, for quantized TFLite I/O,
    the scale and zero point it quantizes with (as edgetl's LiteRT runner does)."""
    if hasattr(runner, "interp"):  # LiteRT
        io = {}
        for key, d in (("input", runner._in), ("output", runner._out)):
            dt = np.dtype(d["dtype"]).name
            scale, zp = d["quantization"]
            io[key] = {"dtype": dt, "shape": [int(v) for v in d["shape"]],
                       **({"scale": float(scale), "zero_point": int(zp)} if dt in ("int8", "uint8") else {})}
        return io
    inp, out = runner.sess.get_inputs()[0], runner.sess.get_outputs()[0]
    name = {"tensor(float)": "float32", "tensor(uint8)": "uint8"}
    return {"input": {"dtype": name.get(inp.type, inp.type), "name": inp.name},
            "output": {"dtype": name.get(out.type, out.type), "name": out.name}}


def _round(p: np.ndarray) -> list:
    return np.round(np.asarray(p, np.float64), 6).tolist()


def build_site(run_dir: PathLike, folder: PathLike, samples: int = DEFAULT_SAMPLES, formats=WEB_FORMATS,
               post_url: str | None = None, token: str | None = None, echo: Echo = print) -> dict[str, Any]:
    """Write the page for ``run_dir`` into ``folder`` (created; must be empty or absent).
    Returns the spec (check.json) it wrote."""
    from edgetl.data.tfdata import load_array
    from edgetl.runtime.runners import KerasRunner, open_runner

    run = open_run(run_dir)
    if samples < 1:
        raise EdgetlError(f"--samples {samples}: must be >= 1")
    models = [a for a in list_artifacts(run.dir) if a["format"] in formats]
    if not models:
        raise EdgetlError(f"{run.dir}: no exported {'/'.join(registry.get(f).suffix for f in formats)} models; "
                          f"run: edgetl export {run.dir}")
    vendor.require()
    split, files, labels = run.held_out()
    files, labels = files[:samples], labels[:samples]
    echo(f"web check: decoding {len(files)} held-out images ({split} split) with edgetl's decoder "
         f"({run.img_size} px, {run.resize})")
    x = load_array(files, run.img_size, run.resize)
    keras = KerasRunner(run.model_path).predict(x)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise EdgetlError(f"{out}: not empty; give a new folder")
    versions = vendor.copy_vendor(out)
    for name in PAGE_FILES:
        shutil.copyfile(PAGE / name, out / name)
    (out / TENSORS).write_bytes(np.ascontiguousarray(x, np.uint8).tobytes())
    images = []
    (out / "images").mkdir()
    for i, (f, y) in enumerate(zip(files, labels)):
        src = Path(f)
        row: dict[str, Any] = {"label": int(y), "source": src.name}
        if src.is_file() and src.stat().st_size <= MAX_IMAGE_BYTES:
            rel = f"images/{i:04d}{src.suffix.lower()[:6]}"
            shutil.copyfile(src, out / rel)
            row["file"] = rel
        images.append(row)
    (out / "models").mkdir()
    specs = []
    for m in models:
        echo(f"web check: {m['name']}: reference outputs from the Python runtime")
        runner = open_runner(m["path"], 1)
        try:
            ref = runner.predict(x)
            io = _io(runner)
            runtime = f"{runner.runtime} (Python)"
        finally:
            runner.close()
        shutil.copyfile(m["path"], out / "models" / m["name"])
        specs.append({"file": m["name"], "url": f"models/{m['name']}", "format": m["format"], "quant": m["quant"],
                      "runtime": registry.get(m["format"]).web,  # which of the page's runtimes opens it
                      "sha256": artifacts.sha256_file(m["path"]), "size_bytes": m["path"].stat().st_size,
                      "io": io, "reference_runtime": runtime, "reference_probs": _round(ref)})
    spec: dict[str, Any] = {
        "kind": "edgetl-web-check", "version": 1, "edgetl_version": __version__,
        "run": run.dir.resolve().name, "created": artifacts.now_iso(), "labels": run.labels,
        "input_size": [run.img_size, run.img_size], "resize": run.resize, "split": split, "samples": len(x),
        "tensors": {"file": TENSORS, "dtype": "uint8", "shape": [int(v) for v in x.shape]},
        "images": images, "keras_probs": _round(keras), "models": specs, "runtimes": versions,
        "post": post_url, "token": token,
    }
    (out / SPEC).write_text(json.dumps(spec))
    return spec
