"""Scoring sampled responses for PPO and for evaluation: the reward (a reward model on its
actors, or a user function on the decoded text), KL to the reference, and the gold judges.

The PPO loop, the reward-hacking monitor and the eval stage all score samples here, so the
proxy reward that PPO optimises is computed the same way as the one the evaluation reports."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from instructray.actors.group import ActorGroup, wait
from instructray.algorithms import kl_penalty, masked_sum
from instructray.evaluation import EvalJudge, SampleSet, load_judge
from instructray.orchestrator.experience import ended_with_eos
from instructray.rollout.batch import Rollout
from instructray.training.batches import TensorBatch

PROXY = "rm"
"""Name of the proxy reward among a SampleSet's scores (a reward model or a function)."""


def forward_on(
    group: ActorGroup, method: Callable[[Any], Any], batch: TensorBatch, *common: Any
) -> list[Any]:
    """Start ``method(actor)(shard, *common)`` on every rank (collective under ZeRO-3);
    returns refs."""
    return group.map_async(method, batch.split(group.world_size), *common)


def decode_rollout(tokenizer: Any, rollout: Rollout) -> tuple[list[str], list[str]]:
    """(prompt, response) texts of each `[left-padded prompt | response]` row, special
    tokens skipped."""
    width = rollout.num_actions
    prompts, responses = [], []
    for row, attn, actions in zip(
        rollout.sequences, rollout.attention_mask, rollout.action_mask, strict=True
    ):
        prompt = row[:-width][attn[:-width].bool()]
        prompts.append(tokenizer.decode(prompt, skip_special_tokens=True))
        responses.append(tokenizer.decode(row[-width:][actions.bool()], skip_special_tokens=True))
    return prompts, responses


@dataclass
class RewardSource:
    """r(x, y): the reward model's actors, or a user function of (prompts, responses)."""

    model: ActorGroup | None
    function: EvalJudge | None
    tokenizer: Any

    @classmethod
    def of(cls, model: ActorGroup | None, function: str | None, tokenizer: Any) -> RewardSource:
        if (model is None) == (function is None):
            raise ValueError("a reward comes from exactly one of a reward model or a function")
        return cls(model, None if function is None else load_judge(function), tokenizer)

    def start(self, rollout: Rollout) -> list[Any]:
        """Start scoring on the reward model's actors (nothing to start for a function)."""
        if self.model is None:
            return []
        return forward_on(self.model, lambda a: a.scores, rollout.action_batch())

    def result(self, started: list[Any], rollout: Rollout) -> torch.Tensor:
        if self.function is None:
            return torch.cat(wait(started))
        prompts, responses = decode_rollout(self.tokenizer, rollout)
        return torch.as_tensor(self.function.score(prompts, responses), dtype=torch.float32)


@dataclass
class SampleScorer:
    """Everything that judges a batch of samples: policy and reference log-probs (KL), the
    proxy reward and the gold judges (on decoded text, in the driver)."""

    policy: ActorGroup
    reference: ActorGroup
    reward: RewardSource | None
    judges: Sequence[EvalJudge]
    tokenizer: Any

    def score(self, rollout: Rollout, prompts: Sequence[str], temperature: float) -> SampleSet:
        """One SampleSet for rollouts answering ``prompts`` (one sample each, same order)."""
        inputs = rollout.action_batch()
        policy_refs = forward_on(self.policy, lambda a: a.action_logprobs, inputs, temperature)
        ref_refs = forward_on(self.reference, lambda a: a.action_logprobs, inputs, temperature)
        reward_refs = self.reward.start(rollout) if self.reward is not None else []
        _, responses = decode_rollout(self.tokenizer, rollout)
        scores = {j.name: np.asarray(j.score(list(prompts), responses)) for j in self.judges}
        mask = rollout.action_mask
        ref_logprobs = torch.cat(wait(ref_refs))
        kl = kl_penalty(torch.cat(wait(policy_refs)), ref_logprobs, "k1")
        if self.reward is not None:
            scores[PROXY] = self.reward.result(reward_refs, rollout).numpy()
        return SampleSet(
            prompts=list(prompts),
            responses=responses,
            lengths=mask.sum(-1).numpy(),
            ended=ended_with_eos(rollout, self.tokenizer.eos_token_id).numpy(),
            scores=scores,
            kl=masked_sum(kl, mask, dim=-1).numpy(),
            ref_logprob=masked_sum(ref_logprobs, mask, dim=-1).numpy(),
        )
