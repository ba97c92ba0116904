"""Pure-torch math of the alignment recipe: masked reductions, log-probs, KL, advantages, losses."""

from instructray.algorithms import critic_free as _critic_free  # noqa: F401  (registers grpo, rloo, reinforce_pp)
from instructray.algorithms.advantages import (
    ADVANTAGE_ESTIMATORS,
    CRITIC_FREE,
    AdvantageEstimator,
    AdvantageInputs,
    compute_gae,
    gae_estimator,
    get_advantage_estimator,
    penalize_missing_eos,
    register_advantage_estimator,
    shape_rewards,
)
from instructray.algorithms.kl import (
    AdaptiveKLController,
    FixedKLController,
    KLController,
    KLEstimator,
    kl_penalty,
)
from instructray.algorithms.logprobs import (
    entropy_from_logits,
    logprobs_from_logits,
    response_logprobs,
    tempered_logits,
)
from instructray.algorithms.losses import (
    dpo_loss,
    entropy_bonus,
    pairwise_ranking_loss,
    policy_loss_clipped,
    ptx_loss,
    sft_loss,
    value_loss_clipped,
)
from instructray.algorithms.masked import masked_mean, masked_sum, masked_var, whiten
from instructray.algorithms.offpolicy import engine_mismatch, truncated_is_weights

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "CRITIC_FREE",
    "AdaptiveKLController",
    "AdvantageEstimator",
    "AdvantageInputs",
    "FixedKLController",
    "KLController",
    "KLEstimator",
    "compute_gae",
    "dpo_loss",
    "engine_mismatch",
    "entropy_bonus",
    "entropy_from_logits",
    "gae_estimator",
    "get_advantage_estimator",
    "kl_penalty",
    "logprobs_from_logits",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "pairwise_ranking_loss",
    "penalize_missing_eos",
    "policy_loss_clipped",
    "ptx_loss",
    "register_advantage_estimator",
    "response_logprobs",
    "sft_loss",
    "shape_rewards",
    "tempered_logits",
    "truncated_is_weights",
    "value_loss_clipped",
    "whiten",
]
