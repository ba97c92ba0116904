"""Paired comparisons with percentile-bootstrap confidence intervals.

Every comparison here is paired: row i of `scores` and `baseline_scores` are two policies'
answers to the same prompt, so prompt difficulty cancels out and the bootstrap resamples
prompts (rows), not the two columns independently. The percentile bootstrap makes no normality
assumption, which matters for win outcomes (values in {0, 0.5, 1}) and heavy-tailed scores.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

# Resample in chunks so n_resamples x N indices never exceed this many int64s (~32 MB).
_MAX_CHUNK_ELEMENTS = 4_000_000


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided confidence interval [low, high] from n rows."""

    estimate: float
    low: float
    high: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _as_finite_1d(name: str, values: np.ndarray | list[float]) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise ValueError(f"{name} is not finite at row {int(bad[0])} ({array[bad[0]]})")
    return array


def _paired(
    scores: np.ndarray | list[float], baseline_scores: np.ndarray | list[float]
) -> tuple[np.ndarray, np.ndarray]:
    a = _as_finite_1d("scores", scores)
    b = _as_finite_1d("baseline_scores", baseline_scores)
    if a.shape != b.shape:
        raise ValueError(
            f"paired comparison needs one baseline score per prompt: {a.size} scores "
            f"vs {b.size} baseline scores"
        )
    return a, b


def _bootstrap_means(values: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """[n_resamples] means of rows drawn with replacement from `values` (same size as it)."""
    n = values.size
    rng = np.random.default_rng(seed)
    chunk = max(1, _MAX_CHUNK_ELEMENTS // n)
    means = np.empty(n_resamples, dtype=np.float64)
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = values[idx].mean(axis=1)
    return means


def win_outcomes(
    scores: np.ndarray | list[float], baseline_scores: np.ndarray | list[float]
) -> np.ndarray:
    """Per-prompt outcome [N]: 1.0 if the score beats the baseline's, 0.5 if equal, 0.0 if lower.

    Ties count half so that a policy compared with itself has a win-rate of exactly 0.5.
    """
    a, b = _paired(scores, baseline_scores)
    return np.where(a > b, 1.0, np.where(a == b, 0.5, 0.0))


def bootstrap_mean_ci(
    values: np.ndarray | list[float],
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> Interval:
    """The mean of `values` with a percentile-bootstrap CI over rows.

    Rows are resampled with replacement `n_resamples` times; low/high are the (1-confidence)/2
    and (1+confidence)/2 quantiles (numpy's linear interpolation) of the resampled means. The
    estimate is the plain mean. One row gives a zero-width interval; no rows is a ValueError,
    since a mean of nothing would read as a measurement.
    """
    array = _as_finite_1d("values", values)
    if array.size == 0:
        raise ValueError("bootstrap_mean_ci needs at least one value, got none")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    means = _bootstrap_means(array, n_resamples, seed)
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2, 1.0 - alpha / 2])
    return Interval(float(array.mean()), float(low), float(high), int(array.size))


def win_rate(
    scores: np.ndarray | list[float],
    baseline_scores: np.ndarray | list[float],
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> Interval:
    """The fraction of prompts on which `scores` beat the baseline (ties half), with its CI."""
    return bootstrap_mean_ci(win_outcomes(scores, baseline_scores), confidence, n_resamples, seed)


def paired_mean_diff(
    scores: np.ndarray | list[float],
    baseline_scores: np.ndarray | list[float],
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> Interval:
    """mean(scores - baseline_scores) over prompts, with a CI from resampling prompts."""
    a, b = _paired(scores, baseline_scores)
    return bootstrap_mean_ci(a - b, confidence, n_resamples, seed)
