"""Native libraries (LiteRT/TFLite, MediaPipe) write informational lines such as "INFO: Created
TensorFlow Lite XNNPACK delegate for CPU." straight to file descriptor 2, where no Python logging
setting reaches. :func:`quiet` points fd 2 at a temporary file around such a call and then writes
back every line that is not informational (warnings and errors still show, in order).

It applies when TensorFlow's C++ logging is asked to be quiet (``TF_CPP_MIN_LOG_LEVEL`` 1 or more:
the CLI sets 3 unless ``--verbose``); otherwise the lines pass through untouched."""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator

# informational lines: TFLite's "INFO: ...", glog/absl "I1204 12:00:00.000 ..." lines
INFO = re.compile(rb"^(INFO: |I\d{4} [\d:.]+ )")


def wanted() -> bool:
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0")) >= 1
    except ValueError:
        return False


def keep(output: bytes) -> bytes:
    """The lines of ``output`` that are not informational."""
    return b"".join(line for line in output.splitlines(keepends=True) if not INFO.match(line))


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Informational lines that native code writes to fd 2 inside the block are dropped; every
    other line is written to fd 2 when the block ends (also when it raises)."""
    if not wanted():
        yield
        return
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            rest = keep(tmp.read())
            if rest:
                os.write(2, rest)
