"""`edgetl bundle`: a self-contained zip to validate exported models on the
device itself (Raspberry Pi, phone under Termux, any computer): the models,
labels, fixed sample inputs with reference outputs, and one standalone script
that needs only numpy and a runtime."""
from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from edgetl import artifacts
from edgetl import formats as registry
from edgetl.config import BUNDLE_FORMATS, BundleOptions, default
from edgetl.errors import EdgetlError
from edgetl.rundir import LABELS, list_artifacts, open_run, sidecar
from edgetl.runtime.timing import CHECK_SCRIPT
from edgetl.types import Echo, PathLike

README = """edgetl device bundle for {run}

1. Copy this zip to the device and unzip it.
2. pip install numpy and a runtime: onnxruntime (for .onnx and .ort) and/or ai-edge-litert or tflite-runtime (for .tflite).
3. python edgetl_check.py --threads {threads} --name my-device --out results.json
4. Back on the machine with edgetl: edgetl verify {run} --device-results results.json

The script runs every model on {n} fixed sample images, compares the outputs with
the reference outputs recorded at export (agreement, max |delta prob|) and times
batch-1 latency (p50/p90/p99). Models whose runtime is not installed are skipped.
"""


def _key(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def bundle(run_dir: PathLike, out: PathLike, formats: str | tuple[str, ...] = default(BundleOptions, "formats"),
           samples: int = default(BundleOptions, "samples"), threads: int = default(BundleOptions, "threads"),
           echo: Echo = print) -> Path:
    """The device bundle of the run's exported ``formats`` (defaults and checks: :class:`BundleOptions`)."""
    from edgetl.data.tfdata import load_array
    from edgetl.runtime.runners import KerasRunner, open_runner

    run = open_run(run_dir)
    if isinstance(formats, str):
        formats = tuple(f.strip() for f in formats.split(",") if f.strip())
    bad = [f for f in formats if f not in BUNDLE_FORMATS]
    if bad:
        raise EdgetlError(f"--formats {','.join(formats)}: use a comma list of {','.join(BUNDLE_FORMATS)}")
    models = [a for a in list_artifacts(run.dir) if a["format"] in formats]
    if not models:
        raise EdgetlError(f"{run.dir}: no exported {'/'.join(formats)} models; run: edgetl export {run.dir}")
    BundleOptions(formats, samples, threads).validate()
    _, files, labels = run.held_out()
    x = load_array(files[:samples], run.img_size, run.resize)
    arrays = {"images": x, "labels": np.asarray(labels[:samples]),
              "keras_probs": KerasRunner(run.model_path).predict(x)}
    name = run.dir.resolve().name  # results.json must name this run (checked by edgetl verify)
    spec: dict[str, Any] = {"run": name, "labels": run.labels, "input_size": [run.img_size, run.img_size],
                            "created": artifacts.now_iso(), "samples": len(x), "models": []}
    for m in models:
        arrays["ref_" + _key(m["name"])] = open_runner(m["path"], threads).predict(x)
        spec["models"].append({"file": m["name"], "format": m["format"], "quant": m["quant"], "key": _key(m["name"]),
                               "sha256": artifacts.sha256_file(m["path"]),
                               "runtime": registry.get(m["format"]).device_check})
    out = Path(out)
    if out.suffix != ".zip":
        raise EdgetlError(f"--out {out}: give a .zip path")
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
    with artifacts.atomic_path(out, suffix=".zip") as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        root = name + "-bundle/"
        for m in models:
            z.write(m["path"], root + m["name"])
            side = sidecar(m["path"])
            if side.exists():
                z.write(side, root + side.name)
        z.write(CHECK_SCRIPT, root + "edgetl_check.py")
        z.writestr(root + "samples.npz", buf.getvalue())
        z.writestr(root + "bundle.json", json.dumps(spec, indent=2))
        z.writestr(root + LABELS, "\n".join(run.labels) + "\n")
        z.writestr(root + "README.txt", README.format(run=run.dir, threads=threads, n=len(x)))
    echo(f"bundle: {out} ({out.stat().st_size / 1024:.0f} KiB): {len(models)} model(s), {len(x)} sample images, "
         f"edgetl_check.py")
    echo(f"on the device: unzip, pip install numpy onnxruntime (or ai-edge-litert), "
         f"python {root}edgetl_check.py --out results.json")
    return out
