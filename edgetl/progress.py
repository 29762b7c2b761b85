"""Progress lines for long work: done/total, items per second and an ETA, at most every few
seconds (and always at the end)."""
from __future__ import annotations

import time
from collections.abc import Callable


def fmt_duration(s: float) -> str:
    s = max(0, int(round(s)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def fmt_bytes(n: float) -> str:
    for unit, k in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n >= k:
            return f"{n / k:,.1f} {unit}"
    return f"{int(n)} B"


class Throughput:
    """``update(done)`` prints ``what: done/total (p%), R unit/s, ETA m:ss[, extra]`` when
    ``every`` seconds passed since the last line, or when ``done`` reaches ``total``. The
    rate counts only the work done since the meter started (``start`` is work found done,
    e.g. shards reused from an earlier run)."""

    def __init__(self, what: str, total: int, echo: Callable[[str], None], unit: str = "img", every: float = 10.0,
                 start: int = 0):
        self.what, self.total, self.echo, self.unit, self.every = what, total, echo, unit, every
        self.start = start
        self.t0 = self.last = time.perf_counter()
        self.done = start

    @property
    def rate(self) -> float:
        dt = time.perf_counter() - self.t0
        return (self.done - self.start) / dt if dt > 0 else 0.0

    def line(self, extra: str = "") -> str:
        r = self.rate
        left = self.total - self.done
        eta = f"ETA {fmt_duration(left / r)}" if r > 0 and left > 0 else (
            f"in {fmt_duration(time.perf_counter() - self.t0)}" if left <= 0 else "ETA ?")
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return (f"{self.what}: {self.done:,}/{self.total:,} ({pct:.0f}%)  {r:,.0f} {self.unit}/s  {eta}"
                + (f"  {extra}" if extra else ""))

    def update(self, done: int, extra: str | Callable[[], str] = "", force: bool = False) -> None:
        self.done = done
        now = time.perf_counter()
        if force or done >= self.total or now - self.last >= self.every:
            self.last = now
            self.echo(self.line(extra() if callable(extra) else extra))
