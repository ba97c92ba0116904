"""The one typed configuration of an instructray job, loaded from YAML.

Every section is a pydantic model with ``extra="forbid"`` so a typo in a key is an error that
names the key, never a silently ignored setting. `load_config` applies ``--set a.b=value``
overrides before validation and turns pydantic's errors into `ConfigError` lines of the form
``<source>: <field.path>: <what is wrong> (got <value>)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Stage = Literal["pretrain", "sft", "rm", "ppo", "dpo"]
STAGE_ORDER: tuple[Stage, ...] = ("pretrain", "sft", "rm", "ppo", "dpo")

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]


class ConfigError(ValueError):
    """A job configuration that cannot run; the message lists every problem found."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    base: str = Field("tiny", description="Preset (tiny, smollm2) or a local HF model folder.")
    dtype: Literal["float32", "bfloat16"] = "float32"
    sft_checkpoint: str | None = Field(
        None, description="Existing SFT model for rm/ppo/dpo when the sft stage is not run."
    )
    reward_checkpoint: str | None = Field(
        None, description="Existing reward model for ppo when the rm stage is not run."
    )
    max_prompt_tokens: PositiveInt = 32
    max_seq_len: PositiveInt = 96


class DataConfig(Section):
    task: Literal["rotten_tomatoes"] | None = Field(
        "rotten_tomatoes", description="Built-in task supplying any dataset not given as a file."
    )
    pretrain: Path | None = Field(None, description='JSONL of {"text"} for pretrain and ptx.')
    sft: Path | None = Field(None, description='JSONL of {"prompt","response"}.')
    preferences: Path | None = Field(
        None,
        description='JSONL of {"prompt","chosen","rejected"}, {"prompt","ranked"} or HH-RLHF.',
    )
    prompts: Path | None = Field(None, description='JSONL of {"prompt"} for PPO rollouts.')
    preference_max_chars: PositiveInt = 1000
    eval_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1


class OptimConfig(Section):
    lr: PositiveFloat = 1e-4
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    warmup_steps: Annotated[int, Field(ge=0)] = 0
    grad_clip: PositiveFloat = 1.0


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
    labeler: LabelerConfig = LabelerConfig()
    optim: OptimConfig = OptimConfig(lr=5e-5)


class KLConfig(Section):
    estimator: Literal["k1", "k2", "k3"] = "k1"
    init_coef: Annotated[float, Field(ge=0)] = 0.05
    adaptive: bool = False
    target: PositiveFloat = 6.0
    horizon: PositiveInt = 10000


class SamplingConfig(Section):
    temperature: Annotated[float, Field(ge=0, description="0 = greedy decoding.")] = 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    max_new_tokens: PositiveInt = 24


class RolloutConfig(Section):
    """The engine that generates responses (PPO rollouts and the labeler's samples)."""

    backend: Literal["vllm", "hf"] = Field(
        "vllm", description="vllm (default) or hf: transformers generate(), the fallback."
    )
    num_engines: PositiveInt = Field(1, description="Data-parallel engines, one actor each.")
    tensor_parallel_size: PositiveInt = 1
    max_model_len: PositiveInt | None = Field(None, description="Default: the model's own.")
    gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)] = 0.3
    cpu_kv_cache_gib: PositiveFloat = Field(1.0, description="KV cache of vLLM on CPU.")
    enforce_eager: bool = True
    seed: int = 0
    weight_sync: Literal["auto", "shm", "object_store"] = Field(
        "auto",
        description="How new policy weights reach the engines: shm (one safetensors file in "
        "shared memory, same node only), object_store (buckets through Ray, any node), or "
        "auto: shm when the policy's rank 0 and every engine share a node with room in "
        "shm_dir, else object_store.",
    )
    shm_dir: str = Field("/dev/shm", description="Shared-memory folder for weight_sync=shm.")
    sync_bucket_mb: PositiveInt = Field(
        256, description="Bucket size of the object_store weight sync."
    )
    colocate: bool = Field(
        False,
        description="Share devices: policy, reference and engine on one GPU, the engine "
        "sleeping (weights and KV cache released) while the trainers run.",
    )


