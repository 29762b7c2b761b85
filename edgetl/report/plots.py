"""PNG plots (matplotlib, no display needed), written atomically."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from edgetl.artifacts import atomic_path  # noqa: E402


def _save(fig, dest) -> Path:
    with atomic_path(dest, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return Path(dest)


def training_curves(history: dict[str, list[dict]], dest) -> Path:
    """history: phase name -> list of per-epoch logs."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    offset = 0
    for phase, rows in history.items():
        if not rows:
            continue
        ep = [offset + r["epoch"] for r in rows]
        for ax, key in zip(axes, ("loss", "accuracy")):
            ax.plot(ep, [r.get(key) for r in rows], "-", label=f"{phase} train")
            if any("val_" + key in r for r in rows):
                ax.plot(ep, [r.get("val_" + key) for r in rows], "--", label=f"{phase} val")
        offset = ep[-1]
        for ax in axes:
            ax.axvline(offset + 0.5, color="0.8", lw=0.8)
    for ax, key in zip(axes, ("loss", "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, dest)


def confusion(cm, classes, dest, title="confusion matrix", top=None) -> Path:
    """Annotated matrix up to ``ANNOTATE_MAX`` classes. Above that, a bounded figure
    whatever the class count: the matrix as an image (tick labels up to ``TICKS_MAX``
    classes), beside a bar chart of the most-confused pairs (``top``: evaluate's
    top_confusions, computed from ``cm`` when not given)."""
    import numpy as np

    from edgetl.escape import plot_text

    cm = np.asarray(cm)
    classes = [plot_text(c) for c in classes]  # a '$' in a class name is text, not mathtext
    if top:
        top = [{**t, "true": plot_text(t["true"]), "predicted": plot_text(t["predicted"])} for t in top]
    n = len(classes)
    if n > ANNOTATE_MAX:
        return _large_confusion(cm, classes, dest, title, top)
    fig, ax = plt.subplots(figsize=(max(3.5, 0.5 * n + 2), max(3, 0.5 * n + 1.5)))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return _save(fig, dest)


ANNOTATE_MAX = 30  # classes: one text label per cell up to here (the figure grows with n)
TICKS_MAX = 60     # classes: class names on the axes up to here
MAX_CELLS = 400    # matrix side drawn at most; larger matrices are max-pooled into blocks


def _short(s: str, n: int = 28) -> str:
    """``s`` in at most ``n`` characters, its middle elided (the ends tell classes apart)."""
    return s if len(s) <= n else s[: (n - 1) // 2] + "…" + s[len(s) - (n - 1) // 2:]


def _large_confusion(cm, classes, dest, title, top) -> Path:
    """The figure size, and so the canvas, is fixed: memory and time do not grow with
    the square of the class count (an annotated 500-class matrix needed a 27,700-px
    canvas and 250,000 text objects)."""
    import numpy as np
    from matplotlib.colors import LogNorm, Normalize

    from edgetl.runtime.evaluate import top_confusions

    n = len(classes)
    top = top_confusions(cm, classes) if top is None else top
    b = -(-n // MAX_CELLS)  # block side: each drawn cell is the max of a b x b block
    m = -(-n // b) * b
    img = np.zeros((m, m), cm.dtype)
    img[:n, :n] = cm
    img = img.reshape(m // b, b, m // b, b).max(axis=(1, 3))
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 6.2), gridspec_kw={"width_ratios": [1.15, 1]})
    vmax = max(2, int(img.max()))
    norm = LogNorm(vmin=1, vmax=vmax) if vmax > 20 else Normalize(vmin=1, vmax=vmax)
    shown = ax.imshow(np.ma.masked_equal(img, 0), cmap="viridis", norm=norm, interpolation="nearest",
                      extent=(-0.5, m - 0.5, m - 0.5, -0.5))  # zero cells masked: white
    bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
    bar.ax.set_title("images", fontsize=7)
    bar.ax.yaxis.set_major_formatter("{x:.0f}")
    if n <= TICKS_MAX:
        ax.set_xticks(range(n), [_short(c, 16) for c in classes], rotation=90, fontsize=5)
        ax.set_yticks(range(n), [_short(c, 16) for c in classes], fontsize=5)
    ax.set_xlabel("predicted" + ("" if n <= TICKS_MAX else " (class index)"))
    ax.set_ylabel("true" + ("" if n <= TICKS_MAX else " (class index)"))
    ax.set_title(f"{title}\n{n} classes" + (f", {b}x{b} blocks shown by their maximum" if b > 1 else ""), fontsize=9)
    if top:
        labels = [f"{_short(t['true'])} → {_short(t['predicted'])}" for t in top]
        bx.barh(range(len(top)), [t["count"] for t in top], color="#C44E52")
        bx.set_yticks(range(len(top)), labels, fontsize=7)
        bx.invert_yaxis()
        bx.set_xlabel("images")
        bx.xaxis.get_major_locator().set_params(integer=True)
    else:
        bx.text(0.5, 0.5, "no confusions", ha="center", va="center", transform=bx.transAxes)
        bx.set_axis_off()
    bx.set_title(f"most-confused pairs (true → predicted), top {len(top)}", fontsize=9)
    fig.tight_layout()
    return _save(fig, dest)


RUNTIME_COLOURS = {"keras": "#555555", "litert": "#4C72B0", "onnxruntime": "#DD8452", "mediapipe": "#55A868"}
_OTHER_COLOURS = ["#8172B3", "#937860", "#DA8BC3", "#8C8C8C", "#CCB974", "#64B5CD"]
# where a point's number goes, in points from the point; tried in order, then further out with a leader line
_OFFSETS = [(5, 5), (5, -12), (-12, 5), (-12, -12), (7, -3), (-15, -3), (-3, 7), (-3, -15)]


def _boxes_overlap(a, b, pad: float = 1.0) -> bool:
    return not (a.x1 + pad <= b.x0 or b.x1 + pad <= a.x0 or a.y1 + pad <= b.y0 or b.y1 + pad <= a.y0)


def place_labels(ax, points, texts, colours, fontsize=8):
    """Put ``texts[i]`` next to ``points[i]`` (data coordinates) so that no two labels overlap each other or
    sit on a marker: candidate offsets around the point, then rings further out joined by a leader line.
    Returns the text artists."""
    fig = ax.figure
    fig.canvas.draw()  # settle the layout and the axis limits first
    renderer = fig.canvas.get_renderer()
    trans = ax.transData
    marks = [trans.transform(p) for p in points]
    r_mark = 4.0 * fig.dpi / 72  # half a marker, in pixels
    placed, artists = [], []
    for (x, y), t, c in zip(points, texts, colours):
        best = None
        for ring in range(1, 7):
            for dx, dy in _OFFSETS:
                a = ax.annotate(t, (x, y), xytext=(dx * ring, dy * ring), textcoords="offset points",
                                fontsize=fontsize, color=c, fontweight="bold",
                                arrowprops={"arrowstyle": "-", "color": c, "lw": 0.6} if ring > 1 else None)
                box = a.get_window_extent(renderer)
                hits_mark = any(box.x0 - r_mark < mx < box.x1 + r_mark and box.y0 - r_mark < my < box.y1 + r_mark
                                for mx, my in marks)
                if not hits_mark and not any(_boxes_overlap(box, b) for b in placed):
                    best = (a, box)
                    break
                a.remove()
            if best:
                break
        if best is None:  # crowded beyond six rings: the last ring's first slot (rare; the legend still names it)
            a = ax.annotate(t, (x, y), xytext=(_OFFSETS[0][0] * 7, _OFFSETS[0][1] * 7), textcoords="offset points",
                            fontsize=fontsize, color=c, fontweight="bold",
                            arrowprops={"arrowstyle": "-", "color": c, "lw": 0.6})
            best = (a, a.get_window_extent(renderer))
        placed.append(best[1])
        artists.append(best[0])
    return artists


def accuracy_latency_figure(rows, title, max_latency_ms=None, accuracy_floor=None, floor_label="accuracy floor"):
    """The figure of :func:`accuracy_latency` (not saved; for tests and notebooks)."""
    import numpy as np
    from matplotlib.lines import Line2D

    rows = [r for r in rows if r.get("p50_ms") is not None and r.get("accuracy") is not None]
    fig, ax = plt.subplots(figsize=(9.5, 5))
    others = iter(_OTHER_COLOURS * 4)
    colour = {rt: RUNTIME_COLOURS.get(rt) or next(others) for rt in dict.fromkeys(r.get("runtime") for r in rows)}
    handles, points, numbers, cols = [], [], [], []
    for i, r in enumerate(rows, 1):
        x, y, c = r["p50_ms"], r["accuracy"], colour[r.get("runtime")]
        p90 = r.get("p90_ms")
        xerr = [[0.0], [max(0.0, p90 - x)]] if p90 is not None else None
        ci = r.get("ci95")
        yerr = [[max(0.0, y - ci[0])], [max(0.0, ci[1] - y)]] if ci else None
        failed = r.get("status") == "fail"  # hollow: fails a gate
        ax.errorbar([x], [y], xerr=xerr, yerr=yerr, fmt="o", ms=6, color=c, ecolor=c, elinewidth=1, capsize=3,
                    alpha=0.9, zorder=3, markerfacecolor="white" if failed else c)
        points.append((x, y))
        numbers.append(str(i))
        cols.append(c)
        size = f", {r['size_bytes'] / 1024:.0f} KiB" if r.get("size_bytes") is not None else ""
        handles.append(Line2D([], [], marker="o", ls="", color=c, markerfacecolor="white" if failed else c,
                              label=f"{i}  {r.get('label', r.get('artifact'))}{size}"
                                    + (" - fails a gate" if failed else "")))
    xs = [p[0] for p in points] + [r["p90_ms"] for r in rows if r.get("p90_ms")]
    if max_latency_ms is not None:
        xs.append(max_latency_ms)
    if xs and min(xs) > 0 and max(xs) / min(xs) > 20:
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    if max_latency_ms is not None:
        ax.axvline(max_latency_ms, color="#C44E52", ls="--", lw=1.2, gid="gate-latency")
        handles.append(Line2D([], [], color="#C44E52", ls="--", label=f"gate: max latency {max_latency_ms:g} ms"))
    if accuracy_floor is not None:
        ax.axhline(accuracy_floor, color="#8172B3", ls=":", lw=1.4, gid="gate-accuracy")
        handles.append(Line2D([], [], color="#8172B3", ls=":", label=floor_label))
    ys = [p[1] for p in points] + [r["ci95"][0] for r in rows if r.get("ci95")]
    if accuracy_floor is not None:
        ys.append(accuracy_floor)
    if ys:
        lo, hi = min(ys), max([p[1] for p in points] + [r["ci95"][1] for r in rows if r.get("ci95")] + [min(ys)])
        pad = max(0.01, 0.06 * (hi - lo))
        ax.set_ylim(max(0.0, lo - pad), min(1.0, hi) + pad)
    handles.append(Line2D([], [], color="0.3", marker="o", ls="-", label="bars: accuracy 95% Wilson interval;\n"
                          "p50 latency, whisker to p90"))
    ax.set_xlabel("p50 latency at batch 1 (ms), whisker to p90" + (" (log scale)" if ax.get_xscale() == "log" else ""))
    ax.set_ylabel("held-out top-1 accuracy (95% interval)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7.5, frameon=False,
              title="artifacts (runtime)", title_fontsize=8)
    fig.tight_layout()
    place_labels(ax, np.asarray(points) if points else [], numbers, cols)
    return fig


def accuracy_latency(rows, dest, title, max_latency_ms=None, accuracy_floor=None,
                     floor_label="accuracy floor") -> Path:
    """Accuracy against latency, one numbered marker per row (named in the legend), accuracy's 95%
    interval as a vertical bar, p50 latency with a whisker to p90, and the gates drawn."""
    return _save(accuracy_latency_figure(rows, title, max_latency_ms, accuracy_floor, floor_label), dest)


def bars(labels, values, dest, ylabel, title) -> Path:
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(labels) + 2), 3.8))
    ax.bar(range(len(values)), values, color="#4C72B0")
    ax.set_xticks(range(len(labels)), labels, rotation=40, ha="right", fontsize=8)
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _save(fig, dest)


def robustness(rob: dict, dest) -> Path:
    """Accuracy against severity, one panel per corruption, one line per artifact (clean at 0)."""
    names = rob["artifacts"]
    corruptions = list(dict.fromkeys(r["corruption"] for r in rob["rows"]))
    fig, axes = plt.subplots(1, len(corruptions), figsize=(3.0 * len(corruptions), 3.2), sharey=True, squeeze=False)
    for ax, c in zip(axes[0], corruptions):
        rows = [r for r in rob["rows"] if r["corruption"] == c]
        xs = [0] + [r["severity"] for r in rows]
        for n in names:
            ax.plot(xs, [rob["clean"][n]] + [r["accuracy"][n] for r in rows], "o-", ms=3, label=n)
        ax.set_title(c.replace("_", " "), fontsize=9)
        ax.set_xticks(xs)
        ax.set_xlabel("severity (0: clean)", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("held-out top-1 accuracy")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"accuracy under corruptions ({rob['n_images']} images)", fontsize=10)
    return _save(fig, dest)
