"""Word statistics, computed by hand on tiny texts."""

from __future__ import annotations

import pytest

from instructray.evaluation.text_stats import (
    distinct_n,
    per_thousand,
    repetition,
    top_gained_words,
    words,
)


def test_words_lowercases_and_keeps_apostrophes_and_digits() -> None:
    assert words("Don't STOP, it's 2 good!") == ["don't", "stop", "it's", "2", "good"]
    assert words("  -- ...") == []


def test_distinct_n_by_hand() -> None:
    texts = ["a b a", "b a"]
    # unigrams: a b a b a -> 2 unique of 5
    assert distinct_n(texts, 1) == pytest.approx(2 / 5)
    # bigrams per text: (a b) (b a) | (b a) -> 2 unique of 3; no (a b) across the boundary
    assert distinct_n(texts, 2) == pytest.approx(2 / 3)
    assert distinct_n(["a b", "c"], 2) == 1.0  # only (a b): "b c" would span two texts
    assert distinct_n(["a", ""], 2) == 0.0
    assert distinct_n([], 1) == 0.0
    with pytest.raises(ValueError):
        distinct_n(["a"], 0)


def test_repetition_by_hand() -> None:
    # "a b a a": 2 unique of 4 -> 0.5; "x y": 0; "" is skipped -> mean 0.25
    assert repetition(["a b a a", "x y", ""]) == pytest.approx(0.25)
    assert repetition(["", "!!"]) == 0.0


def test_per_thousand_by_hand() -> None:
    freq = per_thousand(["a a b", "a"])  # 4 words: a 3, b 1
    assert freq == {"a": 750.0, "b": 250.0}
    assert per_thousand([""]) == {}


def test_top_gained_words_by_hand() -> None:
    texts = ["good good good good good great", "good good good good fine"]  # 11 words
    baseline = ["good fine fine fine", "great fine bad bad bad"]  # 9 words
    rows = top_gained_words(texts, baseline, k=10, min_count=5)
    assert [r["word"] for r in rows] == ["good"]  # great/fine have count < 5 (and fell)
    good = rows[0]
    assert good["count"] == 9 and good["baseline_count"] == 1
    assert good["per_1000"] == pytest.approx(1000 * 9 / 11)
    assert good["baseline_per_1000"] == pytest.approx(1000 * 1 / 9)
    # add-one smoothing on both counts: ((9+1) / (11/1000)) / ((1+1) / (9/1000))
    assert good["ratio"] == pytest.approx((10 / 11) / (2 / 9))
    assert set(good) == {
        "word",
        "per_1000",
        "baseline_per_1000",
        "ratio",
        "count",
        "baseline_count",
    }


def test_top_gained_words_order_filter_and_k() -> None:
    texts = ["x x x x x x y y y y y z z z z z"]  # x 6, y 5, z 5 of 16
    baseline = ["z z z z z z z z y q"]  # z 8, y 1, q 1 of 10
    rows = top_gained_words(texts, baseline, k=10, min_count=5)
    # increases per 1,000: x 375 - 0, y 312.5 - 100; z fell (312.5 < 800) -> dropped
    assert [r["word"] for r in rows] == ["x", "y"]
    assert rows[0]["ratio"] == pytest.approx((7 / 16) / (1 / 10))
    assert [r["word"] for r in top_gained_words(texts, baseline, k=1, min_count=5)] == ["x"]
    assert top_gained_words(texts, baseline, min_count=7) == []
    assert top_gained_words([""], baseline) == []


def test_top_gained_words_empty_baseline_counts_as_one_word() -> None:
    rows = top_gained_words(["w w w w w"], [""], min_count=5)
    assert rows[0]["baseline_per_1000"] == 0.0
    assert rows[0]["ratio"] == pytest.approx((6 / (5 / 1000)) / (1 / (1 / 1000)))