class PPOStageConfig(Section):
    iterations: PositiveInt = 20
    rollout_batch_size: PositiveInt = 32
    samples_per_prompt: PositiveInt = 1
    sampling: SamplingConfig = SamplingConfig()
    ppo_epochs: PositiveInt = 2
    mini_batch_size: PositiveInt = 16
    micro_batch_size: PositiveInt = 16
    advantage_estimator: str = "gae"
    gamma: Fraction = 1.0
    lam: Fraction = 0.95
    whiten_advantages: bool = True
    clip_eps: PositiveFloat = 0.2
    value_clip_eps: PositiveFloat | None = 0.2
    value_loss_coef: PositiveFloat = 1.0
    entropy_coef: Annotated[float, Field(ge=0)] = 0.0
    ptx_coef: Annotated[float, Field(ge=0)] = 0.0
    ptx_batch_size: PositiveInt = 8
    reward_clip: PositiveFloat | None = 10.0
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
    policy_optim: OptimConfig = OptimConfig(lr=2e-5)
    critic_optim: OptimConfig = OptimConfig(lr=5e-5)

    @model_validator(mode="after")
    def _batches_divide(self) -> PPOStageConfig:
        rollouts = self.rollout_batch_size * self.samples_per_prompt
        if rollouts % self.mini_batch_size:
            raise ValueError(
                f"rollout_batch_size*samples_per_prompt ({rollouts}) must be a multiple of "
                f"mini_batch_size ({self.mini_batch_size})"
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


class RoleResources(Section):
    actors: PositiveInt = Field(1, description="Data-parallel ranks (one Ray actor each).")
    num_cpus: PositiveFloat = 0.5
    num_gpus: Annotated[float, Field(ge=0)] = 1.0


class ResourcesConfig(Section):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    zero_stage: Annotated[int, Field(ge=0, le=3)] = Field(
        2, description="DeepSpeed ZeRO stage of multi-rank roles (a one-rank role runs stage 0)."
    )
    torch_threads: PositiveInt | None = None
    policy: RoleResources = RoleResources()
    critic: RoleResources = RoleResources()
    reference: RoleResources = RoleResources()
    reward: RoleResources = RoleResources()
    rollout: RoleResources = RoleResources()


class RayConfig(Section):
    address: str | None = Field(None, description="Ray cluster address; None starts a local one.")
    num_cpus: PositiveInt | None = Field(None, description="CPUs of a local cluster.")


class OutputConfig(Section):
    run_dir: Path = Path("runs/latest")
    cache_dir: Path | None = Field(None, description="Built base models; default ~/.cache.")
    tensorboard: bool = True


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
        if "ppo" in stages and "rm" not in stages and not self.model.reward_checkpoint:
            raise ValueError(
                "stage 'ppo' needs a reward model: add 'rm' to stages or set "
                "model.reward_checkpoint"
            )
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

    def ordered_stages(self) -> list[Stage]:
        """The requested stages in pipeline order (each reads the checkpoint before it)."""
        return [s for s in STAGE_ORDER if s in self.stages]


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a","b","c"], value parsed as YAML so numbers/bools/lists work)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set ppo.iterations=5")
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else None


def set_dotted(data: dict[str, Any], path: list[str], value: Any) -> None:
    """``data[a][b][c] = value`` for ``path == [a, b, c]``, creating sections on the way."""
    node = data
    for i, part in enumerate(path[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(path[: i + 1])} is a value, not a section")
        node = child
    node[path[-1]] = value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        try:
            set_dotted(data, path, value)
        except ConfigError as err:
            raise ConfigError(f"--set {item!r}: {err}") from None
    return data


def validation_problems(err: ValidationError) -> list[tuple[str, str]]:
    """(dotted field path, what is wrong with the value given) for each pydantic error."""
    problems = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "<root>"
        message = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; see configs/tiny.yaml for all keys)"
        got = e.get("input")
        if not isinstance(got, dict | list) and e["type"] != "missing":
            message += f" (got {got!r})"
        problems.append((where, message))
    return problems


def _format_errors(source: str, err: ValidationError) -> str:
    lines = [f"invalid configuration ({err.error_count()} problem(s)):"]
    lines += [f"  {source}: {where}: {message}" for where, message in validation_problems(err)]
    return "\n".join(lines)


def config_from_dict(data: dict[str, Any], source: str = "<config>") -> JobConfig:
    try:
        return JobConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(source, err)) from None


def load_config(path: Path | str | None, overrides: list[str] | None = None) -> JobConfig:
    """Read a YAML job config (or the embedded defaults when path is None) and validate it."""
    data: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path}: cannot read config: {err}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(
                f"{path}: top level must be a mapping of sections, got {type(loaded).__name__}"
            )
        data = loaded or {}
    return config_from_dict(apply_overrides(data, overrides or []), source)


def dump_config(cfg: JobConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
