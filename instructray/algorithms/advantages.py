"""Reward shaping, GAE and a registry of advantage estimators for the RL loop."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


def shape_rewards(
    scores: Tensor,
    kl: Tensor,
    action_mask: Tensor,
    kl_coef: float,
    clip_score: float | None = None,
) -> Tensor:
    """Per-token rewards [B,R]: -kl_coef * kl on valid tokens, plus the RM score at the last one.

    This is InstructGPT's reward (RM score - beta * KL per token); `clip_score` clips scores to
    +-clip_score first. Padding positions are 0; a row with no valid token gets no score.
    """
    mask = action_mask.bool()
    scores = scores.to(kl.dtype)
    if clip_score is not None:
        scores = scores.clamp(-clip_score, clip_score)
    last = (mask.sum(dim=1, keepdim=True) - 1).clamp(min=0)
    score_at_last = torch.zeros_like(kl).scatter(1, last, scores.unsqueeze(1))
    return torch.where(mask, score_at_last - kl_coef * kl, 0.0)


def penalize_missing_eos(scores: Tensor, ended: Tensor, penalty: float) -> Tensor:
    """Scores [B] minus ``penalty`` where the response was cut off (``ended`` False): a reward
    model scores unfinished text as if it were finished, and a policy can learn never to stop."""
    return scores - penalty * (~ended.bool()).to(scores.dtype)


def compute_gae(
    rewards: Tensor,
    values: Tensor,
    action_mask: Tensor,
    gamma: float,
    lam: float,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over valid tokens: returns (advantages, returns), [B,R].

    The value after the last valid token is 0 (episode ends); returns = advantages + values;
    both are 0 at padding positions.
    """
    mask = action_mask.bool()
    values = torch.where(mask, values, 0.0)
    rewards = torch.where(mask, rewards, 0.0)
    length = rewards.shape[1]
    reversed_advantages: list[Tensor] = []
    last_gae = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(length)):
        # values[:, t+1] is already 0 past the end of each row because values were masked.
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(last_gae)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last_gae = torch.where(mask[:, t], delta + gamma * lam * last_gae, 0.0)
        reversed_advantages.append(last_gae)
    advantages = torch.stack(reversed_advantages[::-1], dim=1)
    returns = torch.where(mask, advantages + values, 0.0)
    return advantages, returns


@dataclass(frozen=True)
class AdvantageInputs:
    """Everything an advantage estimator may need for one rollout batch of B samples.

    rewards/values/action_mask are [B,R] (values is None without a critic); scores [B] are the
    raw sequence rewards; group_ids [B] (long) tell which prompt each sample came from.
    """

    rewards: Tensor
    values: Tensor | None
    action_mask: Tensor
    scores: Tensor
    group_ids: Tensor
    gamma: float
    lam: float


AdvantageEstimator = Callable[[AdvantageInputs], tuple[Tensor, Tensor]]

ADVANTAGE_ESTIMATORS: dict[str, AdvantageEstimator] = {}
CRITIC_FREE: set[str] = set()


def register_advantage_estimator(
    name: str, needs_critic: bool = True
) -> Callable[[AdvantageEstimator], AdvantageEstimator]:
    """Decorator registering an estimator under `name`; critic-free ones also join CRITIC_FREE."""

    def decorator(fn: AdvantageEstimator) -> AdvantageEstimator:
        if name in ADVANTAGE_ESTIMATORS:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        ADVANTAGE_ESTIMATORS[name] = fn
        if not needs_critic:
            CRITIC_FREE.add(name)
        return fn

    return decorator


def get_advantage_estimator(name: str) -> AdvantageEstimator:
    """Look up a registered estimator; KeyError naming the known ones if `name` is unknown."""
    try:
        return ADVANTAGE_ESTIMATORS[name]
    except KeyError:
        known = ", ".join(sorted(ADVANTAGE_ESTIMATORS)) or "<none>"
        raise KeyError(f"unknown advantage estimator {name!r}; known: {known}") from None


@register_advantage_estimator("gae")
def gae_estimator(inputs: AdvantageInputs) -> tuple[Tensor, Tensor]:
    """GAE on the shaped per-token rewards with the critic's values (no whitening here)."""
    if inputs.values is None:
        raise ValueError("the 'gae' advantage estimator needs critic values, got values=None")
    return compute_gae(
        inputs.rewards, inputs.values, inputs.action_mask, gamma=inputs.gamma, lam=inputs.lam
    )
