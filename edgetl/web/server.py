"""`edgetl serve RUN`: the browser device check over HTTP on the network the user chose.

The server serves exactly the files of the page it built for RUN (a fixed list, nothing
else on disk is reachable) and accepts one kind of upload: a results document posted by that
page, with the page's token, at most MAX_POST bytes, validated by the same schema checks as
`edgetl verify --device-results` (edgetl/verify/device_results.py) and written atomically as
RUN/device-results/browser-<device>.json. It binds to the --host the user gave, and says so.
"""
from __future__ import annotations

import hmac
import json
import os
import re
import secrets
import signal
import socket
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edgetl import artifacts, signals
from edgetl.errors import EdgetlError
from edgetl.rundir import DEVICE_RESULTS, open_run
from edgetl.types import Echo, PathLike
from edgetl.verify import device_results
from edgetl.web.site import DEFAULT_SAMPLES, build_site

MAX_POST = 1024 * 1024  # a results document of 20 models x 1,000 images is ~150 KB
POST_PATH = "/results"
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript", ".mjs": "text/javascript",
         ".css": "text/css", ".json": "application/json", ".wasm": "application/wasm", ".txt": "text/plain",
         ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif", ".bmp": "image/bmp",
         ".webp": "image/webp"}


class Refused(Exception):
    """A posted document the server will not store; ``status`` is the HTTP answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def device_slug(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_]+", "-", name).strip("-")[:80].strip("-")
    return s or "browser"


def local_ipv4() -> list[str]:
    """This machine's IPv4 addresses other than loopback, read from its interfaces (Linux: an
    ioctl per interface; no packet is sent) and from its host name."""
    addrs: set[str] = set()
    try:
        import fcntl
        import struct

        for _, name in socket.if_nameindex():
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                try:
                    packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))  # SIOCGIFADDR
                    addrs.add(socket.inet_ntoa(packed[20:24]))
                except OSError:  # an interface without an IPv4 address
                    pass
    except (ImportError, AttributeError, OSError):  # not Linux
        pass
    try:
        addrs.update(socket.gethostbyname_ex(socket.gethostname())[2])
    except OSError:
        pass
    return sorted(a for a in addrs if not a.startswith("127."))


class WebCheckServer:
    """The page for one run, served from a temporary folder until :meth:`stop`."""

    def __init__(self, run_dir: PathLike, host: str = "127.0.0.1", port: int = 8765,
                 samples: int = DEFAULT_SAMPLES, echo: Echo = print):
        self.run = open_run(run_dir)
        self.echo = echo
        self.token = secrets.token_urlsafe(18)
        self.saved: list[Path] = []
        self.files: dict[str, Path] = {}
        try:  # listen first: a taken port is said at once, before the page is built
            self.httpd = ThreadingHTTPServer((host, port), self._handler())
        except OSError as e:
            raise EdgetlError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e}); "
                              f"choose another --port (0: any free port) or an address of this machine") from None
        self._tmp = tempfile.TemporaryDirectory(prefix="edgetl-web-")
        self.site = Path(self._tmp.name)
        try:
            self.spec = build_site(self.run.dir, self.site, samples=samples, post_url=POST_PATH, token=self.token,
                                   echo=echo)
            files = {"/" + p.relative_to(self.site).as_posix(): p for p in self.site.rglob("*") if p.is_file()}
            self.files = {**files, "/": self.site / "index.html"}
        except BaseException:
            self.httpd.server_close()
            self._tmp.cleanup()
            raise
        self.httpd.daemon_threads = True
        self.host, self.port = host, self.httpd.server_address[1]
        self._thread: threading.Thread | None = None

    # -- addresses --------------------------------------------------------------
    def urls(self) -> list[str]:
        """The URLs the page can be opened at (every address of this machine for 0.0.0.0)."""
        if self.host in ("0.0.0.0", "", "::"):
            return [f"http://{a}:{self.port}/" for a in local_ipv4()] + [f"http://127.0.0.1:{self.port}/"]
        host = f"[{self.host}]" if ":" in self.host else self.host
        return [f"http://{host}:{self.port}/"]

    # -- results ----------------------------------------------------------------
    def accept(self, body: bytes, token: str) -> dict[str, Any]:
        """Validate and store one posted results document; raises Refused (its message goes to the page)."""
        if not hmac.compare_digest(token.encode(), self.token.encode()):
            raise Refused(403, "wrong token: these results are not from the page this server serves")
        if len(body) > MAX_POST:
            raise Refused(413, f"{len(body)} bytes, more than {MAX_POST}")
        try:
            doc = json.loads(body.decode("utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise Refused(400, "not valid JSON") from None
        name = doc.get("device", {}).get("name") if isinstance(doc, dict) and isinstance(doc.get("device"), dict) else None
        folder = (self.run.dir / DEVICE_RESULTS).resolve()
        dest = folder / f"browser-{device_slug(name if isinstance(name, str) else '')}.json"
        if dest.parent != folder:  # pragma: no cover - the slug has no separators
            raise Refused(400, "bad device name")
        try:
            device_results.check(doc, dest, self.run.dir)
        except EdgetlError as e:
            raise Refused(400, e.message) from None
        artifacts.write_json(dest, doc)
        self.saved.append(dest)
        ok = [m for m in doc["models"] if "error" not in m]
        self.echo(f"results from {name}: {len(ok)} of {len(doc['models'])} model(s) ran -> {dest}")
        return {"saved": f"{self.run.dir.name}/{DEVICE_RESULTS}/{dest.name}",
                "verify": f"edgetl verify {self.run.dir} --device-results {dest}"}

    # -- HTTP -------------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "edgetl"
            sys_version = ""

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
                pass  # the terminal shows results, not every file request

            def _send(self, status: int, body: bytes, ctype: str, extra: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.send_header("X-Content-Type-Options", "nosniff")
                # cross-origin isolation: a finer performance.now() where the browser allows it (https, localhost)
                self.send_header("Cross-Origin-Opener-Policy", "same-origin")
                self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
                self.send_header("Cross-Origin-Resource-Policy", "same-origin")
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _json(self, status: int, obj: dict) -> None:
                self._send(status, json.dumps(obj).encode(), "application/json")

            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                f = server.files.get(path)
                if f is None:
                    self._json(404, {"error": f"{path}: not part of this page"})
                    return
                self._send(200, f.read_bytes(), TYPES.get(f.suffix.lower(), "application/octet-stream"))

            do_HEAD = do_GET

            def do_POST(self) -> None:
                if urlsplit(self.path).path != POST_PATH:
                    self._json(404, {"error": "POST only results, to " + POST_PATH})
                    return
                try:
                    n = int(self.headers.get("Content-Length") or "-1")
                except ValueError:
                    n = -1
                if n < 0:
                    self._json(411, {"error": "a Content-Length is required"})
                    return
                if n > MAX_POST:
                    self._json(413, {"error": f"{n} bytes, more than {MAX_POST}"})
                    self.close_connection = True
                    return
                body = self.rfile.read(n)
                try:
                    self._json(200, server.accept(body, self.headers.get("X-Edgetl-Token") or ""))
                except Refused as e:
                    server.echo(f"refused results from {self.client_address[0]}: {e.message}")
                    self._json(e.status, {"error": e.message})

        return Handler

    # -- life -------------------------------------------------------------------
    def start(self) -> WebCheckServer:
        """Serve in a background thread (for tests and notebooks)."""
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="edgetl-serve", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(5)
            self._thread = None
        self.httpd.server_close()
        self._tmp.cleanup()

    def __enter__(self) -> WebCheckServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def serve(run_dir: PathLike, host: str = "127.0.0.1", port: int = 8765, samples: int = DEFAULT_SAMPLES,
          echo: Echo = print) -> list[Path]:
    """Serve the page until Ctrl-C or SIGTERM; returns the results files written."""
    from edgetl.web.qr import terminal_qr

    srv = WebCheckServer(run_dir, host, port, samples, echo)
    urls = srv.urls()
    where = {"127.0.0.1": "this machine only", "localhost": "this machine only", "::1": "this machine only",
             "0.0.0.0": "every network of this machine", "::": "every network of this machine"}.get(host, host)
    echo(f"serving the device check of {srv.run.dir} ({len(srv.spec['models'])} model(s), "
         f"{srv.spec['samples']} images) on {host}:{srv.port} ({where})")
    for u in urls:
        echo(f"  open {u}")
    if where == "this machine only":
        echo("  a phone cannot reach this address: for a phone on your network use --host 0.0.0.0 "
             "(or this machine's LAN address)")
    qr = terminal_qr(urls[0])
    if qr:
        try:
            echo(qr.rstrip("\n"))
        except UnicodeEncodeError:  # a terminal without block characters
            pass
    echo(f"results are saved in {srv.run.dir / DEVICE_RESULTS}/; Ctrl-C stops the server")

    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        if stop.is_set():  # a second signal: the first one's shut-down is taking too long
            os._exit(128 + signum)
        stop.set()
        signals.note(signum)  # the CLI ends with its line and exit code (130/143)
        threading.Thread(target=srv.httpd.shutdown, daemon=True).start()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        srv.httpd.serve_forever(poll_interval=0.2)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        srv.httpd.server_close()
        srv._tmp.cleanup()
    echo(f"stopped; {len(srv.saved)} results file(s) written"
         + "".join(f"\n  edgetl verify {srv.run.dir} --device-results {p}" for p in srv.saved))
    return srv.saved
