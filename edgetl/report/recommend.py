"""Which artifact to recommend, and when one is "fastest": only when its latency lead is
larger than the timing noise.

The noise rule: artifact A is faster than B when p50(B) - p50(A) exceeds the larger of the
two artifacts' p90 - p50 (the spread of their own timed runs above the median). Two
artifacts whose medians differ by less are *tied within timing noise*; among the artifacts
tied with the fastest one, the smallest file is recommended, because at indistinguishable
speed it costs the app less download and storage.

Why p90 - p50 and not a bootstrap over the runs: the percentiles are what every timing
source records (the isolated timing here and a device's results.json alike), so one rule
serves both; and it is conservative on a loaded machine, where p90/p50 of 6 says that a
0.002 ms difference of the medians means nothing.
"""
from __future__ import annotations

RULE = ("an artifact is called faster only when its p50 latency is lower by more than the larger p90 - p50 "
        "of the two (their timing noise); otherwise they are tied within timing noise and the smallest of the "
        "tied artifacts is recommended")


def noise_ms(row: dict) -> float:
    """The timing noise of a row: how far its p90 sits above its p50 (ms)."""
    return max(0.0, float(row["p90_ms"]) - float(row["p50_ms"]))


def clearly_faster(a: dict, b: dict) -> bool:
    """True when ``a`` is faster than ``b`` by more than the timing noise of either."""
    return float(b["p50_ms"]) - float(a["p50_ms"]) > max(noise_ms(a), noise_ms(b))


def _name(r: dict) -> str:
    return r["artifact"] + (f" ({r['runtime']})" if r.get("extra_runtime") else "")


def choose(rows: list[dict]) -> dict:
    """The pick among ``rows`` (each with artifact, p50_ms, p90_ms, size_bytes): the fastest when it
    is clearly faster than every other row, else the smallest of the rows tied with the fastest."""
    fastest = min(rows, key=lambda r: r["p50_ms"])
    tied = sorted((r for r in rows if r is fastest or not clearly_faster(fastest, r)), key=lambda r: r["p50_ms"])
    if len(tied) == 1:
        others = [r for r in rows if r is not fastest]
        runner_up = min(others, key=lambda r: r["p50_ms"]) if others else None
        if runner_up is None:
            why = f"{_name(fastest)} is the only model that passes every gate (p50 {fastest['p50_ms']:.2f} ms)"
        else:
            why = (f"{_name(fastest)} is the fastest model that passes every gate: p50 {fastest['p50_ms']:.2f} ms, "
                   f"{runner_up['p50_ms'] - fastest['p50_ms']:.2f} ms ahead of {_name(runner_up)}, more than "
                   f"the timing noise ({max(noise_ms(fastest), noise_ms(runner_up)):.2f} ms, the larger p90 - p50)")
        return {"row": fastest, "clearly_fastest": True, "tied": [], "why": why}
    pick = min(tied, key=lambda r: (r["size_bytes"], r["p50_ms"]))
    spread = max(noise_ms(r) for r in tied)
    names = ", ".join(f"{_name(r)} ({r['p50_ms']:.2f} ms)" for r in tied)
    why = (f"no model is fastest beyond the timing noise: {names} are tied within timing noise (their p50 "
           f"differ by less than their p90 - p50, up to {spread:.2f} ms); recommended: {_name(pick)}, the smallest "
           f"of them ({pick['size_bytes'] / 1024:.0f} KiB), since at indistinguishable speed the smaller file costs "
           f"the app less download and storage")
    return {"row": pick, "clearly_fastest": False, "tied": [_name(r) for r in tied], "why": why}


def recommend(rows: list[dict]) -> dict:
    """The recommendation of a verify report from its rows: passing local rows with a latency.

    Keys: ``recommended`` (artifact file name, or absent when nothing passes), ``fastest`` (the same
    name, kept for readers of older reports), ``clearly_fastest`` (bool), ``tied`` (names tied with the
    fastest), ``why`` (a sentence), ``smallest``, ``fastest_per_runtime`` (runtime -> the pick among
    that runtime's rows, by the same rule), ``per_runtime`` (runtime -> {artifact, clearly_fastest,
    tied}) and ``noise_rule``."""
    ok = [r for r in rows if r.get("status") == "pass" and r.get("p50_ms") is not None and not r.get("device")]
    rec: dict = {"fastest_per_runtime": {}, "per_runtime": {}, "noise_rule": RULE}
    for rt in sorted({r["runtime"] for r in ok}):
        c = choose([r for r in ok if r["runtime"] == rt])
        rec["fastest_per_runtime"][rt] = c["row"]["artifact"]
        rec["per_runtime"][rt] = {"artifact": c["row"]["artifact"], "clearly_fastest": c["clearly_fastest"],
                                  "tied": c["tied"]}
    if ok:
        c = choose(ok)
        smallest = min(ok, key=lambda r: r["size_bytes"])
        rec.update(recommended=c["row"]["artifact"], fastest=c["row"]["artifact"], runtime=c["row"]["runtime"],
                   clearly_fastest=c["clearly_fastest"], tied=c["tied"], smallest=smallest["artifact"],
                   why=f"{c['why']}; accuracy {c['row']['accuracy']:.4f}")
    return rec


def per_runtime_text(rec: dict) -> str:
    """``litert: model_int8.tflite, onnxruntime: model_fp32.onnx (tie within timing noise, smallest)``."""
    parts = []
    for rt, v in rec["fastest_per_runtime"].items():
        d = rec.get("per_runtime", {}).get(rt, {})
        parts.append(f"{rt}: {v}" + ("" if d.get("clearly_fastest", True) or not d.get("tied")
                                     else " (tie within timing noise; the smallest)"))
    return ", ".join(parts)
