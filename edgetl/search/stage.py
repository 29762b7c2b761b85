"""The ``search:`` stage of a pipeline file (``edgetl run``): the search runs into ``out``, and
calibrate, export, verify and the card work on its pick's run directory, with the pick's format
and quantization and the search's budget unless the file names its own."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from edgetl import formats, rundir
from edgetl.config import ExportOptions, SearchOptions, VerifyOptions
from edgetl.errors import EdgetlError
from edgetl.types import Echo


def read_pick(search_dir: Path) -> dict[str, Any] | None:
    """The pick that ``search_dir/search.json`` names, when its run directory is there."""
    f = Path(search_dir) / rundir.SEARCH_JSON
    try:
        pick = json.loads(f.read_text()).get("pick") if f.is_file() else None
    except (OSError, ValueError, AttributeError):
        return None
    run = pick.get("run_dir") if isinstance(pick, dict) else None
    return pick if isinstance(run, str) and rundir.is_run_dir(run) else None


def run_search(o: SearchOptions, source: str, echo: Echo) -> Path:
    """Search (resumable: finished candidates are read back); the pick's run directory."""
    from edgetl.search.driver import search

    pick = search(dataclasses.replace(o), echo=echo).get("pick")
    if pick is None:
        raise EdgetlError(f"{source}: no candidate of the search fits the budget, so there is nothing to export; "
                          f"raise search.max_latency_ms (or search.max_size_kb) or widen the space", exit_code=1)
    echo(f"the pick's run directory, for the stages that follow: {pick['run_dir']}")
    return Path(pick["run_dir"])


def pick_run(search_dir: Path) -> Path:
    """The pick's run directory (``search_dir`` itself before the search ran)."""
    pick = read_pick(search_dir)
    return Path(pick["run_dir"]) if pick else Path(search_dir)


def inputs(o: SearchOptions, section: dict[str, Any]) -> dict[str, Any]:
    """What the search stage depends on: its section and the data (the pipeline hashes it)."""
    from edgetl.data.dataset import scan

    return {"search": section, "data": scan(o.data, o.val_split, o.seed, test_split=o.test_split).fingerprint()}


def stage_options(opts: Any, given: frozenset[str], o: SearchOptions | None, search_dir: Path) -> Any:
    """Export: the pick's format and quantization; verify: the search's budget as the latency gate
    (both this machine's; none with --device) -- unless the file names its own."""
    if o is None:
        return opts
    pick = read_pick(search_dir)
    if isinstance(opts, ExportOptions) and pick:
        opts.formats = opts.formats if "formats" in given else (pick["fmt"],)
        opts.quants = opts.quants if "quants" in given else (pick["quant"],)
    if isinstance(opts, VerifyOptions) and "max_latency_ms" not in given and not o.device:
        opts.max_latency_ms = o.max_latency_ms
        if "latency_runtimes" not in given and pick:  # the budget is the runtime the search timed, not MediaPipe's
            opts.latency_runtimes = (formats.get(pick["fmt"]).runtime,)
    return opts
