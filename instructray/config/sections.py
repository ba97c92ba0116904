"""Config sections shared by several stages: model, data, optimiser, sampling, rollout engine,
resources, Ray and output. Stage sections live in `stages.py`, the job in `job.py`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from instructray.config.paths import (
    BASE_MODEL,
    INPUT_PATH,
    MODEL_FOLDER,
    OUTPUT_FOLDER,
    SHM_FOLDER,
)

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]


class Section(BaseModel):
    # allow_inf_nan=False: `lr: .inf` or a JSON Infinity is a config error, not a diverged job.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelConfig(Section):
    base: Annotated[str, BASE_MODEL] = Field(
        "tiny", description="Preset (tiny, smollm2) or a local HF model folder."
    )
    dtype: Literal["float32", "bfloat16"] = "float32"
    sft_checkpoint: Annotated[str | None, MODEL_FOLDER] = Field(
        None, description="Existing SFT model for rm/ppo/dpo/eval when the sft stage is not run."
    )
    reward_checkpoint: Annotated[str | None, MODEL_FOLDER] = Field(
        None, description="Existing reward model for ppo/eval when the rm stage is not run."
    )
    max_prompt_tokens: PositiveInt = 32
    max_seq_len: PositiveInt = 96


class DataConfig(Section):
    task: Literal["rotten_tomatoes"] | None = Field(
        "rotten_tomatoes", description="Built-in task supplying any dataset not given as a file."
    )
    pretrain: Annotated[Path | None, INPUT_PATH] = Field(
        None, description='JSONL of {"text"} for pretrain and ptx.'
    )
    sft: Annotated[Path | None, INPUT_PATH] = Field(
        None, description='JSONL of {"prompt","response"}.'
    )
    preferences: Annotated[Path | None, INPUT_PATH] = Field(
        None,
        description='JSONL of {"prompt","chosen","rejected"}, {"prompt","ranked"} or HH-RLHF.',
    )
    prompts: Annotated[Path | None, INPUT_PATH] = Field(
        None, description='JSONL of {"prompt"} for PPO rollouts.'
    )
    eval_prompts: Annotated[Path | None, INPUT_PATH] = Field(
        None,
        description='JSONL of {"prompt"} for the eval stage and the PPO monitor; default: the '
        "task's held-out prompts, else a held-out slice of data.prompts that PPO never sees.",
    )
    preference_max_chars: PositiveInt = 1000
    eval_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1


class OptimConfig(Section):
    lr: PositiveFloat = 1e-4
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    warmup_steps: Annotated[int, Field(ge=0)] = 0
    grad_clip: PositiveFloat = 1.0


class SamplingConfig(Section):
    temperature: Annotated[float, Field(ge=0, description="0 = greedy decoding.")] = 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    max_new_tokens: PositiveInt = 24


class RolloutConfig(Section):
    """The engine that generates responses (PPO rollouts, the labeler's and eval samples)."""

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
    shm_dir: Annotated[str, SHM_FOLDER] = Field(
        "/dev/shm", description="Shared-memory folder for weight_sync=shm."
    )
    sync_bucket_mb: PositiveInt = Field(
        256, description="Bucket size of the object_store weight sync."
    )
    colocate: bool = Field(
        False,
        description="Share devices: policy, reference and engine on one GPU, the engine "
        "sleeping (weights and KV cache released) while the trainers run.",
    )


class RoleResources(Section):
    actors: PositiveInt = Field(
        1,
        description="Ranks of this role, one Ray actor each: data-parallel DeepSpeed ranks "
        "for a trained role, full copies sharing the batch for a frozen one.",
    )
    num_cpus: PositiveFloat = 0.5
    num_gpus: Annotated[float, Field(ge=0)] = 1.0
    resources: dict[str, PositiveFloat] = Field(
        default_factory=dict,
        description="Ray custom resources each rank asks for, e.g. {node_b: 1}: with nodes "
        "started as `ray start --resources='{\"node_b\": 100}'`, this pins the role to the "
        "nodes that have them. A resource no node has keeps the role from starting (it fails "
        "after ray.start_timeout_s); a local cluster (no ray.address) has none.",
    )

    @field_validator("resources")
    @classmethod
    def _custom_resources(cls, resources: dict[str, float]) -> dict[str, float]:
        for name in resources:
            if not name.strip():
                raise ValueError("a resource name must not be empty")
            if name in ("CPU", "GPU"):
                raise ValueError(f"{name} is not a custom resource: set num_cpus / num_gpus")
        return resources


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
    max_stage_restarts: Annotated[int, Field(ge=0)] = Field(
        2,
        description="When an actor's process dies (OOM kill, lost node), the stage stops "
        "all its actors and starts them again from its newest train state, at most this "
        "many times; then the job fails. A method that raises (NaN, a bug) is not retried.",
    )
    max_role_restarts: Annotated[int, Field(ge=0)] = Field(
        3,
        description="PPO: when a process of the reference, the reward model or (with "
        "ppo.async_queue 0) a rollout engine dies or hangs, that role alone starts again (an "
        "engine then gets the current policy weights and samples its lost batch again, same "
        "prompts and seeds) and the iteration is retried, at most this many times per stage "
        "run; past that, for the policy and critic, or for an engine in async mode, the "
        "stage restarts from its train state (max_stage_restarts).",
    )
    call_timeout_s: PositiveFloat = Field(
        1800.0,
        description="Longest wait for any one call on an actor (a training step, a batch of "
        "generation, loading a model). An actor that has not answered by then is taken as "
        "hung: the stage restarts as if it had died. Raise it for very large models.",
    )
    start_timeout_s: PositiveFloat = Field(
        600.0,
        description="Longest wait for a role's actor processes to start. Ray keeps an actor "
        "waiting, without an error, while the cluster lacks the CPUs/GPUs it asks for; after "
        "this the job fails and says so.",
    )


class OutputConfig(Section):
    run_dir: Annotated[Path, OUTPUT_FOLDER] = Field(
        Path("runs/latest"), description="The run folder (--out of instructray run)."
    )
    cache_dir: Annotated[Path | None, OUTPUT_FOLDER] = Field(
        None, description="Built base models; default ~/.cache."
    )
    tensorboard: bool = True
    train_state_every: Annotated[int, Field(ge=0)] = Field(
        25,
        description="Save a resumable train state (RUN_DIR/train_state/<stage>/) every N steps "
        "of a stage (PPO iterations; optimizer steps of the supervised stages); "
        "`instructray run --resume RUN_DIR` continues from the newest. 0: never (a resume "
        "then restarts the unfinished stage).",
    )
    train_states_kept: PositiveInt = Field(
        1,
        description="Newest train states kept per stage (each holds weights and optimizer "
        "state of every trainable role: about 12 bytes per parameter in fp32).",
    )
