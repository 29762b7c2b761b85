"""`edgetl bundle RUN --web`: the browser check as static files in a zip, to host anywhere
(any static web server, an intranet share, a phone's local server app). Without the edgetl
server the page cannot post its results, so its "download results" links carry them back."""
from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path

from edgetl import artifacts
from edgetl.errors import EdgetlError
from edgetl.rundir import open_run
from edgetl.types import Echo, PathLike
from edgetl.web.site import DEFAULT_SAMPLES, build_site

README = """edgetl browser device check for {run}

Host this folder on any static web server and open index.html from the phone's browser, e.g.
    python3 -m http.server 8000        (then open http://<this machine's address>:8000/)
Browsers do not run WebAssembly modules from file:// pages, so the folder must be served over HTTP(S).

Run the check, tap "download results", and back on the machine with edgetl:
    edgetl verify {run} --device-results results-wasm.json
"""


def web_bundle(run_dir: PathLike, out: PathLike, samples: int = DEFAULT_SAMPLES, echo: Echo = print) -> Path:
    run = open_run(run_dir)
    out = Path(out)
    if out.suffix != ".zip":
        raise EdgetlError(f"--out {out}: give a .zip path")
    root = run.dir.resolve().name + "-web/"
    with tempfile.TemporaryDirectory(prefix="edgetl-web-") as tmp:
        site = Path(tmp) / "site"
        spec = build_site(run.dir, site, samples=samples, echo=echo)
        (site / "README.txt").write_text(README.format(run=run.dir))
        with artifacts.atomic_path(out, suffix=".zip") as t, zipfile.ZipFile(t, "w", zipfile.ZIP_DEFLATED) as z:
            for p in sorted(site.rglob("*")):
                if p.is_file():
                    z.write(p, root + p.relative_to(site).as_posix())
    echo(f"web bundle: {out} ({out.stat().st_size / 2**20:.1f} MiB): {len(spec['models'])} model(s), "
         f"{spec['samples']} held-out images, LiteRT.js {spec['runtimes'].get('@litertjs/core')}, "
         f"onnxruntime-web {spec['runtimes'].get('onnxruntime-web')}")
    echo(f"host {root} on any static web server (e.g. python3 -m http.server in it), open it on the device, "
         f"then: edgetl verify {run.dir} --device-results results-wasm.json")
    return out
