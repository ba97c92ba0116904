"""What every rank of every role does the same way: pick its device, seed, join a process group.

Actor classes here are plain Python classes; `actors.group` turns them into Ray actors. Model
math lives in `instructray.algorithms` and `instructray.training`, never here.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path
from typing import Any, TypeVar

import torch

from instructray.models import disable_dropout, train_top_layers
from instructray.rollout.weights import write_file
from instructray.training.batches import TensorBatch
from instructray.training.deepspeed_model import (
    DeepSpeedSpec,
    build_deepspeed_model,
    full_state_dict,
    init_distributed,
)
from instructray.training.guard import check_finite, check_gradients
from instructray.training.train_state import rng_state, set_rng_state

DEEPSPEED_TAG = "deepspeed"
B = TypeVar("B", bound=TensorBatch)


class RankActor:
    def __init__(self, rank: int, world_size: int, seed: int, torch_threads: int | None = None):
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
        if torch_threads:
            torch.set_num_threads(torch_threads)
        torch.manual_seed(seed + rank)
        self.ds_model: Any = None
        self.spec: DeepSpeedSpec | None = None
        self.model: torch.nn.Module | None = None
        self.tokenizer: Any = None

    def free_address(self) -> tuple[str, int]:
        """An address and free port on this node for rank 0 of the role's process group."""
        host = socket.gethostbyname(socket.gethostname())
        with socket.socket() as sock:
            sock.bind(("", 0))
            return host, sock.getsockname()[1]

    def init_process_group(self, master_addr: str, master_port: int) -> None:
        init_distributed(self.rank, self.world_size, master_addr, master_port)

    def _attach(self, model: torch.nn.Module, spec: DeepSpeedSpec | None) -> None:
        """Trainable roles get a DeepSpeed-wrapped model; frozen ones a plain eval-mode module."""
        if spec is None:
            self.model = model.to(self.device).eval().requires_grad_(False)
            return
        model.config.use_cache = False
        if not spec.dropout:
            disable_dropout(model)
        if spec.trainable_layers is not None:
            train_top_layers(model, spec.trainable_layers)
        self.spec = spec
        self.ds_model = build_deepspeed_model(model, spec)
        self.model = self.ds_model.module
        self.model.train()

    def _on_device(self, batch: B) -> B:
        return batch.to(self.device)

    # -- optimizer steps that refuse NaN and inf (see instructray.training.guard) -------------
    def _where(self, what: str) -> str:
        return f"{what} (rank {self.rank}), optimizer step {self.ds_model.global_steps + 1}"

    def _backward(self, loss: torch.Tensor, what: str) -> None:
        check_finite({"loss": loss}, self._where(what))
        self.ds_model.backward(loss)

    def _step(self, what: str) -> None:
        """The optimizer step; at an accumulation boundary the gradients are checked first."""
        if self.ds_model.is_gradient_accumulation_boundary():
            check_gradients(self.ds_model.module.named_parameters(), self._where(what))
        self.ds_model.step()

    def state_dict(self, copy: bool = True) -> dict[str, torch.Tensor] | None:
        """Full weights on rank 0 (None elsewhere); all ranks must call it under ZeRO-3."""
        if self.ds_model is not None:
            return full_state_dict(self.ds_model, copy=copy)
        assert self.model is not None
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    # -- weight sync into rollout engines (see orchestrator.weight_sync) ----------------------
    def write_weights(self, path: str) -> int | None:
        """Rank 0 writes the full weights to one safetensors file (in shared memory) and
        returns its size; every rank must call it under ZeRO-3."""
        state = self.state_dict(copy=False)
        return None if state is None else write_file(state, path)

    def weights_bytes(self) -> int:
        """Bytes of the full model (ZeRO-3 partitioned parameters counted whole)."""
        assert self.model is not None
        return sum(
            getattr(p, "ds_numel", p.numel()) * p.element_size() for p in self.model.parameters()
        )

    def close(self) -> None:
        """Release what a Ray kill would leave behind; `ActorGroup.shutdown` calls it first."""

    def remove_file(self, path: str) -> None:
        Path(path).unlink(missing_ok=True)

    def host_info(self, directory: str) -> dict[str, Any]:
        """This actor's Ray node and the free bytes under ``directory`` (None if missing)."""
        import ray

        free = shutil.disk_usage(directory).free if Path(directory).is_dir() else None
        return {"node_id": ray.get_runtime_context().get_node_id(), "free_bytes": free}

    def save_checkpoint(self, out_dir: str) -> str | None:
        """Write an HF folder that loads in plain transformers; every rank must call it."""
        from instructray.models import save_hf_checkpoint

        state = self.state_dict()
        if self.rank != 0 or state is None:
            return None
        assert self.model is not None
        self.model.config.use_cache = True
        save_hf_checkpoint(self.model, self.tokenizer, out_dir, state_dict=state)
        return out_dir

    # -- train state: what continues this rank mid-stage (see instructray.training.train_state)
    def save_train_state(self, directory: str) -> None:
        """Weights, optimizer, ZeRO partitions and LR scheduler (DeepSpeed's checkpoint) and
        this rank's RNG; every rank must call it. Ranks on other nodes need ``directory`` on a
        shared file system."""
        self.ds_model.save_checkpoint(directory, tag=DEEPSPEED_TAG, save_latest=False)
        torch.save(rng_state(), Path(directory) / f"rng-rank{self.rank}.pt")

    def load_train_state(self, directory: str) -> int:
        """Restore `save_train_state`'s folder; returns the optimizer steps taken so far."""
        path, _client_state = self.ds_model.load_checkpoint(
            directory,
            tag=DEEPSPEED_TAG,
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
        )
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint of rank {self.rank} in {directory}")
        rng = Path(directory) / f"rng-rank{self.rank}.pt"
        set_rng_state(torch.load(rng, weights_only=False))
        return int(self.ds_model.global_steps)

    def load_tokenizer(self, path: str) -> None:
        from instructray.models import load_tokenizer

        self.tokenizer = load_tokenizer(path)
