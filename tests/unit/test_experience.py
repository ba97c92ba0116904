"""Tests for instructray.orchestrator.experience.Experience: slicing, mini-batches, shards."""

from __future__ import annotations

from dataclasses import fields

import pytest
import torch

from instructray.orchestrator.experience import Experience
from instructray.training.batches import CriticBatch, PolicyBatch

B, P, R = 8, 3, 4


def make_experience(with_values: bool = True) -> Experience:
    """Row b carries the number b (scaled per field) so a slice shows which rows it took."""
    rows = torch.arange(B, dtype=torch.float32)
    per_token = rows[:, None] * 10 + torch.arange(R, dtype=torch.float32)
    action_mask = torch.ones(B, R, dtype=torch.bool)
    action_mask[1, 2:] = False
    return Experience(
        sequences=(rows[:, None] * 100 + torch.arange(P + R)).long(),
        attention_mask=torch.ones(B, P + R, dtype=torch.long),
        action_mask=action_mask,
        group_ids=torch.arange(B) // 2,
        logprobs=-per_token,
        ref_logprobs=-per_token - 0.5,
        scores=rows * 2,
        values=per_token + 0.25 if with_values else None,
        kl=per_token * 0.01,
        rewards=per_token + 1,
        advantages=per_token + 2,
        returns=per_token + 3,
    )


def _row_ids(exp: Experience) -> list[int]:
    return (exp.sequences[:, 0] // 100).tolist()


def test_len_and_num_actions():
    exp = make_experience()
    assert len(exp) == B
    assert exp.num_actions == R


def test_select_slices_every_field():
    exp = make_experience()
    index = torch.tensor([5, 0, 3])
    sub = exp.rows(index)
    assert len(sub) == 3
    for f in fields(Experience):
        full, part = getattr(exp, f.name), getattr(sub, f.name)
        if full is None:  # optional fields (engine log-probs, IS weights) stay None
            assert part is None, f.name
            continue
        assert part.shape[0] == 3, f.name
        assert torch.equal(part, full[index]), f.name
    assert _row_ids(sub) == [5, 0, 3]
    assert sub.group_ids.tolist() == [2, 0, 1]
    assert sub.scores.tolist() == [10.0, 0.0, 6.0]
    assert sub.action_mask.dtype == torch.bool
    # The original is untouched.
    assert len(exp) == B


def test_select_keeps_values_none():
    exp = make_experience(with_values=False)
    sub = exp.rows(torch.tensor([1, 2]))
    assert sub.values is None
    assert _row_ids(sub) == [1, 2]
    assert sub.action_mask[0].tolist() == [True, True, False, False]


def test_select_with_boolean_mask():
    exp = make_experience()
    keep = torch.tensor([True, False] * (B // 2))
    assert _row_ids(exp.rows(keep)) == [0, 2, 4, 6]


def test_minibatches_partition_each_pass():
    exp = make_experience()
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        mbs = list(exp.minibatches(2, gen))
        assert len(mbs) == B // 2
        assert all(len(mb) == 2 for mb in mbs)
        seen = [i for mb in mbs for i in _row_ids(mb)]
        assert sorted(seen) == list(range(B))
        # Fields stay aligned within each mini-batch.
        for mb in mbs:
            assert (mb.scores / 2).long().tolist() == _row_ids(mb)
            assert (mb.returns[:, 0] - 3).div(10).long().tolist() == _row_ids(mb)


def test_minibatches_deterministic_for_a_seed():
    exp = make_experience()

    def order(seed: int) -> list[int]:
        gen = torch.Generator().manual_seed(seed)
        return [i for mb in exp.minibatches(4, gen) for i in _row_ids(mb)]

    assert order(7) == order(7)
    assert order(7) != order(8)
    expected = torch.randperm(B, generator=torch.Generator().manual_seed(7)).tolist()
    assert order(7) == expected


def test_minibatches_drop_a_partial_last_batch():
    exp = make_experience()
    mbs = list(exp.minibatches(3, torch.Generator().manual_seed(0)))
    assert [len(mb) for mb in mbs] == [3, 3]
    assert len({i for mb in mbs for i in _row_ids(mb)}) == 6
    (whole,) = exp.minibatches(B, torch.Generator().manual_seed(0))
    assert sorted(_row_ids(whole)) == list(range(B))


def test_shard_equal_contiguous_slices():
    exp = make_experience()
    shards = exp.shard(2)
    assert [_row_ids(s) for s in shards] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    shards = exp.shard(4)
    assert [_row_ids(s) for s in shards] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert [s.group_ids.tolist() for s in shards] == [[0, 0], [1, 1], [2, 2], [3, 3]]
    assert [_row_ids(s) for s in exp.shard(1)] == [list(range(B))]
    assert [_row_ids(s) for s in exp.shard(3)] == [[0, 1], [2, 3], [4, 5]]


def test_shard_of_a_minibatch():
    exp = make_experience().rows(torch.tensor([6, 1, 4, 3]))
    assert [_row_ids(s) for s in exp.shard(2)] == [[6, 1], [4, 3]]


def test_policy_batch():
    exp = make_experience()
    batch = exp.policy_batch()
    assert isinstance(batch, PolicyBatch)
    for f in fields(batch):
        assert getattr(batch, f.name) is getattr(exp, f.name)


def test_critic_batch():
    exp = make_experience()
    batch = exp.critic_batch()
    assert isinstance(batch, CriticBatch)
    for f in fields(batch):
        assert getattr(batch, f.name) is getattr(exp, f.name)


def test_critic_batch_needs_values():
    with pytest.raises(ValueError, match="no values"):
        make_experience(with_values=False).critic_batch()
