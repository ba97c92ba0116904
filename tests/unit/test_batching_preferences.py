"""Preference data as the trainers see it: answers as sampled (token ids, EOS only where the
sampler emitted it), held-out splits by prompt, exact batch splits."""

from __future__ import annotations

import pytest

from instructray.data import RankedComparison
from instructray.models import train_tokenizer
from instructray.orchestrator.batching import comparison_pairs, pair_batch, ranking_batch
from instructray.orchestrator.context import split_eval

TEXTS = [f"the movie was {w} and {v}." for w in ("great", "dull", "funny") for v in ("slow", "odd")]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS * 4, vocab_size=300)


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_sampled_answers_keep_their_tokens_and_get_no_extra_eos(tok):
    """A labeled answer cut off at max_new_tokens has no EOS, exactly like the PPO rollout the
    RM will score; one that stopped keeps its EOS. Text answers (files) get EOS appended."""
    eos = tok.eos_token_id
    prompt_ids = tuple(ids(tok, "the movie was"))
    cut_off, stopped = tuple(ids(tok, " great and funny and")), (*ids(tok, " dull."), eos)
    comp = RankedComparison(
        "the movie was", (" great and funny and", " dull."), prompt_ids, (cut_off, stopped)
    )
    batch = ranking_batch(tok, [comp], max_prompt=32, max_len=64)
    rows = [
        r[m.bool()].tolist() for r, m in zip(batch.input_ids, batch.attention_mask, strict=True)
    ]
    assert rows == [list(prompt_ids + cut_off), list(prompt_ids + stopped)]
    text_only = ranking_batch(tok, [RankedComparison(comp.prompt, comp.ranked)], 32, 64)
    assert text_only.input_ids[0, : len(prompt_ids) + len(cut_off) + 1].tolist()[-1] == eos

    pair = next(comp.preference_pairs())
    pairs = pair_batch(tok, [pair], max_prompt=32, max_len=64)
    n = len(prompt_ids) + len(cut_off)
    assert pairs.chosen.input_ids[0, :n].tolist() == list(prompt_ids + cut_off)
    assert pairs.chosen.loss_mask[0].tolist() == [0] * len(prompt_ids) + [1] * len(cut_off)
    assert pairs.rejected.input_ids[0].tolist() == list(prompt_ids + stopped)


def test_split_eval_by_prompt_never_shares_a_prompt():
    """DPO pairs and RM rankings: held-out items must not share a prompt with training ones."""
    comps = [RankedComparison(f"p{i}", tuple(f"a{j}" for j in range(4))) for i in range(30)]
    pairs = comparison_pairs(comps)  # 6 pairs per prompt
    by_pair = split_eval(pairs, 0.1, seed=0)
    assert {p.prompt for p in by_pair[0]} & {p.prompt for p in by_pair[1]}  # the old leak
    train, held = split_eval(pairs, 0.1, seed=0, key=lambda p: p.prompt)
    assert not {p.prompt for p in train} & {p.prompt for p in held}
    assert len(held) == 18 and len(train) == 162  # 3 whole prompts ≈ 10% of 180 pairs
    assert split_eval(pairs, 0.1, seed=0, key=lambda p: p.prompt) == (train, held)
    # Without a key every item is its own group: the split is the one it always was.
    items = list(range(100))
    assert split_eval(items, 0.1, 0, key=lambda x: x) == split_eval(items, 0.1, 0)
