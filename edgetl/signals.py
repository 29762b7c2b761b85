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
_hard_stop = False  # inside a HardStop: install() leaves its handlers alone


class Terminated(KeyboardInterrupt):
    """SIGTERM: handled like Ctrl-C (a KeyboardInterrupt), with its own exit code."""


def _handler(signum, frame):  # pragma: no cover - exercised through real signals in subprocess tests
    global received
    if received is not None:  # a second signal: the first one's clean-up is taking too long
        os._exit(128 + received)
    received = signum
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


_active = False  # install() was called (the CLI): reinstall() may take the signals back


def install() -> dict:
    """Route SIGINT and SIGTERM through :func:`_handler` (main thread only). Returns the previous
    handlers, for :func:`restore` (the CLI restores them when a command returns)."""
    global _active
    if threading.current_thread() is not threading.main_thread() or _hard_stop:
        return {}
    _active = True
    return {s: signal.signal(s, _handler) for s in (signal.SIGINT, signal.SIGTERM)}


def reinstall() -> None:
    """After anything that may take the signals over (a TensorFlow cluster runtime): the CLI's
    handlers again, if the CLI installed them (a notebook's own handlers are left alone)."""
    if _active:
        install()


def restore(previous: dict) -> None:
    """The handlers from before :func:`install`; the next command starts with no signal received."""
    global _active, received
    for s, h in previous.items():
        signal.signal(s, h)
    _active, received = False, None


def note(signum: int) -> None:
    """A signal that a command handled with its own handler (``edgetl serve`` stops its server on
    the first): under the CLI, the command then ends with that signal's line and exit code."""
    global received
    if _active and received is None:
        received = signum


def name() -> str:
    return "SIGTERM" if received == signal.SIGTERM else "SIGINT (Ctrl-C)"


def exit_code() -> int:
    """130 after SIGINT (or a KeyboardInterrupt raised by Python itself), 143 after SIGTERM."""
    return 128 + (received or signal.SIGINT)


class HardStop:
    """For a call that blocks in C++ where Python cannot run a handler (TensorFlow connecting to its
    cluster waits for every worker): on SIGINT or SIGTERM a watchdog thread prints ``message`` and
    ends the process at once with 130/143. Nothing may be written inside: the process ends without
    clean-up.

    Whichever thread the kernel hands the signal to (TensorFlow's own threads among them), Python's
    C-level handler writes its number to the wakeup file descriptor (:func:`signal.set_wakeup_fd`);
    the watchdog reads it there, so it does not need the main thread to run any Python code."""

    def __init__(self, message: str):
        self.message = message
        self._sigs = (signal.SIGINT, signal.SIGTERM)
        self._lock = threading.Lock()

    def _stop(self, sig: int) -> None:  # pragma: no cover - exercised through real signals in subprocess tests
        global received
        if not self._lock.acquire(blocking=False):  # the watchdog and the main thread's handler: one line
            return
        received = sig
        # to the stderr of the start: TensorFlow's import may point fd 2 at /dev/null meanwhile
        os.write(self._stderr, f"error: interrupted by {name()} {self.message}\n".encode())
        os._exit(exit_code())

    def _watch(self) -> None:  # pragma: no cover
        while True:
            try:
                data = os.read(self._r, 16)
            except OSError:
                return
            if not data or self._done:
                return
            for sig in data:
                if sig in self._sigs:
                    self._stop(sig)

    def __enter__(self) -> HardStop:
        global _hard_stop
        self._done = False
        self._thread = None
        if threading.current_thread() is not threading.main_thread():
            return self
        _hard_stop = True
        self._stderr = os.dup(2)
        self._r, self._w = os.pipe()
        os.set_blocking(self._w, False)
        self._previous = {s: signal.getsignal(s) for s in self._sigs}
        for s in self._sigs:  # a Python handler installs the C-level one that writes to the wakeup fd
            signal.signal(s, lambda signum, frame: self._stop(signum))
        self._old_fd = signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._watch, name="edgetl-hard-stop", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        global _hard_stop
        if self._thread is None:
            return
        self._done = True
        signal.set_wakeup_fd(self._old_fd)
        os.write(self._w, b"\0")  # end the watchdog
        self._thread.join(timeout=5)
        for fd in (self._r, self._w, self._stderr):
            os.close(fd)
        _hard_stop = False
        for s, h in self._previous.items():
            signal.signal(s, h)
