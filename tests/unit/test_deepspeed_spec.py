"""Tests for instructray.orchestrator.roles.deepspeed_spec: micro batch and accumulation steps."""

from __future__ import annotations

import pytest

from instructray.config import JobConfig, OptimConfig
from instructray.orchestrator.roles import deepspeed_spec
from instructray.training.deepspeed_model import DeepSpeedSpec


def test_normal_case():
    optim = OptimConfig(lr=3e-4)
    spec = deepspeed_spec(JobConfig(), 32, 8, 2, optim, "sft")
    assert spec == DeepSpeedSpec(
        micro_batch_size=8, grad_accum_steps=2, zero_stage=2, dtype="float32", optim=optim
    )


@pytest.mark.parametrize(
    ("batch", "micro", "world", "expected_micro", "expected_accum"),
    [
        (32, 8, 2, 8, 2),
        (32, 32, 1, 32, 1),
        (32, 4, 1, 4, 8),
        (64, 16, 4, 16, 1),
        (48, 4, 3, 4, 4),
        # A micro batch larger than the per-rank batch is clipped to it.
        (32, 64, 2, 16, 1),
        (16, 16, 4, 4, 1),
        (8, 100, 8, 1, 1),
    ],
)
def test_micro_and_accum(batch, micro, world, expected_micro, expected_accum):
    spec = deepspeed_spec(JobConfig(), batch, micro, world, OptimConfig(), "what")
    assert (spec.micro_batch_size, spec.grad_accum_steps) == (expected_micro, expected_accum)
    # One optimizer step sees exactly the requested batch.
    assert spec.micro_batch_size * spec.grad_accum_steps * world == batch


def test_takes_zero_stage_dtype_and_optim_from_arguments():
    cfg = JobConfig.model_validate({"resources": {"zero_stage": 3}, "model": {"dtype": "bfloat16"}})
    optim = OptimConfig(lr=1e-3, grad_clip=0.5)
    spec = deepspeed_spec(cfg, 16, 8, 2, optim, "rm")
    assert spec.zero_stage == 3
    assert spec.dtype == "bfloat16"
    assert spec.optim is optim


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_a_single_rank_skips_zero_partitioning(stage):
    cfg = JobConfig.model_validate({"resources": {"zero_stage": stage}})
    assert deepspeed_spec(cfg, 16, 8, 1, OptimConfig(), "sft").zero_stage == 0
    assert deepspeed_spec(cfg, 16, 8, 2, OptimConfig(), "sft").zero_stage == stage


def test_batch_not_divisible_by_world():
    with pytest.raises(ValueError) as info:
        deepspeed_spec(JobConfig(), 30, 8, 4, OptimConfig(), "ppo policy")
    assert str(info.value) == (
        "ppo policy: batch size 30 is not divisible by the 4 data-parallel ranks"
    )


def test_per_rank_not_multiple_of_micro():
    with pytest.raises(ValueError) as info:
        deepspeed_spec(JobConfig(), 24, 8, 2, OptimConfig(), "dpo")
    assert str(info.value) == "dpo: per-rank batch 12 is not a multiple of the micro batch 8"


@pytest.mark.parametrize("role", ["policy", "critic", "reference", "reward"])
def test_one_place_decides_how_many_actors_a_role_runs(role):
    """Placement starts as many actors as the stages' batch arithmetic assumes (the RM stage
    used to compute accumulation for resources.reward.actors ranks and start one)."""
    from instructray.orchestrator.roles import placement, role_size

    cfg = JobConfig.model_validate({"resources": {"device": "cpu", role: {"actors": 2}}})
    assert role_size(cfg, role) == 2
    assert placement(cfg, role).actors == 2
    spec = deepspeed_spec(cfg, 16, 8, role_size(cfg, role), OptimConfig(), role)
    assert spec.micro_batch_size * spec.grad_accum_steps * placement(cfg, role).actors == 16


def test_rollout_engines_come_from_num_engines():
    from instructray.orchestrator.roles import placement, role_size

    cfg = JobConfig.model_validate(
        {"resources": {"device": "cpu", "rollout": {"actors": 5}}, "rollout": {"num_engines": 3}}
    )
    assert role_size(cfg, "rollout") == placement(cfg, "rollout").actors == 3


def test_custom_resources_pin_each_rank_of_a_role():
    from instructray.orchestrator.roles import placement

    cfg = JobConfig.model_validate(
        {"resources": {"device": "cpu", "rollout": {"resources": {"node_b": 1}}}}
    )
    assert placement(cfg, "rollout").resources == {"node_b": 1.0}
    assert placement(cfg, "policy").resources == {}


def test_solo_threads_split_this_machines_cpus_over_the_ranks(monkeypatch) -> None:
    from instructray.orchestrator import roles

    monkeypatch.setattr(roles.ray, "cluster_resources", lambda: {"CPU": 4.0})
    monkeypatch.setattr(roles.os, "cpu_count", lambda: 2)
    cfg = JobConfig()
    assert roles.solo_threads(cfg, "policy") == 2  # 4 CPUs reserved, 2 cores here
    cfg.resources.policy.actors = 2
    assert roles.solo_threads(cfg, "policy") == 1
    monkeypatch.setattr(roles.os, "cpu_count", lambda: 16)
    assert roles.solo_threads(cfg, "policy") == 2  # the cluster's 4 over 2 ranks
    cfg.resources.torch_threads = 3
    assert roles.solo_threads(cfg, "policy") == 3  # the user's setting wins
