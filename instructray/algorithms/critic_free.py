"""Critic-free advantage estimators: GRPO, RLOO and REINFORCE++.

Each is registered with `needs_critic=False`, so it joins CRITIC_FREE and the PPO stage runs
without a critic. All of them read the shaped per-token rewards (RM score - beta * KL per token),
so the KL-in-reward penalty still applies, and return exact zeros at masked positions.
"""

from __future__ import annotations

import torch
from torch import Tensor

from instructray.algorithms.advantages import AdvantageInputs, register_advantage_estimator
from instructray.algorithms.masked import masked_sum

GROUP_STD_EPS = 1e-6


def sequence_rewards(rewards: Tensor, action_mask: Tensor) -> Tensor:
    """Outcome reward per sample [B]: the sum of its shaped per-token rewards over valid tokens."""
    return masked_sum(rewards, action_mask, dim=1)


def group_mean_std(x: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample (group mean, population std, group size) of `x` [B] over samples sharing an id.

    Ids may be any integers; groups are found with torch.unique and reduced with index_add_.
    """
    unique_ids, inverse = torch.unique(group_ids.to(x.device), return_inverse=True)
    count = torch.zeros(unique_ids.numel(), dtype=x.dtype, device=x.device).index_add_(
        0, inverse, torch.ones_like(x)
    )
    total = torch.zeros_like(count).index_add_(0, inverse, x)
    mean = (total / count)[inverse]
    sq = torch.zeros_like(count).index_add_(0, inverse, (x - mean) ** 2)
    std = (sq / count).sqrt()[inverse]  # population std (unbiased=False)
    return mean, std, count[inverse]


def _broadcast(per_sample: Tensor, action_mask: Tensor) -> Tensor:
    """Spread a per-sample value [B] over its valid tokens [B,R]; 0 at masked positions."""
    return torch.where(action_mask.bool(), per_sample.unsqueeze(1), 0.0)


@register_advantage_estimator("grpo", needs_critic=False)
def grpo_estimator(inputs: AdvantageInputs) -> tuple[Tensor, Tensor]:
    """GRPO outcome supervision (Shao et al. 2024, DeepSeekMath, arXiv:2402.03300).

    A_i = (r_i - mean(group)) / (std(group) + eps) with the population std (unbiased=False) and
    eps=GROUP_STD_EPS, on every valid token; returns are the same. Groups of size 1 get A = 0.
    """
    r = sequence_rewards(inputs.rewards, inputs.action_mask)
    mean, std, k = group_mean_std(r, inputs.group_ids)
    per_sample = torch.where(k > 1, (r - mean) / (std + GROUP_STD_EPS), 0.0)
    advantages = _broadcast(per_sample, inputs.action_mask)
    return advantages, advantages.clone()


@register_advantage_estimator("rloo", needs_critic=False)
def rloo_estimator(inputs: AdvantageInputs) -> tuple[Tensor, Tensor]:
    """RLOO (Ahmadian et al. 2024, "Back to Basics", arXiv:2402.14740): leave-one-out baseline.

    A_i = r_i - (sum(group) - r_i) / (k - 1) = k / (k - 1) * (r_i - mean(group)), on every valid
    token; returns are the same. Groups of size 1 (no other sample) get A = 0.
    """
    r = sequence_rewards(inputs.rewards, inputs.action_mask)
    mean, _, k = group_mean_std(r, inputs.group_ids)
    per_sample = torch.where(k > 1, k / (k - 1).clamp(min=1.0) * (r - mean), 0.0)
    advantages = _broadcast(per_sample, inputs.action_mask)
    return advantages, advantages.clone()


@register_advantage_estimator("reinforce_pp", needs_critic=False)
def reinforce_pp_estimator(inputs: AdvantageInputs) -> tuple[Tensor, Tensor]:
    """REINFORCE++ (Hu 2025, arXiv:2501.03262): discounted per-token returns, no baseline.

    G_t = sum_{t' >= t} gamma^(t'-t) r_t' over valid tokens; advantages = returns = G. The
    batch-level whitening in the coordinator (`whiten_advantages`) is its normalisation.
    """
    mask = inputs.action_mask.bool()
    rewards = torch.where(mask, inputs.rewards, 0.0)
    running = torch.zeros_like(rewards[:, 0])
    reversed_returns: list[Tensor] = []
    for t in reversed(range(rewards.shape[1])):  # over tokens, vectorised over the batch
        running = rewards[:, t] + inputs.gamma * running
        reversed_returns.append(running)
    returns = torch.where(mask, torch.stack(reversed_returns[::-1], dim=1), 0.0)
    return returns, returns.clone()
