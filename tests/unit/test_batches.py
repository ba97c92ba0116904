"""The typed batches that cross the Ray boundary: slicing, splitting and moving every field
alike, nested ones (a DPO pair's sides) and absent ones (None) included."""

from __future__ import annotations

import pytest
import torch

from instructray.training.batches import (
    CriticBatch,
    PairBatch,
    PolicyBatch,
    RankingBatch,
    TextBatch,
)


def _text(rows: int, offset: int = 0) -> TextBatch:
    ids = torch.arange(offset, offset + 2 * rows).reshape(rows, 2)
    return TextBatch(input_ids=ids, attention_mask=torch.ones(rows, 2), loss_mask=ids % 2)


def test_split_gives_exactly_the_parts_asked_for():
    batch = _text(5)
    parts = batch.split(2)
    assert [len(p) for p in parts] == [3, 2]  # as torch.tensor_split: the first part is larger
    assert torch.equal(torch.cat([p.input_ids for p in parts]), batch.input_ids)
    assert torch.equal(parts[1].loss_mask, batch.loss_mask[3:])
    # The ptx bug: 3 texts over 4 micro-batches gave 3 chunks and one PPO micro-batch was
    # silently dropped by zip(); now it is an error the config prevents.
    assert [len(p) for p in batch.split(5)] == [1] * 5
    with pytest.raises(ValueError, match="cannot split a batch of 5 rows into 6"):
        batch.split(6)
    assert [len(p) for p in _text(7).split(3)] == [3, 2, 2]


def test_chunks_are_micro_batches_with_a_short_last_one():
    chunks = list(_text(5).chunks(2))
    assert [c.input_ids[:, 0].tolist() for c in chunks] == [[0, 2], [4, 6], [8]]


def test_nested_and_absent_fields_are_sliced_alike():
    pair = PairBatch(chosen=_text(4), rejected=_text(4, offset=100))
    first, second = pair.split(2)
    assert first.chosen.input_ids.tolist() == [[0, 1], [2, 3]]
    assert second.chosen.input_ids.tolist() == [[4, 5], [6, 7]]
    assert second.rejected.input_ids.tolist() == [[104, 105], [106, 107]]
    assert second.ref_chosen_logps is None
    scored = pair.with_reference(torch.tensor([0.0, -1.0, -2.0, -3.0]), -torch.arange(4.0))
    assert scored.rows(torch.tensor([3, 0])).ref_chosen_logps.tolist() == [-3.0, 0.0]
    assert pair.ref_chosen_logps is None  # frozen: with_reference made a new batch


def test_policy_and_critic_batches_keep_their_fields():
    n, r = 4, 3
    policy = PolicyBatch(
        sequences=torch.zeros(n, 5, dtype=torch.long),
        attention_mask=torch.ones(n, 5),
        action_mask=torch.ones(n, r, dtype=torch.bool),
        logprobs=torch.arange(n * r, dtype=torch.float).reshape(n, r),
        advantages=torch.ones(n, r),
    )
    assert policy.num_actions == r and policy.is_weights is None
    assert policy.rows(slice(2, 4)).logprobs[0].tolist() == [6.0, 7.0, 8.0]
    critic = CriticBatch(
        sequences=policy.sequences,
        attention_mask=policy.attention_mask,
        action_mask=policy.action_mask,
        values=policy.logprobs,
        returns=policy.advantages,
    )
    moved = critic.to(torch.device("cpu"))
    assert isinstance(moved, CriticBatch) and torch.equal(moved.values, critic.values)


def test_whole_groups_never_split_a_ranking():
    batch = RankingBatch(
        input_ids=torch.arange(7)[:, None],
        attention_mask=torch.ones(7, 1),
        group_ids=torch.tensor([0, 0, 0, 1, 1, 2, 2]),
        ranks=torch.tensor([0, 1, 2, 0, 1, 0, 1]),
    )
    chunks = list(batch.whole_groups(2))
    assert [c.group_ids.tolist() for c in chunks] == [[0, 0, 0, 1, 1], [2, 2]]
    assert chunks[1].ranks.tolist() == [0, 1] and chunks[1].input_ids[:, 0].tolist() == [5, 6]
