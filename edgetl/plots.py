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

    from edgetl.evaluate import top_confusions

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


def scatter(rows, x, y, label, dest, xlabel, ylabel, title) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        if r.get(x) is None or r.get(y) is None:
            continue
        ax.scatter(r[x], r[y], s=30)
        ax.annotate(r[label], (r[x], r[y]), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _save(fig, dest)


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
