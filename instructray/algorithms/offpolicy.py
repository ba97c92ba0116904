"""Correcting for rollouts that were not sampled by exactly the policy being trained: the
engine computes log-probs with other kernels (and, in async mode, with weights one step old)."""

from __future__ import annotations

import torch
from torch import Tensor

from instructray.algorithms.kl import kl_penalty
from instructray.algorithms.masked import masked_mean

_MAX_LOG_RATIO = 20.0


def truncated_is_weights(
    trainer_logprobs: Tensor, engine_logprobs: Tensor, action_mask: Tensor, cap: float
) -> Tensor:
    """Per-token min(π_trainer / π_engine, cap) (truncated importance sampling, as in Yao et al.
    2025 "Your efficient RL framework secretly brings you off-policy RL"); 0 on padding."""
    mask = action_mask.bool()
    log_ratio = torch.where(mask, trainer_logprobs - engine_logprobs, 0.0)
    weights = log_ratio.clamp(max=_MAX_LOG_RATIO).exp().clamp(max=cap)
    return torch.where(mask, weights, 0.0)


def engine_mismatch(
    trainer_logprobs: Tensor, engine_logprobs: Tensor, action_mask: Tensor
) -> dict[str, float]:
    """How far the engine's sampled-token log-probs are from the trainer's, per valid token."""
    diff = (trainer_logprobs - engine_logprobs).abs()
    kl = kl_penalty(engine_logprobs, trainer_logprobs, "k3")  # KL(π_engine ‖ π_trainer) ≥ 0
    return {
        "engine_logprob_abs_diff": masked_mean(diff, action_mask).item(),
        "engine_kl": masked_mean(kl, action_mask).item(),
    }
