"""Comparing two variants over seeds without counting an image twice: per-seed exact McNemar,
the t interval of the mean paired difference over seeds, and the two-stage paired bootstrap,
against values computed by hand."""
import math

import numpy as np
import pytest

from edgetl.stats import compare_over_seeds, paired_bootstrap, t_interval, t_quantile


@pytest.mark.parametrize("df,q", [(1, 12.706205), (2, 4.302653), (3, 3.182446), (4, 2.776445), (30, 2.042272)])
def test_t_quantile_table_values(df, q):
    assert t_quantile(0.95, df) == pytest.approx(q, abs=1e-5)


def test_t_interval_by_hand():
    # 1, 2, 3, 4: mean 2.5, sd sqrt(5/3), half width t(0.975, 3) * sd / 2
    ti = t_interval([1, 2, 3, 4])
    assert ti.n == 4 and ti.mean == 2.5 and ti.sd == pytest.approx(math.sqrt(5 / 3))
    assert (ti.lo, ti.hi) == pytest.approx((2.5 - 2.054260, 2.5 + 2.054260), abs=1e-5)
    one = t_interval([7.0])
    assert one.mean == 7.0 and math.isnan(one.lo) and math.isnan(one.hi)  # one seed: no interval


def _seed(only_a: int, only_b: int, both: int, neither: int):
    """(labels, pred_a, pred_b) with the given agreement counts (all labels 1; a wrong pred is 0)."""
    a = [1] * only_a + [0] * only_b + [1] * both + [0] * neither
    b = [0] * only_a + [1] * only_b + [1] * both + [0] * neither
    return np.ones(len(a), int), np.array(a), np.array(b)


def test_compare_over_seeds_by_hand():
    seeds = [_seed(1, 3, 5, 1), _seed(0, 1, 6, 3), _seed(0, 3, 5, 2)]  # 10 images each
    cmp = compare_over_seeds(*zip(*seeds), seeds=[11, 12, 13])
    rows = cmp.per_seed
    assert [r["seed"] for r in rows] == [11, 12, 13] and [r["n"] for r in rows] == [10, 10, 10]
    assert [r["diff_points"] for r in rows] == [20.0, 10.0, 30.0]
    assert [(r["only_a_right"], r["only_b_right"]) for r in rows] == [(1, 3), (0, 1), (0, 3)]
    # exact McNemar per seed: 1 vs 3 -> 2 * (1 + 4) / 16; 0 vs 1 -> 1; 0 vs 3 -> 2 / 8
    assert [r["mcnemar_p"] for r in rows] == pytest.approx([0.625, 1.0, 0.25])
    assert rows[0]["acc_a"] == 0.6 and rows[0]["acc_b"] == 0.8
    # across seeds: mean 20, sd 10, t(0.975, 2) = 4.302653 -> half width 24.8414
    assert cmp.mean_diff_points == 20.0 and cmp.sd_points == 10.0 and cmp.n_seeds == 3
    assert cmp.t_ci95_points == pytest.approx((-4.841, 44.841), abs=1e-3)
    assert cmp.bootstrap_ci95_points is None and "McNemar" in cmp.method


def test_pooling_would_claim_what_the_seeds_do_not():
    """The same 40 images, the same 6-vs-0 split on each of 3 seeds: pooled, McNemar would
    count 18 vs 0 (p = 8e-6); per seed it is 6 vs 0 (p = 1/32) and the seeds only replicate."""
    y, a, b = _seed(0, 6, 30, 4)
    cmp = compare_over_seeds([y] * 3, [a] * 3, [b] * 3)
    assert [r["mcnemar_p"] for r in cmp.per_seed] == pytest.approx([1 / 32] * 3)
    assert cmp.mean_diff_points == 15.0 and cmp.sd_points == 0.0


def test_paired_bootstrap_by_hand():
    # one seed, two images, d = [0, +1]: resampled means 0, 0.5, 1 with p 1/4, 1/2, 1/4 -> (0, 100)
    assert paired_bootstrap([[True, False]], [[True, True]], shared_images=False, n_boot=4000) == (0.0, 100.0)
    # every image better on every seed: no resample can say otherwise
    ones, zeros = np.ones(5, bool), np.zeros(5, bool)
    for shared in (True, False):
        assert paired_bootstrap([zeros] * 3, [ones] * 3, shared, n_boot=200) == (100.0, 100.0)
    # seeds disagree (seed 1 +100 points, seed 2 0): the seed draw alone spans 0 .. 100
    assert paired_bootstrap([zeros, ones], [ones, ones], shared_images=False, n_boot=4000) == (0.0, 100.0)
    with pytest.raises(ValueError):
        paired_bootstrap([ones], [ones[:3]], shared_images=False)


def test_compare_with_bootstrap_names_its_method():
    rng = np.random.default_rng(0)
    y = [rng.integers(0, 2, 200) for _ in range(3)]
    a = [np.where(rng.random(200) < 0.7, yy, 1 - yy) for yy in y]
    b = [np.where(rng.random(200) < 0.85, yy, 1 - yy) for yy in y]
    cmp = compare_over_seeds(y, a, b, bootstrap=True, n_boot=2000)
    lo, hi = cmp.bootstrap_ci95_points
    assert lo < cmp.mean_diff_points < hi and lo > 0  # about +15 points on 3 x 200 images
    assert "bootstrap: seeds, then images (per seed)" in cmp.method
