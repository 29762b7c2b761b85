"""The search's answer as a table, a Markdown page and the accuracy-latency plot."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from edgetl.stats import fmt_acc

PLOT_ROWS = 30  # above this many rows, the plot shows the front (and the pick) only


def table(rows: list[dict[str, Any]], markdown: bool = False) -> str:
    head = ["candidate", "format", "quant", "val acc", "latency ms", "size KiB", "memory KiB", "front", "why"]
    lines = []
    for r in sorted(rows, key=lambda r: (not r.get("picked"), -r["val_accuracy"], r["latency_ms"])):
        mem = "-" if r.get("ram_kb") is None else f"{r['ram_kb']:.0f}"
        lines.append([("**" + r["candidate"] + "**") if markdown and r.get("picked") else r["candidate"],
                      r["fmt"], r["quant"], f"{r['val_accuracy']:.4f}", f"{r['latency_ms']:.2f}",
                      f"{r['size_kb']:.0f}", mem, "yes" if r["on_front"] else "", r["why"]])
    if markdown:
        esc = [[c.replace("|", "\\|") for c in line] for line in lines]
        return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                         + ["| " + " | ".join(line) + " |" for line in esc])
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(head)]
    widths[-1] = 0
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head).rstrip()] + [fmt.format(*line).rstrip() for line in lines])


def plot(rows: list[dict[str, Any]], dest: Path, max_latency_ms: float, latency_basis: str) -> Path:
    """verify's accuracy-latency figure, labelled for the search: val accuracy (no interval: the
    choice's own split), hollow markers over budget."""
    import matplotlib.pyplot as plt

    from edgetl.artifacts import atomic_path
    from edgetl.report import plots

    shown = rows if len(rows) <= PLOT_ROWS else [r for r in rows if r["on_front"] or r.get("picked")]
    pts = [{"label": ("PICK " if r.get("picked") else "") + f"{r['candidate']} {r['quant']} {r['fmt']}",
            "p50_ms": r["latency_ms"], "accuracy": r["val_accuracy"], "size_bytes": r["size_kb"] * 1024,
            "runtime": r["fmt"], "status": "fail" if r["over_budget"] else "pass"} for r in shown]
    fig = plots.accuracy_latency_figure(pts, f"edgetl search: val accuracy vs {latency_basis} latency",
                                        max_latency_ms=max_latency_ms)
    ax = fig.axes[0]
    ax.set_ylabel("validation top-1 accuracy (the split the pick is made on)")
    ax.set_xlabel(ax.get_xlabel().replace(", whisker to p90", ""))
    leg = ax.get_legend()
    leg.set_title("candidates (colour: format)")
    for t in leg.get_texts():
        text = t.get_text().replace(" - fails a gate", " - over budget").replace("gate: max latency", "budget:")
        if text.startswith("bars: accuracy"):
            text = "hollow: over budget"
        t.set_text(text)
    with atomic_path(dest, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return Path(dest)


def markdown(rep: dict[str, Any]) -> str:
    b = rep["budget"]
    budget = [f"latency <= {b['max_latency_ms']:g} ms"] + \
        ([f"size <= {b['max_size_kb']:g} KiB"] if b.get("max_size_kb") else []) + \
        ([f"memory <= {b['max_ram_kb']:g} KiB"] if b.get("max_ram_kb") else [])
    out = [f"# edgetl search: {rep['data']}", "",
           f"Budget: {', '.join(budget)} ({rep['latency_basis']}).", ""]
    if rep.get("device_scale"):
        out += [rep["device_scale"]["description"] + ".", ""]
    p = rep.get("pick")
    if p:
        te = p.get("test")
        out += [f"**Pick:** `{p['candidate']}` exported as {p['quant']} {p['fmt']}: val accuracy "
                f"{p['val_accuracy']:.4f}, latency {p['latency_ms']:.2f} ms, {p['size_kb']:.0f} KiB; run directory "
                f"`{p['run_dir']}`.", ""]
        out += [f"Test accuracy of the pick's Keras model (once, after the choice): "
                f"{fmt_acc(te['accuracy'], te['ci95'], te['n'])}." if te else
                "No test split: the pick's only accuracy is on val, which chose it (optimistic).", ""]
    else:
        out += ["**No candidate fits the budget.**", ""]
    out += ["Accuracy is the Keras model's on the validation split, the one the choice is made on; a "
            "quantized variant's own accuracy is checked when the pick is exported (export's --max-drop).", "",
            table(rep["rows"], markdown=True), ""]
    if rep.get("not_trained"):
        out += ["Not trained:", ""] + [f"- `{r['candidate']}`: {r['reason']}" for r in rep["not_trained"]] + [""]
    if rep.get("notes"):
        out += ["Notes:", ""] + [f"- {n}" for n in rep["notes"]] + [""]
    out += [f"![front]({Path(rep['plot']).name})", ""]
    return "\n".join(out)
