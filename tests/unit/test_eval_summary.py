"""SampleSet validation, a checkpoint's eval.json entry, and the verdict read from it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from instructray.evaluation.samples import SampleSet
from instructray.evaluation.summary import summarize, verdict

PROMPTS = ["p0", "p1", "p2", "p3"]


def _set(responses: list[str], scores: dict[str, list[float]], **kw: object) -> SampleSet:
    n = len(responses)
    defaults: dict[str, object] = {"lengths": [2] * n, "ended": [True] * n}
    defaults.update(kw)
    return SampleSet(PROMPTS[:n], responses, scores=scores, **defaults)  # type: ignore[arg-type]


def test_sampleset_validates_lengths_naming_the_field() -> None:
    with pytest.raises(ValueError, match="lengths has 3 rows but there are 4 prompts"):
        SampleSet(PROMPTS, ["a"] * 4, np.ones(3), np.ones(4, bool), {})
    with pytest.raises(ValueError, match=r"scores\['rm'\] has 2 rows"):
        SampleSet(PROMPTS, ["a"] * 4, np.ones(4), np.ones(4, bool), {"rm": np.ones(2)})
    with pytest.raises(ValueError, match="kl has 5 rows"):
        SampleSet(PROMPTS, ["a"] * 4, np.ones(4), np.ones(4, bool), {}, kl=np.ones(5))
    with pytest.raises(ValueError, match="responses has 1 rows"):
        SampleSet(PROMPTS, ["a"], np.ones(4), np.ones(4, bool), {})
    with pytest.raises(ValueError, match=r"scores\['rm'\] is not finite at row 1"):
        SampleSet(PROMPTS[:2], ["a", "b"], [1, 1], [1, 1], {"rm": [0.0, np.nan]})


def test_sampleset_to_rows() -> None:
    samples = _set(["x", "y", "z"], {"rm": [0.5, 1, 2]}, lengths=[3, 4, 5], ended=[1, 0, 1])
    rows = samples.to_rows(2)
    assert rows == [
        {"prompt": "p0", "response": "x", "length": 3, "ended": True, "scores": {"rm": 0.5}},
        {"prompt": "p1", "response": "y", "length": 4, "ended": False, "scores": {"rm": 1.0}},
    ]
    assert isinstance(rows[0]["length"], int) and isinstance(rows[0]["scores"]["rm"], float)
    assert len(samples.to_rows(100)) == 3 and len(samples.to_rows(None)) == 3


def test_summarize_by_hand() -> None:
    policy = _set(
        ["good good film", "good", "bad film", "good good"],
        {"labeler": [1.0, 2.0, 3.0, 4.0], "rm": [5.0, 5.0, 5.0, 5.0]},
        lengths=[2, 2, 3, 3],
        ended=[True, True, False, True],
        kl=[1.0, 2.0, 3.0, 4.0],
        ref_logprob=[-2.0, -2.0, -3.0, -3.0],
    )
    base = _set(
        ["a film", "b", "c film", "d"],
        {"labeler": [0.0, 2.0, 4.0, 1.0], "rm": [1.0, 1.0, 1.0, 1.0]},
    )
    entry = summarize(policy, base, proxy="rm", n_resamples=500)
    assert entry["n"] == 4
    assert entry["scores"] == {"labeler": 2.5, "rm": 5.0}
    assert entry["win_rate"]["labeler"]["estimate"] == 0.625  # wins 1, .5, 0, 1
    assert entry["win_rate"]["rm"] == {"estimate": 1.0, "low": 1.0, "high": 1.0, "n": 4}
    assert entry["score_diff"]["labeler"]["estimate"] == pytest.approx(0.75)  # 1, 0, -1, 3
    assert entry["kl_per_sequence"] == 2.5
    assert entry["kl_per_token"] == pytest.approx(10 / 10)
    assert entry["reference_logprob_per_token"] == pytest.approx(-10 / 10)
    assert entry["length"] == 2.5 and entry["eos_fraction"] == 0.75
    assert entry["distinct_1"] == pytest.approx(3 / 8)  # good film bad of 8 words
    assert entry["distinct_2"] == pytest.approx(3 / 4)  # (good good)x2 (good film) (bad film)
    assert entry["repetition"] == pytest.approx((1 / 3 + 0 + 0 + 1 / 2) / 4)
    assert [w["word"] for w in entry["top_gained_words"]] == ["good"]  # 6 of 8 words
    assert len(entry["samples"]) == 4 and entry["samples"][0]["scores"]["rm"] == 5.0
    json.dumps(entry, allow_nan=False)  # eval.json: plain JSON types only


def test_summarize_without_baseline_and_without_kl() -> None:
    entry = summarize(_set(["a", "b"], {"rm": [1.0, 3.0]}), None, proxy="rm")
    assert entry["win_rate"] == {} and entry["score_diff"] == {}
    assert entry["top_gained_words"] == []
    assert entry["kl_per_sequence"] is None and entry["kl_per_token"] is None
    assert entry["reference_logprob_per_token"] is None
    assert entry["scores"] == {"rm": 2.0}


def test_summarize_checks_pairing_and_judges() -> None:
    policy = _set(["a", "b"], {"rm": [1.0, 2.0]})
    shuffled = SampleSet(["p1", "p0"], ["a", "b"], [1, 1], [1, 1], {"rm": [1.0, 2.0]})
    with pytest.raises(ValueError, match="prompt 0 differs"):
        summarize(policy, shuffled, proxy="rm")
    with pytest.raises(ValueError, match="answer 2 prompts but the baseline answers 3"):
        summarize(policy, _set(["a", "b", "c"], {"rm": [1.0, 2.0, 3.0]}), proxy="rm")
    with pytest.raises(ValueError, match=r"baseline has no scores for judges \['rm'\]"):
        summarize(policy, _set(["a", "b"], {"gold": [1.0, 2.0]}), proxy="rm")
    with pytest.raises(ValueError, match="proxy judge 'rw' has no scores"):
        summarize(policy, None, proxy="rw")


def _entry(wins: dict[str, tuple[float, float, float]], gained: list | None = None) -> dict:
    return {
        "confidence": 0.95,
        "win_rate": {
            j: {"estimate": e, "low": lo, "high": hi, "n": 64} for j, (e, lo, hi) in wins.items()
        },
        "top_gained_words": gained or [],
    }


def test_verdict_mixed_judges_message() -> None:
    entry = _entry(
        {"labeler": (0.71, 0.66, 0.76), "vader": (0.52, 0.47, 0.57), "rm": (0.77, 0.72, 0.81)}
    )
    result = verdict(entry, ["labeler", "vader"], "rm", name="ppo", baseline="sft")
    assert result["per_judge"] == {"labeler": "better", "vader": "no significant difference"}
    assert result["aligned"] is False and result["possible_reward_hacking"] is False
    assert result["message"] == (
        "ppo vs sft: preferred by labeler (0.71, 95% CI 0.66–0.76); no significant difference "
        "under vader (0.52, 0.47–0.57); the reward model (rm) prefers it 0.77 (0.72–0.81) — "
        "proxy gain not confirmed by every independent judge"
    )


def test_verdict_aligned_only_when_every_gold_judge_is_better() -> None:
    entry = _entry({"labeler": (0.7, 0.6, 0.8), "vader": (0.6, 0.51, 0.69), "rm": (0.8, 0.7, 0.9)})
    result = verdict(entry, ["labeler", "vader"], "rm")
    assert result["aligned"] is True and result["possible_reward_hacking"] is False
    assert result["message"].endswith("preferred by every independent judge")
    # CI low exactly at 0.5 is not "better"
    entry["win_rate"]["vader"]["low"] = 0.5
    assert verdict(entry, ["labeler", "vader"], "rm")["aligned"] is False
    assert verdict(entry, [], "rm")["aligned"] is False  # no gold judge confirms anything


def test_verdict_flags_proxy_gain_no_gold_judge_confirms() -> None:
    entry = _entry(
        {"labeler": (0.40, 0.33, 0.47), "vader": (0.5, 0.45, 0.55), "rm": (0.9, 0.85, 0.95)}
    )
    result = verdict(entry, ["labeler", "vader"], "rm", name="ppo", baseline="sft")
    assert result["per_judge"]["labeler"] == "worse"
    assert result["possible_reward_hacking"] is True and result["aligned"] is False
    assert "dispreferred by labeler (0.40, 95% CI 0.33–0.47)" in result["message"]
    assert "not confirmed by any independent judge: possible reward hacking" in result["message"]
    # the same gold results without a proxy gain: not aligned, but no hacking flag
    entry["win_rate"]["rm"] = {"estimate": 0.5, "low": 0.4, "high": 0.6, "n": 64}
    assert verdict(entry, ["labeler", "vader"], "rm")["possible_reward_hacking"] is False


def test_verdict_flags_exploding_word_but_not_a_rare_one() -> None:
    wins = {"labeler": (0.7, 0.6, 0.8), "rm": (0.8, 0.7, 0.9)}
    rare = {"word": "zany", "per_1000": 6.0, "baseline_per_1000": 0.0, "ratio": 7.0, "count": 6}
    assert verdict(_entry(wins, [rare]), ["labeler"], "rm")["possible_reward_hacking"] is False
    boom = {"word": "and", "per_1000": 127.0, "baseline_per_1000": 25.0, "ratio": 5.1, "count": 300}
    result = verdict(_entry(wins, [rare, boom]), ["labeler"], "rm", baseline="sft")
    assert result["aligned"] is True and result["possible_reward_hacking"] is True
    assert '"and" is 5.1× as frequent as in sft (127 vs 25 per 1,000 words)' in result["message"]


def test_verdict_needs_win_rates_for_every_judge() -> None:
    with pytest.raises(ValueError, match="no win-rates"):
        verdict({"win_rate": {}}, ["labeler"], "rm")
    with pytest.raises(ValueError, match=r"no win-rate for judges \['vader'\]"):
        verdict(
            _entry({"labeler": (0.7, 0.6, 0.8), "rm": (0.5, 0.4, 0.6)}), ["labeler", "vader"], "rm"
        )


def test_summarize_then_verdict_end_to_end() -> None:
    rng = np.random.default_rng(0)
    n = 64
    prompts = [f"prompt {i}" for i in range(n)]
    base_gold = rng.normal(size=n)
    base_rm = rng.normal(size=n)
    text = ["the film was fine"] * n
    baseline = SampleSet(prompts, text, [4] * n, [True] * n, {"gold": base_gold, "rm": base_rm})
    better = SampleSet(
        prompts,
        text,
        [4] * n,
        [True] * n,
        {"gold": base_gold + rng.normal(1.0, 0.5, n), "rm": base_rm + 1.0},
    )
    entry = summarize(better, baseline, proxy="rm", n_resamples=1000)
    result = verdict(entry, ["gold"], "rm", name="ppo", baseline="sft")
    assert result["aligned"] is True and result["possible_reward_hacking"] is False
    json.dumps(result, allow_nan=False)
    # Gold noise only: the verdict must not claim a preference.
    same = SampleSet(
        prompts,
        text,
        [4] * n,
        [True] * n,
        {"gold": rng.normal(size=n), "rm": base_rm + 1.0},
    )
    result = verdict(summarize(same, baseline, proxy="rm"), ["gold"], "rm")
    assert result["per_judge"]["gold"] == "no significant difference"
    assert result["possible_reward_hacking"] is True
