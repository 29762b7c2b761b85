"""The ``edgetl`` command line: a thin layer over the Python API, one module per command group.

Exit codes: 0 success; 1 a failed operation or gate; 2 bad input (data,
options, files); 130 interrupted (Ctrl-C; a checkpoint is kept).

``group.py`` holds the group (global options, errors to one line and an exit code); each other module
adds its commands to it: ``train`` (train, distill, adapt), ``weights`` (weights, backbones), ``export``
(calibrate, export, qat), ``verify`` (verify, card, bundle, serve, predict), ``search``, ``pipeline``
(init, run, demo)."""
from edgetl.cli import export, pipeline, search, train, verify, weights  # noqa: F401  (each adds its commands)
from edgetl.cli.group import main

__all__ = ["main"]
