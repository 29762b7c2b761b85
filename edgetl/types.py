"""Type names shared by the public API."""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Union

Echo = Callable[[str], None]                  # where progress lines go: print, click.echo, a list's append
PathLike = Union[str, "os.PathLike[str]"]     # a file or folder path
