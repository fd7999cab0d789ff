"""Interval maths of alignlab.eval.stats, against values computed by hand in each test."""

from __future__ import annotations

import math

import numpy as np
import pytest

from alignlab.eval import stats


def test_wilson_matches_hand_computation():
    # 8 successes of 10, z = 1.959964: centre = (0.8 + z²/20) / (1 + z²/10),
    # half = z / (1 + z²/10) · √(0.8·0.2/10 + z²/400)
    z = 1.959963984540054
    centre = (0.8 + z * z / 20) / (1 + z * z / 10)
    half = z / (1 + z * z / 10) * math.sqrt(0.016 + z * z / 400)
    lo, hi = stats.wilson_interval(8, 10)
    assert lo == pytest.approx(centre - half, abs=1e-12) and hi == pytest.approx(centre + half, abs=1e-12)
    assert (round(lo, 3), round(hi, 3)) == (0.490, 0.943)  # the textbook 8/10 interval


def test_wilson_stays_in_unit_interval_at_the_edges():
    lo, hi = stats.wilson_interval(0, 20)
    assert lo == 0.0 and 0.0 < hi < 0.2
    lo, hi = stats.wilson_interval(20, 20)
    assert hi == 1.0 and 0.8 < lo < 1.0


def test_t_quantile_table_values():
    # Student t table, two-sided 95%.
    for df, t in [(1, 12.7062), (2, 4.3027), (5, 2.5706), (10, 2.2281), (30, 2.0423)]:
        assert stats.t_quantile(0.975, df) == pytest.approx(t, abs=2e-4)
    assert stats.t_quantile(0.025, 10) == pytest.approx(-2.2281, abs=2e-4)


def test_win_rate_counts_ties_half_and_reports_them():
    out = stats.win_rate([1, 1, 1, 0.5, 0.5, 0, 1, 0, 1, 1])
    assert out["win_rate"] == pytest.approx(7 / 10)  # 6 wins + 2 ties × ½
    assert (out["wins"], out["ties"], out["losses"], out["n"]) == (6, 2, 2, 10)
    assert out["tie_rate"] == pytest.approx(0.2)
    assert out["wilson"] == pytest.approx(list(stats.wilson_interval(7, 10)))
    lo, hi = out["bootstrap"]
    assert lo <= 0.7 <= hi


def test_compare_with_tolerance():
    out = stats.compare([1.0, 2.0, 3.0], [1.05, 1.0, 4.0], tie_tol=0.1)
    assert out.tolist() == [0.5, 1.0, 0.0]


def test_bootstrap_is_seeded_and_covers_the_mean():
    rng = np.random.default_rng(1)
    x = rng.normal(3.0, 1.0, size=200)
    a = stats.bootstrap_interval(x, seed=7)
    b = stats.bootstrap_interval(x, seed=7)
    assert a == b
    assert a[0] < x.mean() < a[1]
    # the bootstrap's width is about 2 · 1.96 · s/√n
    assert a[1] - a[0] == pytest.approx(2 * 1.96 * x.std(ddof=1) / math.sqrt(200), rel=0.15)


def test_mean_interval_hand_values():
    x = [1.0, 2.0, 3.0, 4.0]  # mean 2.5, s = √(5/3), se = s/2, t_{.975,3} = 3.1824
    out = stats.mean_interval(x)
    se = math.sqrt(5 / 3) / 2
    assert out["mean"] == 2.5 and out["se"] == pytest.approx(se)
    assert out["t_interval"] == pytest.approx([2.5 - 3.1824 * se, 2.5 + 3.1824 * se], abs=1e-3)
    assert stats.mean_interval([5.0])["t_interval"] == [5.0, 5.0]
    assert stats.mean_interval([])["mean"] is None


def test_paired_difference_detects_a_real_gain_and_not_noise():
    rng = np.random.default_rng(0)
    difficulty = rng.normal(0, 5, size=100)  # large per-prompt spread cancels in the pairing
    base = difficulty + rng.normal(0, 0.3, size=100)
    better = difficulty + 0.5 + rng.normal(0, 0.3, size=100)
    gain = stats.paired_difference(better, base)
    assert gain["significant"] and gain["t_interval"][0] < 0.5 < gain["t_interval"][1]
    same = difficulty + rng.normal(0, 0.3, size=100)
    assert not stats.paired_difference(same, base)["significant"]
    with pytest.raises(ValueError):
        stats.paired_difference([1.0, 2.0], [1.0])


def test_bootstrap_of_a_large_sample_is_chunked_and_deterministic():
    x = np.random.default_rng(2).normal(size=50_000)  # 2000 × 50k indices would be 800 MB at once
    a = stats.bootstrap_interval(x, n_boot=500, seed=1)
    assert a == stats.bootstrap_interval(x, n_boot=500, seed=1)
    assert a[0] < x.mean() < a[1] and a[1] - a[0] < 0.05


@pytest.mark.parametrize("p,n", [(0.3, 50), (0.5, 30), (0.85, 80)])
def test_the_win_rate_interval_covers_the_true_rate_at_its_nominal_level(p, n):
    """2,000 simulated evaluations of a policy whose true win rate is p (ties in between counted ½):
    the 95% Wilson interval of win_rate covers p in 95% ± 2% of them."""
    from alignlab.eval.stats import win_rate

    rng = np.random.default_rng(0)
    covered = 0
    trials = 2000
    for _ in range(trials):
        outcomes = (rng.random(n) < p).astype(float)
        lo, hi = win_rate(outcomes)["wilson"]
        covered += lo <= p <= hi
    assert 0.93 <= covered / trials <= 0.975, covered / trials
