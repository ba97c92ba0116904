"""The experience batch: everything one PPO iteration knows about its rollouts.

Layout: a row is ``[left-padded prompt | right-padded response]`` of width P + R. Per-token fields
are shaped [B, R] and cover only the response (the "actions"); a response token is valid where
``action_mask`` is 1 (up to and including the EOS that ended it).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from instructray.algorithms import (
    AdvantageEstimator,
    AdvantageInputs,
    kl_penalty,
    penalize_missing_eos,
    shape_rewards,
    truncated_is_weights,
    whiten,
)
from instructray.config import PPOStageConfig
from instructray.rollout.batch import Rollout
from instructray.training.batches import CriticBatch, PolicyBatch, TensorBatch


@dataclass(frozen=True)
class Experience(TensorBatch):
    # -- from the rollout engine -----------------------------------------------------------
    sequences: torch.Tensor
    """[B, P+R] token ids: prompt (left-padded) then response (right-padded)."""
    attention_mask: torch.Tensor
    """[B, P+R] 1 on real prompt and response tokens, 0 on padding."""
    action_mask: torch.Tensor
    """[B, R] bool, 1 on response tokens the policy produced (the EOS included)."""
    group_ids: torch.Tensor
    """[B] long, index of the prompt a sample came from (n samples share one id)."""
    # -- from the policy, the frozen reference, the reward model and the critic ------------
    logprobs: torch.Tensor
    """[B, R] log π_old(a_t | s_t): the policy's forward pass over the batch, or the engine's
    own sampled-token log-probs with ``ppo.old_logprobs: engine``."""
    ref_logprobs: torch.Tensor
    """[B, R] log π_SFT(a_t | s_t) from the frozen reference (the SFT model)."""
    scores: torch.Tensor
    """[B] reward-model score r(x, y) of each whole response."""
    values: torch.Tensor | None
    """[B, R] critic's V(s_t) before each response token; None for critic-free estimators."""
    # -- computed by the coordinator ---------------------------------------------------------
    kl: torch.Tensor
    """[B, R] per-token KL(π_old ‖ π_SFT) estimate (estimator from config)."""
    rewards: torch.Tensor
    """[B, R] shaped reward: −β·kl on every token, plus the RM score on the last one."""
    advantages: torch.Tensor
    """[B, R] advantage estimates (whitened over valid tokens when configured)."""
    returns: torch.Tensor
    """[B, R] value targets for the critic (advantages + values for GAE)."""
    # -- off-policy correction (vLLM engine only) -------------------------------------------
    rollout_logprobs: torch.Tensor | None = None
    """[B, R] the engine's own log-probs of the tokens it sampled (other kernels; in async
    mode also weights one step older than the policy's)."""
    is_weights: torch.Tensor | None = None
    """[B, R] truncated importance weights min(π_old / π_engine, cap) applied to the policy
    loss when ``ppo.tis_cap`` is set."""
    ended: torch.Tensor | None = None
    """[B] bool: the response stopped on EOS rather than being cut off at max_new_tokens."""

    @property
    def num_actions(self) -> int:
        return self.action_mask.shape[1]

    def minibatches(self, size: int, generator: torch.Generator) -> Iterator[Experience]:
        order = torch.randperm(len(self), generator=generator)
        for start in range(0, len(self) - size + 1, size):
            yield self.rows(order[start : start + size])

    def shard(self, world_size: int) -> list[Experience]:
        """Equal contiguous slices, one per data-parallel rank."""
        per_rank = len(self) // world_size
        return [self.rows(slice(r * per_rank, (r + 1) * per_rank)) for r in range(world_size)]

    def policy_batch(self) -> PolicyBatch:
        """What a policy rank's PPO update reads (the rest stays on the driver)."""
        return PolicyBatch(
            sequences=self.sequences,
            attention_mask=self.attention_mask,
            action_mask=self.action_mask,
            logprobs=self.logprobs,
            advantages=self.advantages,
            is_weights=self.is_weights,
        )

    def critic_batch(self) -> CriticBatch:
        """What a critic rank's value update reads."""
        if self.values is None:
            raise ValueError("this experience has no values (a critic-free estimator)")
        return CriticBatch(
            sequences=self.sequences,
            attention_mask=self.attention_mask,
            action_mask=self.action_mask,
            values=self.values,
            returns=self.returns,
        )


def ended_with_eos(rollout: Rollout, eos_id: int) -> torch.Tensor:
    """[B] bool: the response's last action is EOS (it stopped rather than being cut off)."""
    mask = rollout.action_mask.bool()
    responses = rollout.responses
    last = (mask.sum(-1) - 1).clamp(min=0)
    return (responses.gather(1, last[:, None]).squeeze(1) == eos_id) & mask.any(-1)


def assemble_experience(
    rollout: Rollout,
    group_ids: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    scores: torch.Tensor,
    values: torch.Tensor | None,
    eos_id: int,
    cfg: PPOStageConfig,
    kl_coef: float,
    estimator: AdvantageEstimator,
) -> Experience:
    """The coordinator's math on one scored rollout batch: the missing-EOS penalty, per-token
    KL, InstructGPT's shaped reward (RM score − β·KL), advantages and returns (whitened when
    configured) and, with engine log-probs and ``tis_cap``, truncated importance weights."""
    engine_logprobs = rollout.logprobs
    ended = ended_with_eos(rollout, eos_id)
    if cfg.missing_eos_penalty:
        scores = penalize_missing_eos(scores, ended, cfg.missing_eos_penalty)
    mask = rollout.action_mask
    kl = kl_penalty(logprobs, ref_logprobs, cfg.kl.estimator) * mask
    rewards = shape_rewards(scores, kl, mask, kl_coef, cfg.reward_clip)
    advantages, returns = estimator(
        AdvantageInputs(
            rewards=rewards,
            values=values,
            action_mask=mask,
            scores=scores,
            group_ids=group_ids,
            gamma=cfg.gamma,
            lam=cfg.lam,
        )
    )
    if cfg.whiten_advantages:
        advantages = whiten(advantages, mask)
    is_weights = None
    if cfg.tis_cap is not None and engine_logprobs is not None:
        is_weights = truncated_is_weights(logprobs, engine_logprobs, mask, cfg.tis_cap)
    return Experience(
        sequences=rollout.sequences,
        attention_mask=rollout.attention_mask,
        action_mask=mask,
        group_ids=group_ids,
        logprobs=logprobs,
        ref_logprobs=ref_logprobs,
        scores=scores,
        values=values,
        kl=kl,
        rewards=rewards,
        advantages=advantages,
        ended=ended,
        returns=returns,
        rollout_logprobs=engine_logprobs,
        is_weights=is_weights,
    )
