"""How sure a score is: intervals for an accuracy, paired tests for a difference between
two models scored on the same images, and the noise-aware accuracy gate.

The gate rule (``--max-drop``): an artifact fails only when its accuracy drop against the
reference exceeds the budget *with confidence*, that is when the one-sided 95% lower bound
of the paired drop is above the budget. The paired drop counts only the images the two
models disagree on: b = reference right and artifact wrong, c = the reverse, n images;
drop = (b - c) / n with standard error sqrt(b + c - (b - c)^2 / n) / n (the paired Wald
interval of a difference of proportions). A set too small to tell the budget from noise is
flagged, with the number of images that would resolve it."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

Z95 = 1.959963984540054      # two-sided 95%
Z95_ONE_SIDED = 1.6448536269514722


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of k successes in n trials (95% by default)."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, centre - half), min(1.0, centre + half))


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for b and c discordant pairs (binomial, p = 1/2)."""
    m = b + c
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, i) for i in range(min(b, c) + 1)) / 2 ** m
    return min(1.0, 2 * tail)


def images_needed(budget_points: float) -> int:
    """Images at which a drop of twice the budget, all on one side, is told from noise:
    the smallest n with 2b > b + z * sqrt(2b / n), i.e. n > 2 z^2 / b (b the budget as a
    fraction)."""
    b = max(budget_points, 1e-9) / 100
    return int(math.ceil(2 * Z95_ONE_SIDED ** 2 / b))


@dataclass
class PairedDrop:
    """The accuracy drop of a candidate against a reference on the same n images."""

    n: int
    b: int                  # reference right, candidate wrong
    c: int                  # reference wrong, candidate right
    drop_points: float      # 100 * (b - c) / n
    ci95_points: tuple[float, float]
    lower_points: float     # one-sided 95% lower bound of the drop
    p_value: float          # exact McNemar, two-sided

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_drop(labels: np.ndarray, reference_pred: np.ndarray, candidate_pred: np.ndarray) -> PairedDrop:
    y = np.asarray(labels)
    r_ok = np.asarray(reference_pred) == y
    c_ok = np.asarray(candidate_pred) == y
    n = int(len(y))
    b = int((r_ok & ~c_ok).sum())
    c = int((~r_ok & c_ok).sum())
    if n == 0:
        nan = float("nan")
        return PairedDrop(0, 0, 0, nan, (nan, nan), nan, 1.0)
    d = (b - c) / n
    se = math.sqrt(max(b + c - (b - c) ** 2 / n, 0.0)) / n
    return PairedDrop(n, b, c, round(100 * d, 3), (round(100 * (d - Z95 * se), 3), round(100 * (d + Z95 * se), 3)),
                      round(100 * (d - Z95_ONE_SIDED * se), 3), mcnemar_exact(b, c))


@dataclass
class DropVerdict:
    fails: bool
    resolvable: bool
    reason: str
    needed_images: int


def drop_gate(pd: PairedDrop, budget_points: float) -> DropVerdict:
    """Fail only when the drop is above the budget with confidence (lower bound > budget)."""
    need = images_needed(budget_points)
    resolvable = pd.n >= need
    if pd.n and pd.lower_points > budget_points + 1e-9:
        return DropVerdict(True, resolvable, f"max-drop ({pd.drop_points:.2f} points, 95% lower bound "
                           f"{pd.lower_points:.2f} > {budget_points:g}; {pd.b} vs {pd.c} images, "
                           f"McNemar p={pd.p_value:.3g})", need)
    note = "" if resolvable else (f"{pd.n} images cannot resolve a {budget_points:g}-point budget "
                                  f"(about {need} are needed)")
    return DropVerdict(False, resolvable, note, need)


def accuracy_interval(correct: int, n: int) -> list[float]:
    lo, hi = wilson(correct, n)
    return [round(lo, 4), round(hi, 4)]


def fmt_acc(acc: float, ci: list[float] | tuple[float, float] | None, n: int | None = None) -> str:
    """'0.9020 [0.845, 0.940] (153 images)'."""
    s = f"{acc:.4f}"
    if ci:
        s += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    if n:
        s += f" ({n} images)"
    return s
