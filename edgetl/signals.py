"""SIGINT (Ctrl-C) and SIGTERM (how Kubernetes, Slurm and most schedulers stop a job) end every
command the same way: Python raises at its next bytecode in the main thread, every atomic write
in flight is abandoned (its temporary file removed), the command prints one line and exits with
130 (SIGINT) or 143 (SIGTERM). Training says how to resume; the checkpoints keep every
finished epoch and every finished view-cache shard.

A second signal while the first is being handled exits at once with the same code."""
from __future__ import annotations

import os
import signal
import threading

received: int | None = None  # the first signal that arrived


class Terminated(KeyboardInterrupt):
    """SIGTERM: handled like Ctrl-C (a KeyboardInterrupt), with its own exit code."""


def _handler(signum, frame):  # pragma: no cover - exercised through real signals in subprocess tests
    global received
    if received is not None:  # a second signal: the first one's clean-up is taking too long
        os._exit(128 + received)
    received = signum
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def install() -> None:
    """Route SIGINT and SIGTERM through :func:`_handler` (main thread only; idempotent). Call it
    again after anything that may take the signals over (a TensorFlow cluster runtime)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, _handler)


def name() -> str:
    return "SIGTERM" if received == signal.SIGTERM else "SIGINT (Ctrl-C)"


def exit_code() -> int:
    """130 after SIGINT (or a KeyboardInterrupt raised by Python itself), 143 after SIGTERM."""
    return 128 + (received or signal.SIGINT)
