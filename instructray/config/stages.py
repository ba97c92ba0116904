"""One config section per stage: pretrain/sft, rm (with its simulated labeler), ppo (with the
reward-hacking monitor), dpo and eval. Each refuses settings that could only fail later."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from instructray.config.paths import BASE_MODEL
from instructray.config.sections import (
    Fraction,
    OptimConfig,
    PositiveFloat,
    PositiveInt,
    SamplingConfig,
    Section,
)

# Estimators that compare samples of the same prompt: one sample per prompt gives A = 0.
GROUP_ESTIMATORS = ("grpo", "rloo")


class LMStageConfig(Section):
    """Pre-training (all tokens) and SFT (response tokens only) share this shape."""

    epochs: PositiveFloat = 1.0
    batch_size: PositiveInt = 32
    micro_batch_size: PositiveInt = 16
    max_examples: PositiveInt | None = None
    optim: OptimConfig = OptimConfig()


class LabelerConfig(Section):
    """The simulated labeler that ranks SFT samples for the built-in task."""

    num_prompts: PositiveInt = 400
    k_min: Annotated[int, Field(ge=2)] = 4
    k_max: Annotated[int, Field(ge=2)] = 9
    noise: Annotated[float, Field(ge=0)] = 0.3
    temperature: PositiveFloat = 1.0
    max_new_tokens: PositiveInt = 24
    judge: Literal["bag_of_words", "meaning"] = Field(
        "bag_of_words",
        description="The labeler's taste: bag_of_words (a logistic regression on word counts: "
        "fast, but one frequent word can game it) or meaning (sentence-embedding sentiment, "
        "fluency under fluency_model, no repetition: what a reader would prefer).",
    )
    fluency_model: Annotated[str, BASE_MODEL] = Field(
        "smollm2", description="meaning judge: the LM whose log-likelihood measures fluency."
    )

    @model_validator(mode="after")
    def _k_range(self) -> LabelerConfig:
        if self.k_min > self.k_max:
            raise ValueError(f"k_min ({self.k_min}) must be <= k_max ({self.k_max})")
        return self


class RMStageConfig(Section):
    epochs: PositiveFloat = 2.0
    batch_size: PositiveInt = 16
    micro_batch_size: PositiveInt = 8
    max_comparisons: PositiveInt | None = None
    normalize_samples: Annotated[int, Field(ge=0)] = Field(
        256,
        description="SFT demonstrations scored after training to set the reward offset so "
        "that they average 0, as InstructGPT does before RL (0 = no normalisation).",
    )
    trainable_layers: PositiveInt | None = Field(
        None,
        description="Train only the top N transformer blocks with the score head, the rest "
        "frozen (None = all): backward stops at the lowest trained block.",
    )
    pmp_pairs: Annotated[int, Field(ge=0)] = Field(
        0,
        description="Preference-model pre-training (Askell et al. 2021), built-in task only: "
        "one epoch on up to this many pairs of real reviews (a fresh continuation ranked above "
        "a rotten one, matched by length) before the labeler's rankings. 0 = none.",
    )
    labeler: LabelerConfig = LabelerConfig()
    optim: OptimConfig = OptimConfig(lr=5e-5)


class KLConfig(Section):
    estimator: Literal["k1", "k2", "k3"] = "k1"
    init_coef: Annotated[float, Field(ge=0)] = 0.05
    adaptive: bool = False
    target: PositiveFloat = 6.0
    horizon: PositiveInt = 10000


class MonitorConfig(Section):
    """Reward-hacking monitor: every ``every`` PPO iterations the current policy answers a
    fixed set of held-out prompts, scored by the proxy reward and by the gold judges."""

    every: Annotated[int, Field(ge=0)] = Field(5, description="Iterations apart; 0 = off.")
    num_prompts: PositiveInt = 64
    token_ratio: Annotated[float, Field(gt=1)] = Field(
        3.0, description="Warn when a word becomes this many times as frequent as at the start."
    )
    token_min_increase: PositiveFloat = Field(
        10.0, description="... and gains at least this many occurrences per 1,000 words."
    )
    token_min_count: PositiveInt = 5


class PPOStageConfig(Section):
    iterations: PositiveInt = 20
    rollout_batch_size: PositiveInt = 32
    samples_per_prompt: PositiveInt = 1
    sampling: SamplingConfig = SamplingConfig()
    ppo_epochs: PositiveInt = 2
    mini_batch_size: PositiveInt = 16
    micro_batch_size: PositiveInt = 16
    advantage_estimator: str = Field(
        "gae", description="gae (with a critic), or critic-free grpo, rloo, reinforce_pp."
    )
    gamma: Fraction = 1.0
    lam: Fraction = 0.95
    whiten_advantages: bool = True
    clip_eps: PositiveFloat = 0.2
    value_clip_eps: PositiveFloat | None = 0.2
    value_loss_coef: PositiveFloat = 1.0
    entropy_coef: Annotated[float, Field(ge=0)] = 0.0
    ptx_coef: Annotated[float, Field(ge=0)] = 0.0
    ptx_batch_size: PositiveInt = Field(
        8, description="Pre-training texts per rank and optimizer step, split over micro-batches."
    )
    reward_clip: PositiveFloat | None = 10.0
    missing_eos_penalty: Annotated[float, Field(ge=0)] | None = Field(
        None,
        description="Subtracted from the reward of a response cut off at max_new_tokens (no "
        "EOS), as TRL's missing_eos_penalty: the RM scores unfinished text as if finished.",
    )
    reward_function: str | None = Field(
        None,
        description="'package.module:function' scoring (prompts, responses) -> floats, used "
        "instead of a reward model (no rm stage needed).",
    )
    tis_cap: PositiveFloat | None = Field(
        None,
        description="Truncated importance sampling: weight each token's policy loss by "
        "min(π_old/π_engine, tis_cap) to correct the engine/trainer log-prob mismatch.",
    )
    old_logprobs: Literal["recompute", "engine"] = Field(
        "recompute",
        description="π_old of the PPO ratio: recompute (a policy forward pass over the "
        "rollouts) or engine (the vLLM engine's sampled-token log-probs, saving that pass; "
        "exact only where engine and trainer agree, e.g. float32 — see the "
        "engine_logprob_abs_diff metric of a recompute run before switching).",
    )
    async_queue: Annotated[int, Field(ge=0, le=4)] = Field(
        0,
        description="Rollout batches generated ahead while the trainers update (0 = "
        "synchronous; 1 = batch k+1 is generated during training on batch k, one step "
        "off-policy).",
    )
    kl: KLConfig = KLConfig()
    monitor: MonitorConfig = MonitorConfig()
    policy_optim: OptimConfig = OptimConfig(lr=2e-5)
    critic_optim: OptimConfig = OptimConfig(lr=5e-5)

    @field_validator("advantage_estimator")
    @classmethod
    def _known_estimator(cls, name: str) -> str:
        from instructray.algorithms import ADVANTAGE_ESTIMATORS

        if name not in ADVANTAGE_ESTIMATORS:
            known = ", ".join(sorted(ADVANTAGE_ESTIMATORS))
            raise ValueError(f"unknown advantage estimator {name!r}; known: {known}")
        return name

    @field_validator("reward_function")
    @classmethod
    def _function_spec(cls, spec: str | None) -> str | None:
        if spec is not None and not _is_function_spec(spec):
            raise ValueError("expected 'package.module:function'")
        return spec

    @model_validator(mode="after")
    def _consistent(self) -> PPOStageConfig:
        rollouts = self.rollout_batch_size * self.samples_per_prompt
        if rollouts % self.mini_batch_size:
            raise ValueError(
                f"rollout_batch_size*samples_per_prompt ({rollouts}) must be a multiple of "
                f"mini_batch_size ({self.mini_batch_size})"
            )
        if self.sampling.temperature == 0:
            raise ValueError(
                "sampling.temperature is 0 (greedy): PPO needs a stochastic policy whose "
                "log-probs match what was sampled; use a temperature > 0 (e.g. 1.0)"
            )
        if self.sampling.top_p < 1:
            raise ValueError(
                f"sampling.top_p is {self.sampling.top_p}: the trainer scores the full "
                "tempered distribution, and under nucleus truncation the reference could "
                "give a sampled token probability 0 (infinite KL); set top_p to 1.0 and "
                "steer sampling with the temperature"
            )
        if self.advantage_estimator in GROUP_ESTIMATORS and self.samples_per_prompt < 2:
            raise ValueError(
                f"advantage_estimator {self.advantage_estimator} compares samples of the same "
                "prompt; with samples_per_prompt 1 every advantage is 0 and nothing trains: "
                "set samples_per_prompt >= 2"
            )
        micro_steps = -(-self.mini_batch_size // min(self.micro_batch_size, self.mini_batch_size))
        if self.ptx_coef > 0 and self.ptx_batch_size < micro_steps:
            raise ValueError(
                f"ptx_batch_size ({self.ptx_batch_size}) is smaller than the {micro_steps} "
                "micro-batches of a PPO step: each micro-batch needs at least one "
                f"pre-training text; set ptx_batch_size >= {micro_steps}"
            )
        return self


class DPOStageConfig(Section):
    beta: PositiveFloat = 0.1
    loss_type: Literal["sigmoid", "ipo"] = "sigmoid"
    label_smoothing: Annotated[float, Field(ge=0, lt=0.5)] = 0.0
    epochs: PositiveFloat = 1.0
    batch_size: PositiveInt = 16
    micro_batch_size: PositiveInt = 8
    max_pairs: PositiveInt | None = None
    optim: OptimConfig = OptimConfig(lr=5e-5)


EvalCheckpoint = Literal["pretrain", "sft", "ppo", "dpo"]


class EvalConfig(Section):
    """Held-out evaluation of the policy checkpoints against the baseline (InstructGPT's
    claim: the aligned policy is preferred over the SFT model)."""

    num_prompts: PositiveInt = 400
    sampling: SamplingConfig = Field(
        default_factory=lambda: SamplingConfig(temperature=1.0, max_new_tokens=24),
        description="How each checkpoint answers the eval prompts.",
    )
    checkpoints: list[EvalCheckpoint] = Field(
        default_factory=lambda: ["pretrain", "sft", "ppo", "dpo"],
        description="Policies to evaluate (those the run has).",
    )
    baseline: EvalCheckpoint = "sft"
    judges: list[str] = Field(
        default_factory=list,
        description="Extra gold judges: 'package.module:function' or an http(s) URL that "
        'takes {"prompts","responses"} and returns {"scores"}.',
    )
    confidence: Annotated[float, Field(gt=0.5, lt=1)] = 0.95
    bootstrap_resamples: Annotated[int, Field(ge=100)] = 2000
    lm_loss_texts: PositiveInt = Field(
        256, description="Held-out pre-training texts for the LM loss (the alignment tax)."
    )

    @field_validator("judges")
    @classmethod
    def _judge_specs(cls, specs: list[str]) -> list[str]:
        for spec in specs:
            if not (spec.startswith(("http://", "https://")) or _is_function_spec(spec)):
                raise ValueError(
                    f"judge {spec!r}: expected 'package.module:function' or an http(s) URL"
                )
        return specs


def _is_function_spec(spec: str) -> bool:
    module, sep, attr = spec.partition(":")
    parts = module.split(".")
    return bool(sep) and all(p.isidentifier() for p in parts) and attr.isidentifier()
