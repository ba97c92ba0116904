"""Weight buckets for the engine sync, and merging rollouts from several engines."""

from __future__ import annotations

import logging

import pytest
import torch

from instructray.rollout.batch import Rollout
from instructray.rollout.weights import (
    bucketize,
    pack,
    read_file,
    tensor_bytes,
    unpack,
    write_file,
)


def test_buckets_respect_the_size_and_round_trip_exactly() -> None:
    state = {f"w{i}": torch.randn(64, 64) for i in range(5)}  # 16 KiB each
    state["big"] = torch.randn(256, 256)  # 256 KiB, larger than a bucket: goes alone
    buckets = list(bucketize(state, bucket_bytes=40 * 1024))
    assert [list(b) for b in buckets] == [["w0", "w1"], ["w2", "w3"], ["w4"], ["big"]]
    assert all(sum(map(tensor_bytes, b.values())) <= 40 * 1024 for b in buckets[:-1])
    restored = {k: v for b in buckets for k, v in unpack(pack(b)).items()}
    assert restored.keys() == state.keys()
    assert all(torch.equal(restored[k], state[k]) for k in state)


def test_aliased_tensors_are_copied_not_dropped() -> None:
    """A plain ``model.state_dict()`` of a tied model holds one storage under two names;
    safetensors refuses aliases, and engines want both names: the alias is copied."""
    embed = torch.randn(8, 4)
    state = {"embed.weight": embed, "norm.weight": torch.ones(4), "lm_head.weight": embed}
    (bucket,) = bucketize(state)
    assert list(bucket) == ["embed.weight", "norm.weight", "lm_head.weight"]
    restored = unpack(pack(bucket))
    assert torch.equal(restored["lm_head.weight"], embed)


def test_weights_file_round_trips_exactly(tmp_path) -> None:
    state = {"a": torch.randn(3, 5), "b": torch.arange(7, dtype=torch.float32), "c": torch.ones(2)}
    state["alias"] = state["a"]
    path = tmp_path / "w.safetensors"
    written = write_file(state, path)
    assert written == sum(tensor_bytes(t) for t in state.values())
    assert not (tmp_path / "w.safetensors.partial").exists()
    restored = dict(read_file(path))
    assert sorted(restored) == ["a", "alias", "b", "c"]
    assert all(torch.equal(restored[k], state[k]) for k in restored)


def _rollout(prompts: list[list[int]], responses: list[list[int]], pad: int = 0) -> Rollout:
    p, r = max(map(len, prompts)), max(map(len, responses))
    seq = torch.full((len(prompts), p + r), pad)
    att = torch.zeros_like(seq)
    act = torch.zeros((len(prompts), r), dtype=torch.bool)
    for i, (pr, rs) in enumerate(zip(prompts, responses, strict=True)):
        seq[i, p - len(pr) : p] = torch.tensor(pr)
        seq[i, p : p + len(rs)] = torch.tensor(rs)
        att[i, p - len(pr) : p + len(rs)] = 1
        act[i, : len(rs)] = True
    return Rollout(seq, att, act, logprobs=act.float() * -1.0)


def test_merge_rollouts_repads_prompts_left_and_responses_right() -> None:
    a = _rollout([[5, 6, 7]], [[8]])
    b = _rollout([[9]], [[10, 11, 12]])
    merged = Rollout.merge([a, b], pad_id=0)
    assert merged.sequences.tolist() == [[5, 6, 7, 8, 0, 0], [0, 0, 9, 10, 11, 12]]
    assert merged.attention_mask.tolist() == [[1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1]]
    assert merged.action_mask.tolist() == [[True, False, False], [True, True, True]]
    assert merged.logprobs is not None
    assert merged.logprobs.tolist() == [[-1.0, 0.0, 0.0], [-1.0, -1.0, -1.0]]
    assert merged.responses.tolist() == [[8, 0, 0], [10, 11, 12]]
    assert Rollout.merge([a], pad_id=0) is a


def test_merge_refuses_rollouts_with_and_without_engine_logprobs() -> None:
    a = _rollout([[5]], [[8]])
    b = Rollout(a.sequences, a.attention_mask, a.action_mask)
    with pytest.raises(ValueError, match="with and without engine log-probs"):
        Rollout.merge([a, b], pad_id=0)
    assert Rollout.merge([b, b], pad_id=0).logprobs is None


def test_only_the_rotary_reload_warning_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    from instructray.rollout.vllm_ext import RELOAD_LOGGER, quiet_rotary_reload_note

    quiet_rotary_reload_note()
    quiet_rotary_reload_note()  # idempotent: one filter
    logger = logging.getLogger(RELOAD_LOGGER)
    assert len(logger.filters) == 1
    with caplog.at_level(logging.WARNING, logger=RELOAD_LOGGER):
        for layer in ("RotaryEmbedding", "Llama3RotaryEmbedding", "QKVParallelLinear"):
            logger.warning("%s: Failed to load weights", layer)
    assert [r.getMessage() for r in caplog.records] == ["QKVParallelLinear: Failed to load weights"]


def test_ended_with_eos_reads_the_last_sampled_token() -> None:
    from instructray.orchestrator.experience import ended_with_eos

    eos = 2
    # stopped on EOS / cut off at max_new_tokens / stopped on EOS early / nothing sampled
    rollout = _rollout([[5], [5], [5], [5]], [[7, 8, eos], [7, 8, 9], [eos], [1]])
    empty = rollout.action_mask.clone()
    empty[3] = False
    rollout = Rollout(rollout.sequences, rollout.attention_mask, empty)
    assert ended_with_eos(rollout, eos).tolist() == [True, False, True, False]
