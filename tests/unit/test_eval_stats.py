"""Paired win-rates and percentile-bootstrap CIs, checked by hand, by enumeration and vs scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from instructray.evaluation.stats import (
    Interval,
    _bootstrap_means,
    bootstrap_mean_ci,
    paired_mean_diff,
    win_outcomes,
    win_rate,
)


def test_win_outcomes_by_hand() -> None:
    out = win_outcomes([3.0, 1.0, 2.0, 5.0], [1.0, 2.0, 2.0, 4.0])
    np.testing.assert_array_equal(out, [1.0, 0.0, 0.5, 1.0])


def test_win_rate_estimate_by_hand_and_ties_are_half() -> None:
    assert win_rate([3.0, 1.0, 2.0, 5.0], [1.0, 2.0, 2.0, 4.0]).estimate == 0.625
    same = np.array([0.3, -1.0, 2.0])
    interval = win_rate(same, same)
    assert (interval.estimate, interval.low, interval.high, interval.n) == (0.5, 0.5, 0.5, 3)


def test_paired_mean_diff_by_hand() -> None:
    interval = paired_mean_diff([2.0, 4.0, 9.0], [1.0, 1.0, 1.0])  # diffs 1, 3, 8
    assert interval.estimate == pytest.approx(4.0)
    assert 1.0 <= interval.low <= interval.estimate <= interval.high <= 8.0
    assert interval.n == 3


def test_bootstrap_distribution_of_two_values_matches_enumeration() -> None:
    # Resampling [0, 1] twice with replacement: means 0, 0.5, 0.5, 1 -> {0: 1/4, .5: 1/2, 1: 1/4}.
    means = _bootstrap_means(np.array([0.0, 1.0]), 40_000, seed=3)
    values, counts = np.unique(means, return_counts=True)
    np.testing.assert_array_equal(values, [0.0, 0.5, 1.0])
    np.testing.assert_allclose(counts / means.size, [0.25, 0.5, 0.25], atol=0.01)
    # 25 % of the mass sits at each end, so the 2.5 % and 97.5 % quantiles are 0 and 1.
    interval = bootstrap_mean_ci([0.0, 1.0])
    assert (interval.estimate, interval.low, interval.high) == (0.5, 0.0, 1.0)


def test_constant_and_single_values_give_zero_width_intervals() -> None:
    assert bootstrap_mean_ci([2.5]) == Interval(2.5, 2.5, 2.5, 1)
    assert bootstrap_mean_ci([1.0] * 10) == Interval(1.0, 1.0, 1.0, 10)


@pytest.mark.parametrize("confidence", [0.9, 0.95])
def test_matches_scipy_percentile_bootstrap(confidence: float) -> None:
    rng = np.random.default_rng(7)
    data = rng.gamma(2.0, 1.5, size=200)  # skewed, so a normal interval would differ
    ours = bootstrap_mean_ci(data, confidence=confidence, n_resamples=50_000, seed=1)
    ref = scipy_stats.bootstrap(
        (data,),
        np.mean,
        confidence_level=confidence,
        n_resamples=50_000,
        method="percentile",
        random_state=np.random.default_rng(2),
    ).confidence_interval
    # Monte Carlo error of each end is about 0.012 se at 50,000 resamples; 0.08 se is ~5 sigma.
    se = data.std(ddof=1) / np.sqrt(data.size)
    assert ours.low == pytest.approx(ref.low, abs=0.08 * se)
    assert ours.high == pytest.approx(ref.high, abs=0.08 * se)
    assert ours.estimate == pytest.approx(data.mean())
    # A wrong confidence level would move the ends by far more than the tolerance above.
    wider = bootstrap_mean_ci(data, confidence=0.99, n_resamples=50_000, seed=1)
    assert wider.low < ours.low - 0.2 * se and wider.high > ours.high + 0.2 * se


def test_win_rate_ci_covers_and_separates() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=500)
    better = base + rng.normal(0.5, 1.0, size=500)  # wins ~ 69 % of prompts
    interval = win_rate(better, base)
    assert interval.low > 0.5
    assert interval.low < interval.estimate < interval.high
    assert interval.high - interval.low < 0.12


def test_seed_determinism() -> None:
    rng = np.random.default_rng(5)
    data = rng.normal(size=50)
    assert bootstrap_mean_ci(data, seed=11) == bootstrap_mean_ci(data, seed=11)
    assert bootstrap_mean_ci(data, seed=11) != bootstrap_mean_ci(data, seed=12)


def test_chunked_resampling_matches_its_interval_size(monkeypatch: pytest.MonkeyPatch) -> None:
    import instructray.evaluation.stats as stats_module

    data = np.arange(30, dtype=float)
    whole = bootstrap_mean_ci(data, n_resamples=500, seed=4)
    monkeypatch.setattr(stats_module, "_MAX_CHUNK_ELEMENTS", 30 * 7)  # 7 resamples per chunk
    chunked = bootstrap_mean_ci(data, n_resamples=500, seed=4)
    assert chunked.estimate == whole.estimate
    assert abs(chunked.low - whole.low) < 1.5 and abs(chunked.high - whole.high) < 1.5


def test_errors() -> None:
    with pytest.raises(ValueError, match="at least one"):
        bootstrap_mean_ci([])
    with pytest.raises(ValueError, match="not finite at row 1"):
        bootstrap_mean_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_mean_ci([1.0], confidence=1.5)
    with pytest.raises(ValueError, match="3 scores vs 2 baseline"):
        win_rate([1.0, 2.0, 3.0], [1.0, 2.0])


def test_interval_to_dict() -> None:
    assert Interval(0.6, 0.5, 0.7, 10).to_dict() == {
        "estimate": 0.6,
        "low": 0.5,
        "high": 0.7,
        "n": 10,
    }
