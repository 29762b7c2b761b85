"""Successive halving on validation accuracy, cheap proxies first.

Rung 0 trains every architecture that fits the budget with its head only (one frozen pass,
the head on cached features: the cheap proxy). The best 1/eta by validation accuracy go on to
rung 1, where each phase-2 depth is trained. Rung 1 stops early when the frontier stops
moving (``patience`` candidates in a row without a better model within the budget), and no
new candidate starts once the time budget is spent. Test images are never looked at here."""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from edgetl.search.space import Arch, Candidate
from edgetl.types import Echo

PATIENCE = 2

Train = Callable[[Candidate], dict[str, Any]]  # -> {"val_accuracy": float, ...}


def successive_halving(archs: list[Arch], depths: tuple[int, ...], eta: int, train: Train, deadline: float | None,
                       echo: Echo, patience: int = PATIENCE) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """archs: the ones within budget, fastest first. Returns ({candidate key: record}, log of
    candidates not trained and why)."""
    done: dict[str, dict[str, Any]] = {}
    log: list[dict[str, Any]] = []

    def out_of_time() -> bool:
        return deadline is not None and time.monotonic() > deadline

    echo(f"rung 0: {len(archs)} head-only candidate(s) (frozen features + head)")
    for i, a in enumerate(archs, 1):
        c = Candidate(a, 0)
        if out_of_time():
            log.append({"candidate": c.key, "arch": a.key, "rung": 0, "reason": "not trained: --budget-minutes spent"})
            continue
        echo(f"[{i}/{len(archs)}] {c.key}")
        done[c.key] = {**train(c), "rung": 0, "candidate": c}
    rung0 = sorted((r for r in done.values()), key=lambda r: -r["val_accuracy"])
    keep_n = max(1, math.ceil(len(rung0) / eta))
    kept = rung0[:keep_n]
    deeper = [d for d in depths if d > 0]
    for rank, r in enumerate(rung0[keep_n:], keep_n + 1):
        for d in deeper:
            a = r["candidate"].arch
            log.append({"candidate": Candidate(a, d).key, "arch": a.key, "rung": 1,
                        "reason": f"halving: its head-only val accuracy {r['val_accuracy']:.4f} ranked {rank} of "
                                  f"{len(rung0)}; only the best {keep_n} (1/{eta}) got phase 2"})
    if not deeper:
        return done, log
    todo = [Candidate(r["candidate"].arch, d) for r in kept for d in deeper]
    echo(f"rung 1: phase 2 for the best {keep_n}: {len(todo)} candidate(s)")
    best = max((r["val_accuracy"] for r in kept), default=0.0)
    stale = 0
    for i, c in enumerate(todo, 1):
        if out_of_time():
            log.append({"candidate": c.key, "arch": c.arch.key, "rung": 1, "reason": "not trained: --budget-minutes spent"})
            continue
        if stale >= patience:
            log.append({"candidate": c.key, "arch": c.arch.key, "rung": 1,
                        "reason": f"not trained: the frontier stopped moving ({patience} phase-2 candidates in a row "
                                  f"did not beat val accuracy {best:.4f})"})
            continue
        echo(f"[{i}/{len(todo)}] {c.key}")
        rec = {**train(c), "rung": 1, "candidate": c}
        done[c.key] = rec
        if rec["val_accuracy"] > best:
            best, stale = rec["val_accuracy"], 0
        else:
            stale += 1
    return done, log
