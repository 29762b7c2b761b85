"""The page's JavaScript runtimes, installed by npm from package.json/package-lock.json
(exact versions) into edgetl/web/node_modules, and the few files of them a page needs.

Nothing is loaded from a CDN: ``copy_vendor`` copies the runtime's module and WASM files
into the folder that is served (or zipped), so the page works on an offline LAN."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from edgetl.errors import EdgetlError

HERE = Path(__file__).resolve().parent
NODE_MODULES = HERE / "node_modules"
INSTALL = "run `make install` (needs node and npm; it runs `npm ci --prefix edgetl/web`)"

# (package, file inside it, where the page loads it from)
FILES: tuple[tuple[str, str, str], ...] = (
    ("@litertjs/core", "dist/index.js", "vendor/litert/index.js"),
    ("@litertjs/wasm-utils", "dist/index.js", "vendor/litert/wasm-utils.js"),
    # loadLiteRt(dir) picks one of these by the browser's WASM features (no threads, no JSPI)
    ("@litertjs/core", "wasm/litert_wasm_internal.js", "vendor/litert/wasm/litert_wasm_internal.js"),
    ("@litertjs/core", "wasm/litert_wasm_internal.wasm", "vendor/litert/wasm/litert_wasm_internal.wasm"),
    ("@litertjs/core", "wasm/litert_wasm_compat_internal.js", "vendor/litert/wasm/litert_wasm_compat_internal.js"),
    ("@litertjs/core", "wasm/litert_wasm_compat_internal.wasm", "vendor/litert/wasm/litert_wasm_compat_internal.wasm"),
    # onnxruntime-web: its WASM-only build for the wasm backend (the smaller, faster binary) ...
    ("onnxruntime-web", "dist/ort.wasm.min.mjs", "vendor/ort/ort.wasm.min.mjs"),
    ("onnxruntime-web", "dist/ort-wasm-simd-threaded.mjs", "vendor/ort/ort-wasm-simd-threaded.mjs"),
    ("onnxruntime-web", "dist/ort-wasm-simd-threaded.wasm", "vendor/ort/ort-wasm-simd-threaded.wasm"),
    # ... and its WebGPU build (loaded only where the browser has a WebGPU adapter)
    ("onnxruntime-web", "dist/ort.webgpu.min.mjs", "vendor/ort/ort.webgpu.min.mjs"),
    ("onnxruntime-web", "dist/ort-wasm-simd-threaded.asyncify.mjs", "vendor/ort/ort-wasm-simd-threaded.asyncify.mjs"),
    ("onnxruntime-web", "dist/ort-wasm-simd-threaded.asyncify.wasm", "vendor/ort/ort-wasm-simd-threaded.asyncify.wasm"),
)
LICENSES = (("@litertjs/core", "Apache-2.0"), ("onnxruntime-web", "MIT"))


def pinned() -> dict[str, str]:
    """The exact versions package.json pins."""
    return dict(json.loads((HERE / "package.json").read_text())["dependencies"])


def installed_versions(node_modules: Path | None = None) -> dict[str, str]:
    node_modules = node_modules or NODE_MODULES
    out = {}
    for name in pinned():
        p = node_modules / name / "package.json"
        if p.is_file():
            out[name] = json.loads(p.read_text()).get("version", "?")
    return out


def missing(node_modules: Path | None = None) -> str | None:
    """Why the runtimes cannot be served (None: they can)."""
    node_modules = node_modules or NODE_MODULES
    want, have = pinned(), installed_versions(node_modules)
    for name, version in want.items():
        if name not in have:
            return f"{node_modules / name} is not installed; {INSTALL}"
        if have[name] != version:
            return f"{node_modules / name} is version {have[name]}, package.json pins {version}; {INSTALL}"
    for pkg, rel, _ in FILES:
        if not (node_modules / pkg / rel).is_file():
            return f"{node_modules / pkg / rel} is missing; {INSTALL}"
    return None


def require(node_modules: Path | None = None) -> None:
    why = missing(node_modules)
    if why:
        raise EdgetlError(f"the browser check's JavaScript runtimes: {why}")


def copy_vendor(dest: Path, node_modules: Path | None = None) -> dict[str, str]:
    """Copy the page's runtime files under ``dest``; returns {package: version}."""
    node_modules = node_modules or NODE_MODULES
    require(node_modules)
    for pkg, rel, to in FILES:
        target = dest / to
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(node_modules / pkg / rel, target)
    versions = installed_versions(node_modules)
    (dest / "vendor" / "README.txt").write_text(
        "Copied from npm packages pinned in edgetl/web/package-lock.json:\n"
        + "".join(f"  {pkg} {versions.get(pkg, '?')} ({lic})\n" for pkg, lic in LICENSES))
    return versions
