"""Accuracy under common corruptions (`edgetl verify --robustness`).

Every artifact scores the same held-out images, clean and under each corruption of
:mod:`edgetl.data.corruptions` at three severities (applied at the model's input size,
seeded, so every artifact sees identical pixels). Rows: one per (corruption,
severity), plus the clean accuracy and the mean over corruptions; one column per
artifact."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetl.data.corruptions import CORRUPTIONS, SEVERITIES, corrupt_batch


def corrupted_sets(x: np.ndarray, seed: int = 0) -> dict[tuple[str, int], np.ndarray]:
    """{(corruption, severity): images}, computed once for every artifact."""
    return {(name, s): corrupt_batch(x, name, s, seed + 1000 * k + 100_000 * s)
            for k, name in enumerate(CORRUPTIONS) for s in SEVERITIES}


def robustness(entries: list[dict], x: np.ndarray, y: np.ndarray, threads: int, plot_path: Path | None = None,
               seed: int = 0, echo=print) -> dict:
    """Accuracy of each artifact (``entries``: list_artifacts rows) on ``x`` clean and
    corrupted. Returns {"artifacts", "rows", "mean", "clean", "n_images"} and writes a plot."""
    from edgetl.runtime.runners import open_runner

    sets = corrupted_sets(x, seed)
    y = np.asarray(y)
    acc: dict[str, dict[str, float]] = {}
    names = []
    for e in entries:
        try:
            r = open_runner(e["path"], threads=threads)
        except Exception as err:  # a model that does not load is reported by verify's own row
            echo(f"robustness: {e['name']} skipped ({str(err).splitlines()[0][:80]})")
            continue

        def score(imgs, r=r):
            probs = np.concatenate([r.predict(imgs[i:i + 64]) for i in range(0, len(imgs), 64)])
            return float((probs.argmax(1) == y).mean())

        names.append(e["name"])
        a = {"clean": score(x)}
        for (c, s), imgs in sets.items():
            a[f"{c}/{s}"] = score(imgs)
        acc[e["name"]] = a
        echo(f"robustness: {e['name']:<24} clean {a['clean']:.3f}  mean corrupted "
             f"{np.mean([v for k, v in a.items() if k != 'clean']):.3f}")
    rows: list[dict] = [{"corruption": c, "severity": s, "accuracy": {n: acc[n][f"{c}/{s}"] for n in names}}
                        for c in CORRUPTIONS for s in SEVERITIES]
    out = {"artifacts": names, "n_images": int(len(x)), "severities": list(SEVERITIES), "seed": seed,
           "clean": {n: acc[n]["clean"] for n in names}, "rows": rows,
           "mean": {n: float(np.mean([r["accuracy"][n] for r in rows])) for n in names}}
    if plot_path is not None and names:
        from edgetl.report import plots

        plots.robustness(out, plot_path)
    return out


def table(rob: dict, markdown: bool = False) -> str:
    """Rows: clean, each corruption and severity, the mean over corruptions; columns: artifacts."""
    names = rob["artifacts"]
    heads = ["corruption", "severity", *names]
    cells = [["clean", "-", *(f"{rob['clean'][n]:.3f}" for n in names)]]
    cells += [[r["corruption"], str(r["severity"]), *(f"{r['accuracy'][n]:.3f}" for n in names)] for r in rob["rows"]]
    cells.append(["mean corrupted", "1-3", *(f"{rob['mean'][n]:.3f}" for n in names)])
    if markdown:
        return "\n".join(["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
                         + ["| " + " | ".join(c) + " |" for c in cells])
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]
    fmt = lambda cs: "  ".join(v.rjust(w) if i > 1 else v.ljust(w) for i, (v, w) in enumerate(zip(cs, widths)))  # noqa: E731
    return "\n".join([fmt(heads)] + [fmt(c) for c in cells])
