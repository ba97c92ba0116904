"""Config checks that refuse, at load time, settings which could only fail (or silently train
nothing) once actors are running."""

from __future__ import annotations

import typing

import pytest
from pydantic import BaseModel

from instructray.config import ConfigError, JobConfig, load_config


def _error(overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    return str(info.value)


def test_ppo_refuses_greedy_sampling():
    msg = _error(["ppo.sampling.temperature=0"])
    assert "ppo: sampling.temperature is 0 (greedy): PPO needs a stochastic policy" in msg
    # The labeler and the evaluation may decode greedily.
    assert load_config(None, ["eval.sampling.temperature=0"]).eval.sampling.temperature == 0


def test_ppo_refuses_nucleus_sampling():
    msg = _error(["ppo.sampling.top_p=0.9"])
    assert "sampling.top_p is 0.9: the trainer scores the full tempered distribution" in msg


@pytest.mark.parametrize("estimator", ["grpo", "rloo"])
def test_group_estimators_need_several_samples_per_prompt(estimator):
    msg = _error([f"ppo.advantage_estimator={estimator}"])
    assert f"advantage_estimator {estimator} compares samples of the same prompt" in msg
    assert "set samples_per_prompt >= 2" in msg
    ok = load_config(None, [f"ppo.advantage_estimator={estimator}", "ppo.samples_per_prompt=2"])
    assert ok.ppo.samples_per_prompt == 2
    # REINFORCE++ has no group baseline: one sample per prompt trains.
    assert load_config(None, ["ppo.advantage_estimator=reinforce_pp"]).ppo.samples_per_prompt == 1


def test_unknown_advantage_estimator_is_a_load_error():
    msg = _error(["ppo.advantage_estimator=gea"])
    assert "ppo.advantage_estimator: unknown advantage estimator 'gea'; known: gae, grpo" in msg


def test_ptx_batch_must_cover_every_micro_batch():
    # mini 16 / micro 4 = 4 micro-batches per optimizer step, 3 ptx texts cannot cover them.
    base = ["ppo.ptx_coef=0.1", "ppo.mini_batch_size=16", "ppo.micro_batch_size=4"]
    msg = _error([*base, "ppo.ptx_batch_size=3"])
    assert "ptx_batch_size (3) is smaller than the 4 micro-batches of a PPO step" in msg
    assert load_config(None, [*base, "ppo.ptx_batch_size=5"]).ppo.ptx_batch_size == 5
    # Without the ptx term the size does not matter.
    assert load_config(None, [*base[1:], "ppo.ptx_batch_size=3"]).ppo.ptx_coef == 0


@pytest.mark.parametrize("value", [".inf", ".nan"])
def test_non_finite_numbers_are_refused(value):
    msg = _error([f"ppo.policy_optim.lr={value}"])
    assert "ppo.policy_optim.lr" in msg


def test_eval_judges_and_reward_function_specs():
    cfg = load_config(None, ["eval.judges=[my.judges:score, http://127.0.0.1:9000/score]"])
    assert cfg.eval.judges == ["my.judges:score", "http://127.0.0.1:9000/score"]
    msg = _error(["eval.judges=[not a spec]"])
    assert "judge 'not a spec': expected 'package.module:function' or an http(s) URL" in msg
    msg = _error(["ppo.reward_function=module_without_function"])
    assert "ppo.reward_function: expected 'package.module:function'" in msg


def test_eval_stage_needs_something_to_judge_with_and_a_baseline():
    msg = _error(["data.task=null", "data.prompts=p.jsonl", "stages=[eval]"])
    assert "stage 'eval' has nothing to judge with" in msg
    msg = _error(["stages=[eval]"])
    assert "eval.baseline is 'sft', which this job neither trains nor is given" in msg
    cfg = load_config(None, ["stages=[eval]", "model.sft_checkpoint=runs/x/sft"])
    assert cfg.ordered_stages() == ["eval"]
    assert load_config(None, ["stages=[sft, rm, ppo, eval]"]).ordered_stages()[-1] == "eval"


def test_preference_model_pretraining_needs_the_task():
    message = _error(
        ["stages=[rm]", "data.task=null", "data.preferences=p.jsonl", "rm.pmp_pairs=8"]
    )
    assert "rm.pmp_pairs" in message and "data.task" in message
    assert load_config(None, ["stages=[rm]", "rm.pmp_pairs=8"]).rm.pmp_pairs == 8


def test_registry_names_are_checked_against_the_algorithms():
    """The config's names of KL estimators and DPO losses are those the algorithms implement
    (the config does not import torch, so it spells them out: this keeps the two in step)."""
    from instructray.algorithms import KLEstimator, dpo_loss
    from instructray.config import DPOStageConfig, KLConfig

    kl = KLConfig.model_fields["estimator"].annotation
    assert typing.get_args(kl) == typing.get_args(KLEstimator) == ("k1", "k2", "k3")
    loss = DPOStageConfig.model_fields["loss_type"].annotation
    hints = typing.get_type_hints(dpo_loss)
    assert typing.get_args(loss) == typing.get_args(hints["loss_type"]) == ("sigmoid", "ipo")
    assert "ppo.kl.estimator" in _error(["ppo.kl.estimator=k4"])
    assert "dpo.loss_type" in _error(["dpo.loss_type=hinge"])


def _float_fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    names = []
    for name, field in model.model_fields.items():
        inner, stack = set(), [field.annotation]
        while stack:
            item = stack.pop()
            inner.add(item)
            stack.extend(typing.get_args(item))
        if float in inner:
            # a dict of floats (custom Ray resources) is checked through one of its keys
            is_dict = any(typing.get_origin(t) is dict for t in inner)
            names.append(f"{prefix}{name}.x" if is_dict else f"{prefix}{name}")
        for t in inner:
            if isinstance(t, type) and issubclass(t, BaseModel):
                names += _float_fields(t, f"{prefix}{name}.")
    return names


FLOAT_FIELDS = _float_fields(JobConfig)


def test_the_float_fields_are_found():
    assert len(FLOAT_FIELDS) > 30
    assert {
        "ppo.policy_optim.lr",
        "ppo.kl.init_coef",
        "eval.confidence",
        "resources.policy.resources.x",
    } <= set(FLOAT_FIELDS)


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
@pytest.mark.parametrize("field", FLOAT_FIELDS)
def test_every_float_field_refuses_non_finite_numbers(field, value):
    msg = _error([f"{field}={value}"])
    assert f"{field}: Input should be a finite number" in msg
