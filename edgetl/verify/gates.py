"""Pass/fail gates of a verify row: `edgetl verify` applies them to the rows it measures,
:mod:`edgetl.verify.device_results` to the rows a device measured (its own module so that neither
imports the other)."""
from __future__ import annotations

from dataclasses import dataclass

from edgetl.config import VerifyOptions


@dataclass
class Gates:
    """Pass/fail rules of an artifact row (values and defaults: :class:`VerifyOptions`)."""

    max_drop: float                 # points of top-1 below Keras
    min_agreement: float            # top-1 agreement with Keras
    max_latency_ms: float | None    # p50 at batch 1
    latency_runtimes: tuple[str, ...] | None = None  # the latency gate's runtimes (None: every runtime)

    @classmethod
    def of(cls, o: VerifyOptions) -> Gates:
        return cls(o.max_drop, o.min_agreement, o.max_latency_ms,
                   tuple(o.latency_runtimes) if o.latency_runtimes else None)

    def check(self, row: dict) -> list[str]:
        """The failed gates of a row. The accuracy gate is noise-aware (see :mod:`edgetl.stats`):
        it fails only when the paired drop is above --max-drop with 95% confidence."""
        from edgetl.stats import PairedDrop, drop_gate

        fails = []
        if row.get("paired") is not None:
            v = drop_gate(PairedDrop(**{**row["paired"], "ci95_points": tuple(row["paired"]["ci95_points"])}),
                          self.max_drop)
            row["drop_resolvable"] = v.resolvable
            if v.fails:
                fails.append(v.reason)
            elif not v.resolvable:
                row["note"] = v.reason
        if row.get("agreement") is not None and row["agreement"] + 1e-9 < self.min_agreement:
            fails.append(f"min-agreement ({row['agreement']:.3f} < {self.min_agreement:g})")
        timed = self.latency_runtimes is None or row.get("runtime") in self.latency_runtimes
        if self.max_latency_ms is not None and timed and row.get("p50_ms") is not None and row["p50_ms"] > self.max_latency_ms:
            fails.append(f"max-latency-ms ({row['p50_ms']:.2f} > {self.max_latency_ms:g} ms)")
        return fails
