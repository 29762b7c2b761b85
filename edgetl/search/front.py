"""The Pareto front (validation accuracy up, latency and size down), the pick, and why each
other row lost. A row is a trained candidate exported one way (format, quantization): its
accuracy is the candidate's on validation, its latency, size and memory its variant's."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Budget:
    max_latency_ms: float
    max_size_kb: float | None = None
    max_ram_kb: float | None = None

    def violations(self, latency_ms: float, size_kb: float, ram_kb: float | None) -> list[str]:
        out = []
        if latency_ms > self.max_latency_ms:
            out.append(f"latency {latency_ms:.2f} ms > {self.max_latency_ms:g} ms")
        if self.max_size_kb is not None and size_kb > self.max_size_kb:
            out.append(f"size {size_kb:.0f} KiB > {self.max_size_kb:g} KiB")
        if self.max_ram_kb is not None:
            if ram_kb is None:
                out.append("memory not measured")
            elif ram_kb > self.max_ram_kb:
                out.append(f"memory {ram_kb:.0f} KiB > {self.max_ram_kb:g} KiB")
        return out


def dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """a is at least as good as b on accuracy, latency and size, and better on one."""
    ge = (a["val_accuracy"] >= b["val_accuracy"] and a["latency_ms"] <= b["latency_ms"]
          and a["size_kb"] <= b["size_kb"])
    gt = (a["val_accuracy"] > b["val_accuracy"] or a["latency_ms"] < b["latency_ms"] or a["size_kb"] < b["size_kb"])
    return ge and gt


def front(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if not any(dominates(o, r) for o in rows if o is not r)]


def pick(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The most accurate row on validation within the budget (ties: faster, then smaller, then the key).
    Only rows marked eligible (within budget, a depth of the space) can be picked."""
    ok = [r for r in rows if r["eligible"]]
    if not ok:
        return None
    return min(ok, key=lambda r: (-r["val_accuracy"], r["latency_ms"], r["size_kb"], r["key"]))


def _vs(a: dict[str, Any], b: dict[str, Any]) -> str:
    """How b beats a."""
    parts = [f"more accurate on val ({b['val_accuracy']:.4f} vs {a['val_accuracy']:.4f})"
             if b["val_accuracy"] > a["val_accuracy"] else f"as accurate on val ({a['val_accuracy']:.4f})"]
    if b["latency_ms"] < a["latency_ms"]:
        parts.append(f"faster ({b['latency_ms']:.2f} vs {a['latency_ms']:.2f} ms)")
    if b["size_kb"] < a["size_kb"]:
        parts.append(f"smaller ({b['size_kb']:.0f} vs {a['size_kb']:.0f} KiB)")
    return ", ".join(parts)


def explain(rows: list[dict[str, Any]], chosen: dict[str, Any] | None) -> None:
    """Sets row['why'] (and row['on_front']) on every row: the pick, over budget, dominated by
    which row, or on the front but less accurate than the pick."""
    on = {id(r) for r in front(rows)}
    for r in rows:
        r["on_front"] = id(r) in on
        if chosen is not None and r is chosen:
            r["why"] = "the pick: most accurate on val within the budget"
        elif r.get("refused"):
            r["why"] = "refused: " + r["refused"]
        elif r["over_budget"]:
            r["why"] = "over budget: " + "; ".join(r["over_budget"])
        elif not r["eligible"]:
            r["why"] = "a proxy only (its depth is not in --depths)"
        elif not r["on_front"]:
            by = [o for o in rows if o is not r and dominates(o, r)]
            best = min(by, key=lambda o: (-o["val_accuracy"], o["latency_ms"], o["size_kb"]))
            r["why"] = f"dominated by {best['key']} ({_vs(r, best)})"
        elif chosen is not None and r["val_accuracy"] < chosen["val_accuracy"]:
            r["why"] = f"on the front, less accurate on val than the pick ({r['val_accuracy']:.4f} vs " \
                       f"{chosen['val_accuracy']:.4f})"
        elif chosen is not None:
            r["why"] = f"on the front, ties the pick on val ({r['val_accuracy']:.4f}); a tie goes to the faster, " \
                       f"then the smaller"
        else:
            r["why"] = "on the front"
