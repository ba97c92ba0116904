"""Training losses: SFT, pairwise reward model, PPO policy/value/entropy, PPO-ptx and DPO."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from instructray.algorithms.logprobs import logprobs_from_logits
from instructray.algorithms.masked import masked_mean

# Bounds exp() of the PPO log-ratio: far outside any clip range, but keeps ratio and its
# gradient finite when the policy has drifted wildly on some token.
_MAX_LOG_RATIO = 20.0


def sft_loss(logits: Tensor, input_ids: Tensor, loss_mask: Tensor) -> Tensor:
    """Next-token cross-entropy averaged over target tokens (loss_mask[t] = 1 means token t).

    Token t is predicted by logits[t-1], so position 0 is never a target; an empty mask gives 0.
    """
    token_logprobs = logprobs_from_logits(logits[:, :-1], input_ids[:, 1:])
    return -masked_mean(token_logprobs, loss_mask[:, 1:])


def pairwise_ranking_loss(
    rewards: Tensor, group_ids: Tensor, ranks: Tensor
) -> tuple[Tensor, Tensor]:
    """InstructGPT RM loss over ranked groups: returns (loss, accuracy).

    Answers sharing a group id are one prompt's K answers (rank 0 best). Loss is the mean over
    groups of the mean over that group's pairs (w ranked above l) of -log sigmoid(r_w - r_l);
    accuracy is the per-group fraction of pairs with r_w > r_l, averaged over groups. Equal
    ranks form no pair; groups without any pair are left out of both means.
    """
    pair = (group_ids[:, None] == group_ids[None, :]) & (ranks[:, None] < ranks[None, :])
    diff = rewards[:, None] - rewards[None, :]
    unique_groups, group_index = torch.unique(group_ids, return_inverse=True)
    num_groups = unique_groups.numel()

    def per_group_mean(pair_values: Tensor) -> Tensor:
        zeros = pair_values.new_zeros(num_groups)
        sums = zeros.index_add(0, group_index, torch.where(pair, pair_values, 0.0).sum(dim=1))
        counts = zeros.index_add(0, group_index, pair.to(pair_values.dtype).sum(dim=1))
        return masked_mean(sums / counts.clamp(min=1.0), counts > 0)

    loss = per_group_mean(-F.logsigmoid(diff))
    with torch.no_grad():
        accuracy = per_group_mean((diff > 0).to(rewards.dtype))
    return loss, accuracy


def policy_loss_clipped(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    action_mask: Tensor,
    clip_eps: float,
    clip_eps_high: float | None = None,
    token_weights: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """PPO clipped surrogate, token-level masked mean: returns (loss, clip_fraction, approx_kl).

    The ratio is clipped to [1 - clip_eps, 1 + clip_eps_high] (clip_eps_high defaults to
    clip_eps); clip_fraction counts valid tokens where the clipped term was the larger loss.
    approx_kl is the masked mean of 0.5 * (log pi - log pi_old)^2, without gradient.
    ``token_weights`` (no gradient) scale each token's loss, e.g. truncated importance weights
    π_old/π_engine that correct for the rollout engine sampling from slightly other numbers.
    """
    high = clip_eps if clip_eps_high is None else clip_eps_high
    mask = action_mask.bool()
    # Zero the log-ratio on padding so garbage log-probs there cannot yield inf/NaN gradients.
    log_ratio = torch.where(mask, logprobs - old_logprobs, 0.0)
    ratio = log_ratio.clamp(max=_MAX_LOG_RATIO).exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_eps, 1.0 + high)
    per_token = torch.maximum(unclipped, clipped)
    if token_weights is not None:
        per_token = per_token * token_weights.detach()
    loss = masked_mean(per_token, mask)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped > unclipped).float(), mask)
        approx_kl = masked_mean(0.5 * log_ratio.square(), mask)
    return loss, clip_fraction, approx_kl


def value_loss_clipped(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    action_mask: Tensor,
    clip_eps: float | None,
) -> tuple[Tensor, Tensor]:
    """Value loss 0.5 * max((V-R)^2, (V_clip-R)^2), masked mean: returns (loss, clip_fraction).

    V_clip = old + clamp(V - old, -clip_eps, clip_eps); with clip_eps None it is 0.5 (V-R)^2.
    """
    unclipped = (values - returns).square()
    if clip_eps is None:
        return 0.5 * masked_mean(unclipped, action_mask), values.new_zeros((), dtype=torch.float)
    values_clipped = old_values + (values - old_values).clamp(-clip_eps, clip_eps)
    clipped = (values_clipped - returns).square()
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), action_mask)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped > unclipped).float(), action_mask)
    return loss, clip_fraction


def entropy_bonus(entropy: Tensor, action_mask: Tensor) -> Tensor:
    """Masked mean per-token entropy; the caller subtracts coef * this from the loss."""
    return masked_mean(entropy, action_mask)


def ptx_loss(logits: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """LM cross-entropy on pretraining text (PPO-ptx term; the caller multiplies by gamma).

    A token is a target only if it and its predecessor are real, so with left padding the first
    real token (which would be predicted from a pad position) is not scored.
    """
    real = attention_mask.bool()
    targets = torch.zeros_like(real)
    targets[:, 1:] = real[:, 1:] & real[:, :-1]
    return sft_loss(logits, input_ids, targets)


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
    loss_type: Literal["sigmoid", "ipo"] = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """DPO/IPO loss on sequence log-probs [B]: returns (loss, chosen_rewards, rejected_rewards).

    h = (pi_c - pi_r) - (ref_c - ref_r); sigmoid: -(1-ls) log s(beta h) - ls log s(-beta h);
    ipo: (h - 1/(2 beta))^2; both batch-averaged. Rewards are beta (pi - ref), detached.
    """
    h = (policy_chosen_logps - policy_rejected_logps) - (ref_chosen_logps - ref_rejected_logps)
    if loss_type == "sigmoid":
        losses = -(1.0 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * (
            F.logsigmoid(-beta * h)
        )
    elif loss_type == "ipo":
        losses = (h - 1.0 / (2.0 * beta)).square()
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; expected 'sigmoid' or 'ipo'")
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps).detach()
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps).detach()
    return losses.mean(), chosen_rewards, rejected_rewards
