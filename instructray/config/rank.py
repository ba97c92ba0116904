"""What a trainer rank receives with each update call: the few numbers its loss reads, taken from
the stage's section, instead of the whole section (which also holds batch sizes, sampling, the
monitor, the optimizers: nothing a rank's loss may depend on)."""

from __future__ import annotations

from dataclasses import dataclass

from instructray.config.stages import DPOStageConfig, PPOStageConfig


@dataclass(frozen=True)
class PolicyLossParams:
    """PPO(-ptx) policy update: clipped surrogate − entropy bonus + γ·pretraining loss."""

    temperature: float
    """Logits are divided by the sampling temperature, so π_θ is the distribution sampled."""
    clip_eps: float
    entropy_coef: float
    ptx_coef: float

    @classmethod
    def of(cls, cfg: PPOStageConfig) -> PolicyLossParams:
        return cls(cfg.sampling.temperature, cfg.clip_eps, cfg.entropy_coef, cfg.ptx_coef)


@dataclass(frozen=True)
class CriticLossParams:
    """PPO value update: clipped value loss, scaled."""

    value_clip_eps: float | None
    value_loss_coef: float

    @classmethod
    def of(cls, cfg: PPOStageConfig) -> CriticLossParams:
        return cls(cfg.value_clip_eps, cfg.value_loss_coef)


@dataclass(frozen=True)
class DPOLossParams:
    beta: float
    loss_type: str
    label_smoothing: float

    @classmethod
    def of(cls, cfg: DPOStageConfig) -> DPOLossParams:
        return cls(cfg.beta, cfg.loss_type, cfg.label_smoothing)
