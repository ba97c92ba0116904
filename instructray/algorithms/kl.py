"""Per-token KL estimators and KL-coefficient controllers for PPO."""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

import torch
from torch import Tensor

KLEstimator = Literal["k1", "k2", "k3"]
_K3_LOG_RATIO_CLAMP = 20.0


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, estimator: KLEstimator = "k1") -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi (Schulman's k1/k2/k3).

    k1 = log pi - log pi_ref; k2 = 0.5 (log pi - log pi_ref)^2; k3 = exp(r) - 1 - r with
    r = log pi_ref - log pi (clamped to [-20, 20]), which is unbiased and always >= 0.
    Half-precision inputs are computed in float32.
    """
    dtype = torch.promote_types(
        torch.promote_types(logprobs.dtype, ref_logprobs.dtype), torch.float32
    )
    log_ratio = logprobs.to(dtype) - ref_logprobs.to(dtype)
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.square()
    if estimator == "k3":
        r = (-log_ratio).clamp(-_K3_LOG_RATIO_CLAMP, _K3_LOG_RATIO_CLAMP)
        return torch.expm1(r) - r
    raise ValueError(f"unknown KL estimator {estimator!r}; expected 'k1', 'k2' or 'k3'")


@runtime_checkable
class KLController(Protocol):
    """Holds the current KL coefficient `value` and adapts it after each PPO step."""

    value: float

    def update(self, current_kl: float, n_steps: int) -> None: ...


class FixedKLController:
    """Constant KL coefficient; `update` does nothing."""

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Keep the coefficient unchanged."""


class AdaptiveKLController:
    """Ziegler et al. (2019) controller that steers the observed KL towards `target`."""

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be > 0, got {target=} {horizon=}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """value *= 1 + clip(current_kl / target - 1, -0.2, 0.2) * n_steps / horizon."""
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon
