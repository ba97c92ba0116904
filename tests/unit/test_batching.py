"""Tests for instructray.orchestrator.batching (and the seeded eval split of the job context)."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
import torch

from instructray.data import (
    PreferencePair,
    PromptExample,
    RankedComparison,
    SFTExample,
    TextExample,
)
from instructray.models import train_tokenizer
from instructray.orchestrator import batching
from instructray.orchestrator.batching import (
    comparison_pairs,
    cycle,
    encode_prompt,
    epoch_batches,
    lm_batch,
    num_batches,
    pad_right,
    pair_batch,
    prompt_ids,
    ranking_batch,
    split_for_ranks,
)
from instructray.orchestrator.context import split_eval
from instructray.training.batches import RankingBatch, TextBatch

SUBJECTS = ["the movie", "this film", "the plot", "the cast", "the ending"]
VERBS = ["was", "felt", "seemed", "is", "looked"]
ADJECTIVES = ["great", "dull", "funny", "sad", "long", "bright", "slow", "kind", "odd", "warm"]
SENTENCES = [
    f"{SUBJECTS[i % 5]} {VERBS[(i // 5) % 5]} {ADJECTIVES[i % 10]} and {ADJECTIVES[(i * 3) % 10]}."
    for i in range(50)
]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(SENTENCES, vocab_size=300)


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_tokenizer_special_ids(tok):
    assert tok.pad_token_id == 0
    assert tok.eos_token_id == 2
    assert tok.pad_token_id != tok.eos_token_id


# -- padding and prompts ----------------------------------------------------------------------


def test_pad_right_exact():
    input_ids, mask = pad_right([[5, 6, 7], [8], [9, 10]], pad_id=0)
    assert input_ids.tolist() == [[5, 6, 7], [8, 0, 0], [9, 10, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
    assert input_ids.dtype == torch.long
    assert mask.dtype == torch.long


def test_encode_prompt_truncates_from_the_left(tok):
    prompt = "the movie was great and dull. the cast felt funny and sad."
    full = ids(tok, prompt)
    assert len(full) > 6
    assert encode_prompt(tok, prompt, 6) == full[-6:]
    assert encode_prompt(tok, prompt, 1) == full[-1:]
    # Short prompts are kept whole.
    assert encode_prompt(tok, prompt, len(full) + 10) == full
    assert encode_prompt(tok, prompt, len(full)) == full


def test_encode_prompt_empty_is_an_error(tok):
    with pytest.raises(ValueError, match="encodes to no tokens"):
        encode_prompt(tok, "", 8)


def test_prompt_ids(tok):
    prompts = [PromptExample("the plot was slow."), PromptExample("the cast is warm and odd.")]
    out = prompt_ids(tok, prompts, 4)
    assert out == [ids(tok, p.prompt)[-4:] for p in prompts]
    assert all(len(row) <= 4 for row in out)


# -- LM batches -------------------------------------------------------------------------------


def test_lm_batch_sft_masks_response_and_eos(tok):
    examples = [
        SFTExample("the movie was", " great and funny."),
        SFTExample("the ending looked odd and the cast", " slow."),
        SFTExample("this film", " felt warm and kind and bright."),
    ]
    batch = lm_batch(tok, examples, max_prompt=32, max_len=64)
    assert isinstance(batch, TextBatch)
    eos, pad = tok.eos_token_id, tok.pad_token_id
    rows = []
    for ex in examples:
        p, r = ids(tok, ex.prompt), [*ids(tok, ex.response), eos]
        rows.append((p, r))
    width = max(len(p) + len(r) for p, r in rows)
    assert batch.input_ids.shape == (3, width)
    for i, (p, r) in enumerate(rows):
        n = len(p) + len(r)
        pad_len = width - n
        assert batch.input_ids[i].tolist() == p + r + [pad] * pad_len
        assert batch.attention_mask[i].tolist() == [1] * n + [0] * pad_len
        assert batch.loss_mask[i].tolist() == [0] * len(p) + [1] * len(r) + [0] * pad_len
        # The EOS is the last real token and is a target.
        assert batch.input_ids[i, n - 1].item() == eos
        assert batch.loss_mask[i, n - 1].item() == 1
    # At least one row is padded (right padding, pads at the end).
    assert (batch.attention_mask[:, -1] == 0).any()
    assert (batch.attention_mask[:, 0] == 1).all()


def test_lm_batch_text_trains_on_every_token(tok):
    examples = [TextExample("the plot was slow and sad."), TextExample("the cast is odd.")]
    batch = lm_batch(tok, examples, max_prompt=0, max_len=64)
    eos, pad = tok.eos_token_id, tok.pad_token_id
    rows = [[*ids(tok, ex.text), eos] for ex in examples]
    width = max(map(len, rows))
    for i, row in enumerate(rows):
        pad_len = width - len(row)
        assert batch.input_ids[i].tolist() == row + [pad] * pad_len
        assert batch.loss_mask[i].tolist() == [1] * len(row) + [0] * pad_len
    assert torch.equal(batch.loss_mask, batch.attention_mask)


def test_lm_batch_mixed_records(tok):
    examples = [SFTExample("the movie was", " great."), TextExample("the movie was great.")]
    batch = lm_batch(tok, examples, max_prompt=32, max_len=64)
    n_prompt = len(ids(tok, "the movie was"))
    assert batch.loss_mask[0, :n_prompt].sum().item() == 0
    assert torch.equal(batch.loss_mask[1], batch.attention_mask[1])


def test_lm_batch_truncates_to_max_len(tok):
    prompt = "the movie was"
    response = " great and funny and sad and slow and bright and warm and kind."
    p, r = ids(tok, prompt), ids(tok, response)
    max_len = len(p) + 4
    assert len(r) + 1 > 4
    batch = lm_batch(tok, [SFTExample(prompt, response)], max_prompt=32, max_len=max_len)
    assert batch.input_ids.shape == (1, max_len)
    assert batch.input_ids[0].tolist() == p + r[:4]
    assert batch.loss_mask[0].tolist() == [0] * len(p) + [1] * 4
    # A truncated response does not end in EOS: the model must not learn to stop there.
    assert tok.eos_token_id not in batch.input_ids[0].tolist()

    text = "the cast is odd and warm and the plot was slow and long."
    batch = lm_batch(tok, [TextExample(text)], max_prompt=0, max_len=5)
    assert batch.input_ids[0].tolist() == ids(tok, text)[:5]
    assert batch.loss_mask[0].tolist() == [1] * 5


def test_lm_batch_truncates_prompt_from_left(tok):
    prompt = "the ending looked odd and the cast felt funny and sad"
    p = ids(tok, prompt)
    batch = lm_batch(tok, [SFTExample(prompt, " kind.")], max_prompt=3, max_len=64)
    r = [*ids(tok, " kind."), tok.eos_token_id]
    assert batch.input_ids[0].tolist() == p[-3:] + r
    assert batch.loss_mask[0].tolist() == [0, 0, 0] + [1] * len(r)


def test_lm_batch_keeps_one_target_when_prompt_fills_max_len(tok):
    prompt = "the ending looked odd and the cast felt funny and sad"
    p = ids(tok, prompt)
    batch = lm_batch(tok, [SFTExample(prompt, " kind.")], max_prompt=len(p), max_len=len(p))
    assert batch.loss_mask[0].tolist() == [0] * len(p) + [1]
    assert batch.input_ids[0].tolist() == p + ids(tok, " kind.")[:1]


# -- reward model and DPO batches -------------------------------------------------------------


def test_ranking_batch_flattens_rankings(tok):
    comps = [
        RankedComparison("the movie was", (" great.", " dull and slow.", " odd.")),
        RankedComparison("the cast", (" is warm and kind.", " felt sad.")),
    ]
    batch = ranking_batch(tok, comps, max_prompt=32, max_len=64)
    assert isinstance(batch, RankingBatch)
    assert batch.group_ids.tolist() == [0, 0, 0, 1, 1]
    assert batch.ranks.tolist() == [0, 1, 2, 0, 1]
    expected = [
        ids(tok, c.prompt) + ids(tok, a) + [tok.eos_token_id] for c in comps for a in c.ranked
    ]
    width = max(map(len, expected))
    assert batch.input_ids.shape == (5, width)
    for i, row in enumerate(expected):
        pad_len = width - len(row)
        assert batch.input_ids[i].tolist() == row + [tok.pad_token_id] * pad_len
        assert batch.attention_mask[i].tolist() == [1] * len(row) + [0] * pad_len


def test_pair_batch_keys_and_masks(tok):
    pairs = [
        PreferencePair("the movie was", " great and funny.", " dull."),
        PreferencePair("the plot", " is slow.", " felt long and sad and odd."),
    ]
    batch = pair_batch(tok, pairs, max_prompt=32, max_len=64)
    assert batch.ref_chosen_logps is None and batch.ref_rejected_logps is None
    eos, pad = tok.eos_token_id, tok.pad_token_id
    for side in ("chosen", "rejected"):
        rows = [(ids(tok, t.prompt), [*ids(tok, getattr(t, side)), eos]) for t in pairs]
        width = max(len(p) + len(r) for p, r in rows)
        text = getattr(batch, side)
        assert text.input_ids.shape == (2, width)
        for i, (p, r) in enumerate(rows):
            pad_len = width - len(p) - len(r)
            assert text.input_ids[i].tolist() == p + r + [pad] * pad_len
            assert text.attention_mask[i].tolist() == [1] * (len(p) + len(r)) + [0] * pad_len
            assert text.loss_mask[i].tolist() == ([0] * len(p) + [1] * len(r) + [0] * pad_len)


def test_comparison_pairs_better_first():
    comps = [
        RankedComparison("p1", ("a", "b", "c", "d")),
        RankedComparison("p2", ("x", "y")),
    ]
    pairs = comparison_pairs(comps)
    assert len(pairs) == 4 * 3 // 2 + 1
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [
        ("p1", "a", "b"),
        ("p1", "a", "c"),
        ("p1", "a", "d"),
        ("p1", "b", "c"),
        ("p1", "b", "d"),
        ("p1", "c", "d"),
        ("p2", "x", "y"),
    ]


@pytest.mark.parametrize("k", [2, 3, 5, 9])
def test_comparison_pairs_count(k):
    comp = RankedComparison("p", tuple(f"a{i}" for i in range(k)))
    pairs = comparison_pairs([comp])
    assert len(pairs) == k * (k - 1) // 2
    rank = {a: i for i, a in enumerate(comp.ranked)}
    assert all(rank[p.chosen] < rank[p.rejected] for p in pairs)
    assert len(set(pairs)) == len(pairs)


# -- epochs, ranks and endless streams --------------------------------------------------------


def test_epoch_batches_one_epoch():
    items = list(range(10))
    batches = list(epoch_batches(items, 3, 1.0, seed=0))
    assert len(batches) == 3 == num_batches(10, 3, 1.0)
    assert all(len(b) == 3 for b in batches)
    seen = [x for b in batches for x in b]
    assert len(set(seen)) == 9  # the last partial batch (1 item) is dropped
    assert set(seen) <= set(items)


def test_epoch_batches_deterministic_for_a_seed():
    items = list(range(20))
    a = list(epoch_batches(items, 4, 2.0, seed=3))
    b = list(epoch_batches(items, 4, 2.0, seed=3))
    c = list(epoch_batches(items, 4, 2.0, seed=4))
    assert a == b
    assert a != c
    assert a[0] != items[:4] or a[1] != items[4:8]  # shuffled, not in order


def test_epoch_batches_every_item_once_per_full_epoch():
    items = [f"x{i}" for i in range(12)]
    batches = list(epoch_batches(items, 4, 3.0, seed=1))
    assert len(batches) == 9 == num_batches(12, 4, 3.0)
    passes = [batches[i : i + 3] for i in range(0, 9, 3)]
    for one_pass in passes:
        seen = [x for b in one_pass for x in b]
        assert sorted(seen) == sorted(items)
    # Each pass is reshuffled.
    assert passes[0] != passes[1]


def test_epoch_batches_fractional_epochs():
    items = list(range(12))
    batches = list(epoch_batches(items, 3, 1.5, seed=0))
    assert len(batches) == 6 == num_batches(12, 3, 1.5)
    first = [x for b in batches[:4] for x in b]
    assert sorted(first) == items
    second = [x for b in batches[4:] for x in b]
    assert len(set(second)) == 6

    assert len(list(epoch_batches(items, 3, 0.5, seed=0))) == 2
    # Fewer than one step's worth still gives one step.
    assert len(list(epoch_batches(items, 3, 0.01, seed=0))) == 1
    assert num_batches(12, 3, 0.01) == 1


def test_epoch_batches_fewer_items_than_a_batch():
    with pytest.raises(ValueError, match="3 examples are fewer than one batch of 4"):
        next(epoch_batches([1, 2, 3], 4, 1.0, seed=0))
    assert sorted(next(epoch_batches([1, 2, 3], 3, 1.0, seed=0))) == [1, 2, 3]


def test_split_for_ranks_equal_slices():
    assert split_for_ranks(list(range(10)), 3) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert split_for_ranks(list(range(8)), 2) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert split_for_ranks(list("abc"), 1) == [["a", "b", "c"]]
    assert split_for_ranks((1, 2, 3, 4), 4) == [[1], [2], [3], [4]]


def test_cycle_is_endless_and_covers_every_item_per_pass():
    items = list(range(7))
    stream = list(itertools.islice(cycle(items, seed=5), 7 * 4))
    passes = [stream[i : i + 7] for i in range(0, 28, 7)]
    for one_pass in passes:
        assert sorted(one_pass) == items
    assert len({tuple(p) for p in passes}) > 1
    assert stream == list(itertools.islice(cycle(items, seed=5), 28))
    assert stream != list(itertools.islice(cycle(items, seed=6), 28))


def test_cycle_single_item():
    assert list(itertools.islice(cycle(["only"], seed=0), 5)) == ["only"] * 5


class _CountingRandom:
    """A stand-in for random.Random that gives up after many shuffles instead of spinning."""

    def __init__(self, seed):
        self.calls = 0

    def shuffle(self, order):
        self.calls += 1
        if self.calls > 1000:
            raise RuntimeError("cycle() shuffled 1000 empty passes without yielding")


def test_cycle_of_nothing_is_an_error(monkeypatch):
    monkeypatch.setattr(batching, "random", SimpleNamespace(Random=_CountingRandom))
    with pytest.raises(ValueError):
        next(cycle([], seed=0))


# -- held-out split ---------------------------------------------------------------------------


def test_split_eval_sizes_and_determinism():
    items = list(range(100))
    train, held = split_eval(items, 0.1, seed=0)
    assert len(held) == 10
    assert len(train) == 90
    assert sorted(train + held) == items
    assert split_eval(items, 0.1, seed=0) == (train, held)
    assert split_eval(items, 0.1, seed=1) != (train, held)


def test_split_eval_cap_and_minimum():
    items = list(range(100))
    train, held = split_eval(items, 0.5, seed=0, max_eval=7)
    assert len(held) == 7
    assert len(train) == 93
    # A tiny fraction still holds one item out.
    train, held = split_eval(items, 0.001, seed=0)
    assert len(held) == 1
    assert len(train) == 99
