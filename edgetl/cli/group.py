"""The ``edgetl`` group: global options, and the one place errors become a one-line message with
an exit code (``EdgetlGroup``); the helpers every command module uses (defaults from the option
dataclasses, old option spellings)."""
from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from edgetl.config import default
from edgetl.errors import EdgetlError

F = Callable[..., Any]
OS_FIXES = {
    errno.ENOSPC: "the disk is full; free some space (or choose --out on another disk), then run the same "
                  "command again (add --resume for an interrupted training)",
    errno.EDQUOT: "the disk quota is exceeded; free some space, then run the same command again",
    errno.EROFS: "read-only file system; choose a writable --out",
    errno.EACCES: "permission denied; choose a folder you can write to (--out)",
    errno.EPERM: "operation not permitted; choose a folder you can write to (--out)",
    errno.ENOENT: "no such file or folder; check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder; check the path",
    errno.EISDIR: "is a folder; give a file path",
}


def os_error_message(e: OSError) -> str:
    """One line for a failed file operation: the path, what happened, and the fix."""
    path = e.filename or ""
    fix = OS_FIXES.get(e.errno or 0, e.strerror or str(e))
    if path and e.errno in OS_FIXES and e.strerror:
        return f"{path}: {e.strerror.lower()}: {fix.split('; ', 1)[-1] if ';' in fix else fix}"
    return f"{path}: {fix}" if path else fix


def debugging() -> bool:
    return os.environ.get("EDGETL_DEBUG", "") not in ("", "0")


class EdgetlGroup(click.Group):
    """Turns user mistakes and failed file operations into one-line errors with an exit
    code, no traceback (``--debug`` or EDGETL_DEBUG=1 shows it)."""

    def invoke(self, ctx: click.Context) -> Any:
        from edgetl import signals

        previous = signals.install()  # SIGTERM ends a command like Ctrl-C: one line, exit 143
        try:
            return super().invoke(ctx)
        except EdgetlError as e:
            if debugging():
                raise
            click.echo(f"error: {e.message}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo(f"error: interrupted by {signals.name()}; every file is written atomically, so nothing is "
                       f"half-written: run the same command again", err=True)
            ctx.exit(signals.exit_code())
        except OSError as e:
            if debugging():
                raise
            click.echo(f"error: {os_error_message(e)}", err=True)
            ctx.exit(1)
        finally:
            signals.restore(previous)


def echo(msg: str = "") -> None:
    click.echo(msg)


def quiet_tensorflow() -> None:
    """Keep TensorFlow's C++ start-up lines (CUDA probing, oneDNN) off the terminal:
    its log level is raised, and the one import of tensorflow runs with the process's
    stderr pointed at /dev/null (those lines are printed before any log setting applies)."""
    import importlib.abc
    import importlib.util

    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    if "tensorflow" in sys.modules:
        return

    class QuietImport(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
            if name != "tensorflow":
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            if spec is None or spec.loader is None:
                return spec
            run = spec.loader.exec_module

            def exec_module(module: Any) -> None:
                sys.stderr.flush()
                saved = os.dup(2)
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, 2)
                try:
                    run(module)
                finally:
                    os.dup2(saved, 2)
                    os.close(saved)
                    os.close(null)
            spec.loader.exec_module = exec_module  # type: ignore[method-assign]
            return spec

    sys.meta_path.insert(0, QuietImport())


@click.group(cls=EdgetlGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="edgetl")
@click.option("--debug", is_flag=True, help="Show the full traceback of an error (also: EDGETL_DEBUG=1).")
@click.option("--verbose", is_flag=True, help="Show TensorFlow's own log lines.")
def main(debug: bool, verbose: bool) -> None:
    """edgetl: from a folder of photos to a verified image classifier on a device.

    \b
    Typical flow:
      edgetl train photos/ --backbone mobilenetv2 --alpha 0.35 --out models/ants-bees
      edgetl calibrate models/ants-bees                          # -> models/ants-bees/calibration/
      edgetl export models/ants-bees --formats tflite,onnx --quants fp32,int8
      edgetl verify models/ants-bees --max-latency-ms 20         # report.md, MODEL_CARD.md
      edgetl bundle models/ants-bees --out ants-bees-bundle.zip  # to check on the device
    """
    if debug:
        os.environ["EDGETL_DEBUG"] = "1"
    if not verbose:
        quiet_tensorflow()


def old_spelling(old: str, param: str) -> Callable[[F], F]:
    """A hidden option under an option's old spelling (``export --format`` before it became
    ``--formats``, as in ``bundle`` and the pipeline file): still accepted; see :func:`renamed`."""
    return click.option(old, param, default=None, hidden=True)


def renamed(ctx: click.Context, name: str, value: Any, old_value: Any, old: str, new: str) -> Any:
    """The value of option ``name`` (spelled ``new``) when it may also come under its old
    spelling ``old``: one note line on stderr, and a one-line error when both disagree."""
    if old_value is None:
        return value
    click.echo(f"note: {old} is now spelled {new} (as in the other commands and the pipeline file); "
               f"{old} still works", err=True)
    if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE and value != old_value:
        raise EdgetlError(f"{old} {old_value} and {new} {value}: the same option given twice; keep {new}")
    return old_value


def d(cls: type, name: str) -> Any:
    """The option's default, from its dataclass (the only place defaults are stated)."""
    v = default(cls, name)
    return ",".join(v) if isinstance(v, tuple) else v
