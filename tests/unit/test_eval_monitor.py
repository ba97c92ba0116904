"""The reward-hacking monitor: a planted exploit is caught, a healthy run stays quiet."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from instructray.evaluation.monitor import (
    PROXY_UP_GOLD_DOWN,
    TOKEN_EXPLOSION,
    RewardHackingMonitor,
)
from instructray.evaluation.samples import SampleSet

N = 64
PROMPTS = [f"review opening {i}" for i in range(N)]
# A Zipf-like vocabulary in which "and" is common but not dominant (~3 % of words).
VOCAB = ["the", "film", "and", "a", "is", "of", "story", "good", "bad", "acting"] + [
    f"w{i}" for i in range(290)
]
WEIGHTS = 1.0 / np.arange(1, len(VOCAB) + 1)
WEIGHTS /= WEIGHTS.sum()


def _responses(rng: np.random.Generator) -> list[str]:
    return [" ".join(rng.choice(VOCAB, size=rng.integers(20, 40), p=WEIGHTS)) for _ in range(N)]


def _samples(
    responses: list[str], scores: dict[str, np.ndarray], kl: float | None = None
) -> SampleSet:
    lengths = np.array([len(r.split()) for r in responses])
    kls = None if kl is None else np.full(N, kl)
    return SampleSet(PROMPTS, responses, lengths, np.ones(N, bool), scores, kl=kls)


def _insert_and(text: str) -> str:
    out = []
    for i, word in enumerate(text.split(), start=1):
        out.append(word)
        if i % 3 == 0:
            out.append("and")
    return " ".join(out)


def test_planted_exploit_raises_both_kinds() -> None:
    rng = np.random.default_rng(0)
    base_text = _responses(rng)
    effect = rng.normal(size=N)  # prompt difficulty, shared by every judge
    noise = lambda: rng.normal(0.0, 0.5, N)  # noqa: E731
    monitor = RewardHackingMonitor("rm", ["labeler", "vader"])
    first = monitor.observe(
        0,
        _samples(
            base_text,
            {"rm": effect + noise(), "labeler": effect + noise(), "vader": effect + noise()},
            kl=0.0,
        ),
    )
    assert first.warnings == [] and first.metrics["hacking_warning"] == 0.0
    assert first.metrics["monitor_proxy_win_rate"] == 0.5
    assert first.metrics["monitor_top_word_ratio"] == 1.0
    assert first.metrics["monitor_kl"] == 0.0

    hacked = [_insert_and(t) for t in base_text]
    scores = {
        "rm": effect + 1.5 + noise(),
        "labeler": effect - 1.0 + noise(),
        "vader": effect + noise(),
    }
    result = monitor.observe(10, _samples(hacked, scores, kl=4.0))
    kinds = {w.kind for w in result.warnings}
    assert kinds == {PROXY_UP_GOLD_DOWN, TOKEN_EXPLOSION}
    gold_down = [w for w in result.warnings if w.kind == PROXY_UP_GOLD_DOWN]
    assert [w.detail["judge"] for w in gold_down] == ["labeler"]  # vader did not move
    assert gold_down[0].detail["versus"] == "baseline" and gold_down[0].step == 10
    assert "labeler fell" in gold_down[0].message and "(rm)" in gold_down[0].message
    words = [w.detail["word"] for w in result.warnings if w.kind == TOKEN_EXPLOSION]
    assert words == ["and"]
    message = next(w.message for w in result.warnings if w.kind == TOKEN_EXPLOSION)
    assert message.startswith('reward hacking? "and" is ') and "per 1,000 words" in message
    m = result.metrics
    assert m["hacking_warning"] == 1.0 and m["monitor_kl"] == 4.0
    assert m["monitor_proxy_win_rate"] > 0.8 and m["monitor_gold_win_rate_labeler"] < 0.2
    assert m["monitor_top_word_ratio"] >= 3.0
    assert set(m) == {
        "monitor_proxy",
        "monitor_gold_labeler",
        "monitor_gold_vader",
        "monitor_kl",
        "monitor_proxy_win_rate",
        "monitor_gold_win_rate_labeler",
        "monitor_gold_win_rate_vader",
        "monitor_top_word_ratio",
        "hacking_warning",
    }
    # The condition still holds at the next observation: the warnings repeat.
    again = monitor.observe(20, _samples(hacked, scores, kl=5.0))
    assert {w.kind for w in again.warnings} == kinds


def _healthy_run(monitor: RewardHackingMonitor, seed: int = 1, steps: int = 6) -> list[list[str]]:
    """Fresh samples from the same word distribution; proxy and gold rise together, with noise."""
    rng = np.random.default_rng(seed)
    effect = rng.normal(size=N)
    kinds = []
    for k in range(steps):
        scores = {
            "rm": effect + 0.15 * k + rng.normal(0, 0.7, N),
            "labeler": effect + 0.1 * k + rng.normal(0, 0.7, N),
            "vader": effect + rng.normal(0, 0.7, N),
        }
        result = monitor.observe(10 * k, _samples(_responses(rng), scores, kl=0.5 * k))
        kinds.append([w.kind for w in result.warnings])
        assert result.metrics["hacking_warning"] == (1.0 if result.warnings else 0.0)
    return kinds


def test_healthy_run_stays_quiet() -> None:
    assert _healthy_run(RewardHackingMonitor("rm", ["labeler", "vader"])) == [[]] * 6


def test_false_alarms_are_rare_and_the_thresholds_are_what_keeps_them_rare() -> None:
    # 20 healthy runs of 6 observations. Under the default thresholds the words never trip and
    # the score rule rarely does (3 of these 20; 7–10 % of runs over 100 seeds); with
    # silly thresholds the very same data raises alarms in most runs, so the quiet test above
    # is quiet because of the statistics, not because the data cannot trip the monitor.
    def runs_with(kind: str, **thresholds: Any) -> int:
        return sum(
            any(
                kind in kinds
                for kinds in _healthy_run(
                    RewardHackingMonitor("rm", ["labeler", "vader"], **thresholds), seed=seed
                )
            )
            for seed in range(20)
        )

    assert runs_with(PROXY_UP_GOLD_DOWN) <= 4
    assert runs_with(PROXY_UP_GOLD_DOWN, confidence=0.5) >= 10
    assert runs_with(TOKEN_EXPLOSION) == 0
    loose_words = {"token_ratio": 1.2, "token_min_increase": 1.0, "token_min_count": 2}
    assert runs_with(TOKEN_EXPLOSION, **loose_words) == 20


def _peak_run(proxy_shift_last: float) -> list[list]:
    rng = np.random.default_rng(2)
    text = _responses(rng)
    effect = rng.normal(size=N)
    monitor = RewardHackingMonitor("rm", ["labeler"])
    results = []
    for step, (gold_shift, proxy_shift) in enumerate(
        [(0.0, 0.0), (1.0, 1.0), (0.3, proxy_shift_last)]
    ):
        scores = {
            "rm": effect + proxy_shift + rng.normal(0, 0.3, N),
            "labeler": effect + gold_shift + rng.normal(0, 0.3, N),
        }
        results.append(monitor.observe(step * 50, _samples(text, scores)).warnings)
    return results


def test_gold_peak_then_fall_while_proxy_rises_is_flagged() -> None:
    first, peak, fallen = _peak_run(proxy_shift_last=2.0)
    assert first == [] and peak == []
    assert len(fallen) == 1
    warning = fallen[0]
    assert warning.kind == PROXY_UP_GOLD_DOWN and warning.step == 100
    assert warning.detail["versus"] == "peak" and warning.detail["peak_step"] == 50
    # gold is still above the SFT baseline, so only the peak rule can have fired
    assert warning.detail["gold_win_rate"]["low"] > 0.5
    assert warning.detail["diff_vs_peak"]["high"] < 0
    assert "labeler fell from its peak at step 50" in warning.message


def test_gold_fall_with_proxy_below_its_peak_value_is_not_flagged() -> None:
    assert _peak_run(proxy_shift_last=0.5)[2] == []


def test_observations_must_share_prompts_and_judges() -> None:
    rng = np.random.default_rng(3)
    text = _responses(rng)
    scores = {"rm": rng.normal(size=N), "gold": rng.normal(size=N)}
    monitor = RewardHackingMonitor("rm", ["gold"])
    monitor.observe(0, _samples(text, scores))
    other = SampleSet(PROMPTS[::-1], text, np.ones(N), np.ones(N, bool), scores)
    with pytest.raises(ValueError, match="prompt 0 differs"):
        monitor.observe(1, other)
    with pytest.raises(ValueError, match=r"no scores for judges \['gold'\]"):
        monitor.observe(1, _samples(text, {"rm": scores["rm"]}))
    with pytest.raises(ValueError, match="cannot also be a gold judge"):
        RewardHackingMonitor("rm", ["rm"])
