"""The job: which stages run, on what, with which resources — and the cross-section checks
that refuse a configuration which could only fail once actors are running."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from instructray.config.sections import (
    DataConfig,
    ModelConfig,
    OutputConfig,
    RayConfig,
    ResourcesConfig,
    RolloutConfig,
    Section,
)
from instructray.config.stages import (
    DPOStageConfig,
    EvalConfig,
    LMStageConfig,
    PPOStageConfig,
    RMStageConfig,
)

Stage = Literal["pretrain", "sft", "rm", "ppo", "dpo", "eval"]
STAGE_ORDER: tuple[Stage, ...] = ("pretrain", "sft", "rm", "ppo", "dpo", "eval")


class JobConfig(Section):
    name: str = "instructray"
    seed: int = 0
    stages: list[Stage] = Field(default_factory=lambda: ["pretrain", "sft", "rm", "ppo"])
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    pretrain: LMStageConfig = LMStageConfig()
    sft: LMStageConfig = LMStageConfig()
    rm: RMStageConfig = RMStageConfig()
    ppo: PPOStageConfig = PPOStageConfig()
    dpo: DPOStageConfig = DPOStageConfig()
    eval: EvalConfig = EvalConfig()
    resources: ResourcesConfig = ResourcesConfig()
    rollout: RolloutConfig = RolloutConfig()
    ray: RayConfig = RayConfig()
    output: OutputConfig = OutputConfig()

    @model_validator(mode="after")
    def _stages_have_inputs(self) -> JobConfig:
        stages = set(self.stages)
        if len(stages) != len(self.stages):
            raise ValueError(f"stages lists a stage twice: {self.stages}")
        if not stages:
            raise ValueError("stages is empty; choose from " + ", ".join(STAGE_ORDER))
        task = self.data.task
        needs = {
            "pretrain": (task or self.data.pretrain, "data.pretrain (or data.task)"),
            "sft": (task or self.data.sft, "data.sft (or data.task)"),
            "ppo": (task or self.data.prompts, "data.prompts (or data.task)"),
            "eval": (
                task or self.data.eval_prompts or self.data.prompts,
                "data.eval_prompts or data.prompts (or data.task)",
            ),
            "dpo": (
                task or self.data.preferences,
                "data.preferences (or data.task, whose rm stage labels comparisons)",
            ),
        }
        for stage, (given, what) in needs.items():
            if stage in stages and not given:
                raise ValueError(f"stage {stage!r} needs {what}")
        if "rm" in stages and not (task or self.data.preferences):
            raise ValueError("stage 'rm' needs data.preferences (or data.task)")
        if "rm" in stages and self.rm.pmp_pairs and not task:
            raise ValueError(
                "rm.pmp_pairs pre-trains on the built-in task's reviews: set data.task or "
                "rm.pmp_pairs: 0"
            )
        has_rm = "rm" in stages or self.model.reward_checkpoint is not None
        if "ppo" in stages and not (has_rm or self.ppo.reward_function):
            raise ValueError(
                "stage 'ppo' needs a reward: add 'rm' to stages, set "
                "model.reward_checkpoint, or set ppo.reward_function"
            )
        if "eval" in stages:
            self._check_eval(stages, has_rm)
        if self.ppo.async_queue and self.rollout.colocate:
            raise ValueError(
                "ppo.async_queue needs the engine on its own device: it cannot "
                "overlap generation with training when rollout.colocate is true"
            )
        if self.ppo.rollout_batch_size < self.rollout.num_engines:
            raise ValueError(
                f"ppo.rollout_batch_size ({self.ppo.rollout_batch_size}) is smaller "
                f"than rollout.num_engines ({self.rollout.num_engines})"
            )
        for name, used in (
            ("ppo.tis_cap", self.ppo.tis_cap is not None),
            ("ppo.old_logprobs=engine", self.ppo.old_logprobs == "engine"),
        ):
            if used and self.rollout.backend != "vllm":
                raise ValueError(
                    f"{name} needs the engine's own log-probs: set rollout.backend "
                    f"to vllm or remove {name}"
                )
        if self.ppo.tis_cap is not None and self.ppo.old_logprobs == "engine":
            raise ValueError(
                "ppo.tis_cap corrects the gap between trainer and engine log-probs, which "
                "ppo.old_logprobs=engine removes (every weight would be 1): drop one of them"
            )
        if "dpo" in stages and "rm" not in stages and not self.data.preferences:
            raise ValueError(
                "stage 'dpo' needs comparisons: add 'rm' to stages (the built-in "
                "task labels them there) or set data.preferences"
            )
        return self

    def _check_eval(self, stages: set[str], has_rm: bool) -> None:
        if not (has_rm or self.data.task or self.eval.judges):
            raise ValueError(
                "stage 'eval' has nothing to judge with: it needs a reward model (rm stage or "
                "model.reward_checkpoint), the built-in task's judges (data.task), or "
                "eval.judges"
            )
        baseline = self.eval.baseline
        given = {"sft": self.model.sft_checkpoint is not None, "pretrain": True}
        if baseline not in stages and not given.get(baseline, False):
            raise ValueError(
                f"eval.baseline is {baseline!r}, which this job neither trains nor is given "
                "(add the stage, set model.sft_checkpoint, or choose another baseline)"
            )

    def ordered_stages(self) -> list[Stage]:
        """The requested stages in pipeline order (each reads the checkpoint before it)."""
        return [s for s in STAGE_ORDER if s in self.stages]
