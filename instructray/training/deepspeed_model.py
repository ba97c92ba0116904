"""DeepSpeed glue: its config, wrapping an HF model for training (DeepSpeed calls the wrapper an
"engine"; in instructray that word means a rollout engine only, so the wrapper is a `ds_model`),
gathering the full weights (ZeRO-3 partitions included) for checkpoints and weight sync."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from instructray.config import OptimConfig


@dataclass(frozen=True)
class DeepSpeedSpec:
    """How one trainable role is wrapped: per-rank micro batch, accumulation, ZeRO, dtype."""

    micro_batch_size: int
    grad_accum_steps: int
    zero_stage: int
    dtype: str
    optim: OptimConfig
    dropout: bool = True
    """False for RL (PPO, DPO): every dropout probability is set to 0 before training."""
    trainable_layers: int | None = None
    """Train only the top N transformer blocks (and the heads); None trains everything."""


def deepspeed_config(spec: DeepSpeedSpec) -> dict[str, Any]:
    return {
        "train_micro_batch_size_per_gpu": spec.micro_batch_size,
        "gradient_accumulation_steps": spec.grad_accum_steps,
        "gradient_clipping": spec.optim.grad_clip,
        "zero_optimization": {"stage": spec.zero_stage},
        "bf16": {"enabled": spec.dtype == "bfloat16"},
        # instructray passes torch's AdamW: it runs on CPU and GPU without compiled ops.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def init_distributed(rank: int, world_size: int, master_addr: str, master_port: int) -> None:
    """Join this process to its role's process group (gloo on CPU, nccl on GPU)."""
    os.environ.update(
        MASTER_ADDR=master_addr,
        MASTER_PORT=str(master_port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK="0",
        LOCAL_WORLD_SIZE="1",
    )
    import deepspeed

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)


def build_deepspeed_model(model: torch.nn.Module, spec: DeepSpeedSpec) -> Any:
    """Wrap ``model`` for DeepSpeed training with AdamW and linear warm-up to a constant lr."""
    import deepspeed

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec.optim.lr, weight_decay=spec.optim.weight_decay)
    warmup = spec.optim.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0
    )
    ds_model, *_ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=deepspeed_config(spec)
    )
    return ds_model


def full_state_dict(ds_model: Any, copy: bool = True) -> dict[str, torch.Tensor] | None:
    """Every rank must call this (ZeRO-3 gathers collectively); rank 0 gets CPU tensors,
    the other ranks get None. ``copy=False`` lets rank 0 hand out views of its live CPU
    parameters below ZeRO-3 (for a caller that only reads them before the next step)."""
    if ds_model.zero_optimization_stage() == 3:
        state = ds_model._zero3_consolidated_16bit_state_dict()
    else:
        state = ds_model.module.state_dict() if ds_model.global_rank == 0 else None
    if state is None:
        return None
    return {k: v.detach().to("cpu", copy=copy) for k, v in state.items()}


def current_lr(ds_model: Any) -> float:
    return float(ds_model.get_lr()[0])


def torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]
