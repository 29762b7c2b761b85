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


# --- comparing two variants over seeds -------------------------------------------------------
#
# A p-value never counts one image twice: within a seed, the two variants are compared on that
# seed's distinct test images (exact McNemar); across seeds, the unit is the seed (a t interval
# of the mean paired difference, seeds as independent replicates), or a two-stage paired
# bootstrap that resamples seeds and then images (the same resampled images for both variants).


def t_quantile(conf: float, df: int) -> float:
    """Two-sided Student t quantile: P(|T_df| <= q) = conf."""
    from scipy.stats import t as student_t  # scikit-learn's dependency; imported only when used

    return float(student_t.ppf(0.5 + conf / 2, df))


@dataclass
class MeanInterval:
    """Mean of n values with its two-sided t interval (seeds as independent replicates)."""

    n: int
    mean: float
    sd: float               # sample standard deviation (n - 1)
    lo: float
    hi: float
    conf: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def t_interval(values, conf: float = 0.95) -> MeanInterval:
    """The mean and its t interval over n >= 2 values (nan bounds for fewer)."""
    v = np.asarray(values, dtype=float)
    n = int(v.size)
    if n == 0:
        nan = float("nan")
        return MeanInterval(0, nan, nan, nan, nan, conf)
    m = float(v.mean())
    if n < 2:
        return MeanInterval(1, m, float("nan"), float("nan"), float("nan"), conf)
    sd = float(v.std(ddof=1))
    half = t_quantile(conf, n - 1) * sd / math.sqrt(n)
    return MeanInterval(n, m, sd, m - half, m + half, conf)


def paired_bootstrap(correct_a, correct_b, shared_images: bool, n_boot: int = 10000, seed: int = 0,
                     conf: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean accuracy difference (b - a, in points) over seeds, by a
    two-stage paired bootstrap: draw the seeds with replacement, then the test images with
    replacement, the same images for both variants. ``correct_a[s]``/``correct_b[s]`` are the
    per-image correctness (bool) of seed s. ``shared_images``: every seed scored the same images
    (then one image draw is shared by all seeds, which keeps their correlation); else each seed
    draws from its own test images."""
    a = [np.asarray(x, dtype=float) for x in correct_a]
    b = [np.asarray(x, dtype=float) for x in correct_b]
    if len(a) != len(b) or not a or any(len(x) != len(y) for x, y in zip(a, b)):
        raise ValueError("paired_bootstrap: one pair of equally long correctness arrays per seed")
    rng = np.random.default_rng(seed)
    s = len(a)
    d = [y - x for x, y in zip(a, b)]  # per-image paired differences, -1 / 0 / +1
    out = np.empty(n_boot)
    if shared_images:
        dm = np.stack(d)                     # seeds x images
        n = dm.shape[1]
        for i in range(n_boot):
            seeds = rng.integers(0, s, s)
            imgs = rng.integers(0, n, n)
            out[i] = dm[np.ix_(seeds, imgs)].mean()
    else:
        for i in range(n_boot):
            seeds = rng.integers(0, s, s)
            out[i] = np.mean([d[k][rng.integers(0, len(d[k]), len(d[k]))].mean() for k in seeds])
    lo, hi = np.quantile(out, [(1 - conf) / 2, (1 + conf) / 2])
    return (round(100 * float(lo), 3), round(100 * float(hi), 3))


@dataclass
class SeedComparison:
    """Variant b against variant a over seeds: per seed the paired counts on that seed's
    distinct test images and the exact McNemar p; across seeds the mean paired difference
    (b - a, points) with its t interval over seeds, and optionally the bootstrap interval."""

    per_seed: list[dict[str, Any]]
    mean_diff_points: float
    t_ci95_points: tuple[float, float]
    sd_points: float
    n_seeds: int
    bootstrap_ci95_points: tuple[float, float] | None = None
    method: str = ("per seed: exact McNemar on that seed's distinct test images; across seeds: "
                   "t interval of the mean paired difference, seeds as replicates")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_over_seeds(labels, pred_a, pred_b, seeds=None, bootstrap: bool = False,
                       shared_images: bool = False, n_boot: int = 10000) -> SeedComparison:
    """``labels[s]``, ``pred_a[s]``, ``pred_b[s]``: seed s's test labels and the two variants'
    predictions on them. Each seed's images must be distinct (one prediction per image)."""
    seeds = list(seeds) if seeds is not None else list(range(1, len(labels) + 1))
    rows, ca, cb = [], [], []
    for s, y, pa, pb in zip(seeds, labels, pred_a, pred_b):
        y, pa, pb = np.asarray(y), np.asarray(pa), np.asarray(pb)
        a_ok, b_ok = pa == y, pb == y
        only_a, only_b = int((a_ok & ~b_ok).sum()), int((~a_ok & b_ok).sum())
        n = int(len(y))
        rows.append({"seed": s, "n": n, "acc_a": float(a_ok.mean()), "acc_b": float(b_ok.mean()),
                     "diff_points": round(100 * (only_b - only_a) / n, 3), "only_a_right": only_a,
                     "only_b_right": only_b, "mcnemar_p": mcnemar_exact(only_a, only_b)})
        ca.append(a_ok)
        cb.append(b_ok)
    ti = t_interval([r["diff_points"] for r in rows])
    boot = paired_bootstrap(ca, cb, shared_images, n_boot) if bootstrap and rows else None
    method = SeedComparison.method if boot is None else (
        SeedComparison.method + "; bootstrap: seeds, then images (" + ("one image draw shared by every seed"
                                                                      if shared_images else "per seed") + "), paired")
    return SeedComparison(rows, round(ti.mean, 3), (round(ti.lo, 3), round(ti.hi, 3)), round(ti.sd, 3), ti.n,
                          boot, method)
