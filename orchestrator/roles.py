"""Starting each role's actors from the job config: placement, engine spec, weights."""

from __future__ import annotations

import math
import os
from typing import Literal

import ray

from instructray.actors.group import ActorGroup, RolePlacement
from instructray.actors.hf_rollout import HFRolloutActor
from instructray.actors.policy import CausalLMActor
from instructray.actors.value import ValueModelActor
from instructray.config import JobConfig, OptimConfig
from instructray.training.deepspeed_model import DeepSpeedSpec

Role = Literal["policy", "critic", "reference", "reward", "rollout"]
COLOCATED_ROLES = ("policy", "reference", "rollout")


def init_ray(cfg: JobConfig) -> None:
    """Connect to ``cfg.ray.address`` or start a local cluster sized for every role at once."""
    if ray.is_initialized():
        return
    env = {
        "TOKENIZERS_PARALLELISM": "false",
        # Actor logs go to the job's log: keep them to what a user reads.
        "TRANSFORMERS_VERBOSITY": "error",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "PYTHONWARNINGS": "ignore::FutureWarning",
    }
    # Inside `ray job submit` Ray sets RAY_ADDRESS: join that cluster instead of starting one.
    # (DS_ACCELERATOR is set per actor by `placement`, which knows whether it got a GPU.)
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address is not None:
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=True)
        return
    roles = [
        getattr(cfg.resources, r) for r in ("policy", "critic", "reference", "reward", "rollout")
    ]
    needed = math.ceil(sum(r.num_cpus * r.actors for r in roles))
    ray.init(
        num_cpus=cfg.ray.num_cpus or max(os.cpu_count() or 1, needed),
        include_dashboard=False,
        runtime_env={"env_vars": env},
        log_to_driver=True,
    )


def uses_gpu(cfg: JobConfig) -> bool:
    if cfg.resources.device != "auto":
        return cfg.resources.device == "cuda"
    return ray.cluster_resources().get("GPU", 0) > 0


def role_size(cfg: JobConfig, role: Role) -> int:
    """How many actors a role runs: the one place that decides it, for placement and for the
    batch arithmetic of the stages (rollout engines come from rollout.num_engines)."""
    if role == "rollout":
        return cfg.rollout.num_engines
    return getattr(cfg.resources, role).actors


def solo_threads(cfg: JobConfig, role: Role) -> int | None:
    """Torch threads per rank for a role that trains alone in its stage (pretrain, SFT, RM).

    Ray gives each rank its ``num_cpus`` worth of threads (1 by default), which in the stages
    where nothing else runs leaves the rest of the CPUs idle: SmolLM2 SFT on 2 cores ran on
    one. Here the cluster's CPUs (at most this machine's) are split over the role's ranks.
    ``resources.torch_threads`` wins when set; on GPUs the default is kept.
    """
    if cfg.resources.torch_threads or uses_gpu(cfg):
        return cfg.resources.torch_threads
    cpus = min(int(ray.cluster_resources().get("CPU", 1)), os.cpu_count() or 1)
    return max(1, cpus // role_size(cfg, role))


def placement(cfg: JobConfig, role: Role) -> RolePlacement:
    res = getattr(cfg.resources, role)
    gpu = uses_gpu(cfg)
    env = {} if gpu else {"DS_ACCELERATOR": "cpu"}
    actors = role_size(cfg, role)
    num_gpus = res.num_gpus if gpu else 0.0
    if role == "rollout":
        num_gpus *= cfg.rollout.tensor_parallel_size
        if not gpu:
            env["VLLM_CPU_KVCACHE_SPACE"] = f"{cfg.rollout.cpu_kv_cache_gib:g}"
    if gpu and cfg.rollout.colocate and role in COLOCATED_ROLES:
        # Policy, reference and engine share each GPU; the engine sleeps while others run.
        num_gpus = 1.0 / len(COLOCATED_ROLES)
    return RolePlacement(
        name=role,
        actors=actors,
        num_cpus=res.num_cpus,
        num_gpus=num_gpus,
        resources=dict(res.resources),
        env_vars=env,
        call_timeout_s=cfg.ray.call_timeout_s,
        start_timeout_s=cfg.ray.start_timeout_s,
    )


def deepspeed_spec(
    cfg: JobConfig,
    batch_size: int,
    micro_batch_size: int,
    world_size: int,
    optim: OptimConfig,
    what: str,
    dropout: bool = True,
    trainable_layers: int | None = None,
) -> DeepSpeedSpec:
    """Per-rank micro batch and accumulation steps so one optimizer step sees ``batch_size``."""
    if batch_size % world_size:
        raise ValueError(
            f"{what}: batch size {batch_size} is not divisible by the "
            f"{world_size} data-parallel ranks"
        )
    per_rank = batch_size // world_size
    micro = min(micro_batch_size, per_rank)
    if per_rank % micro:
        raise ValueError(
            f"{what}: per-rank batch {per_rank} is not a multiple of the micro batch {micro}"
        )
    return DeepSpeedSpec(
        micro_batch_size=micro,
        grad_accum_steps=per_rank // micro,
        # One rank has nothing to partition; ZeRO-1/2 would still copy every gradient
        # into flat buffers (measured on SmolLM2, 1 core: optimizer step 1.2 s vs 0.4 s).
        zero_stage=cfg.resources.zero_stage if world_size > 1 else 0,
        dtype=cfg.model.dtype,
        optim=optim,
        dropout=dropout,
        trainable_layers=trainable_layers,
    )


def _start(
    cfg: JobConfig,
    actor_cls: type,
    role: Role,
    distributed: bool,
    torch_threads: int | None = None,
) -> ActorGroup:
    return ActorGroup(
        actor_cls,
        placement(cfg, role),
        distributed=distributed,
        seed=cfg.seed,
        torch_threads=torch_threads or cfg.resources.torch_threads,
    )


def _start_model(
    cfg: JobConfig,
    actor_cls: type,
    role: Role,
    path: str,
    spec: DeepSpeedSpec | None,
    torch_threads: int | None,
) -> ActorGroup:
    group = _start(cfg, actor_cls, role, spec is not None, torch_threads)
    group.setup(lambda a: a.load, path, cfg.model.dtype, spec)
    return group


def start_causal_lm(
    cfg: JobConfig,
    role: Role,
    path: str,
    spec: DeepSpeedSpec | None,
    torch_threads: int | None = None,
) -> ActorGroup:
    """Policy ranks (with an optimizer) or the frozen reference (spec None)."""
    return _start_model(cfg, CausalLMActor, role, path, spec, torch_threads)


def start_value_model(
    cfg: JobConfig,
    role: Role,
    path: str,
    spec: DeepSpeedSpec | None,
    torch_threads: int | None = None,
) -> ActorGroup:
    """Reward-model or critic ranks; a causal-LM checkpoint gets a fresh scalar head."""
    return _start_model(cfg, ValueModelActor, role, path, spec, torch_threads)


def start_rollout(cfg: JobConfig, path: str) -> ActorGroup:
    """``rollout.num_engines`` engines (vLLM, or the HF generate() fallback), each a full copy."""
    if cfg.rollout.backend == "hf":
        group = _start(cfg, HFRolloutActor, "rollout", distributed=False)
        group.setup(lambda a: a.load, path, cfg.model.dtype)
        return group
    from instructray.actors.vllm_rollout import VLLMRolloutActor

    engine = cfg.rollout.model_copy(update={"seed": cfg.seed})
    group = _start(cfg, VLLMRolloutActor, "rollout", distributed=False)
    group.setup(lambda a: a.load, path, cfg.model.dtype, engine)
    return group
