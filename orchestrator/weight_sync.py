"""Weight sync after each PPO update: the policy's new weights into every rollout engine.

The transport is chosen by placement. Same node: rank 0 writes one safetensors file to shared
memory and each engine reloads from it (no serialisation, no RPC payload). Otherwise: rank 0's
gathered state dict goes through Ray's object store and reaches the engine in buckets."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from instructray.actors.group import ActorGroup, wait
from instructray.config import RolloutConfig

HEADROOM = 1.5
"""Free shared memory needed, as a multiple of the weights' size."""


@dataclass(frozen=True)
class WeightSync:
    transport: str
    """``shm`` or ``object_store``."""
    shm_dir: str = "/dev/shm"
    colocate: bool = False
    reason: str | None = None
    """Why ``auto`` fell back to ``object_store`` (e.g. the engines run on another node)."""

    def __call__(self, policy: ActorGroup, engines: ActorGroup) -> dict[str, float]:
        """Push the policy's current weights; returns rank-0 engine timings."""
        if self.colocate:
            engines.call(lambda a: a.wake_up)
        if self.transport == "shm":
            return self._through_shared_memory(policy, engines)
        state_refs = policy.call_async(lambda a: a.state_dict)
        infos = engines.call(lambda a: a.load_weights, state_refs[0])
        wait(state_refs)
        return infos[0]

    def _through_shared_memory(self, policy: ActorGroup, engines: ActorGroup) -> dict[str, float]:
        path = str(Path(self.shm_dir) / f"instructray-weights-{uuid.uuid4().hex}.safetensors")
        try:
            written = policy.call(lambda a: a.write_weights, path)[0]
            infos = engines.call(lambda a: a.load_weights_file, path)
        finally:
            policy.call_rank0(lambda a: a.remove_file, path)
        return infos[0] | {"sync_bytes": float(written)}


def choose_weight_sync(cfg: RolloutConfig, policy: ActorGroup, engines: ActorGroup) -> WeightSync:
    """``cfg.weight_sync``, with ``auto`` resolved from where the actors run."""
    transport, problem = cfg.weight_sync, None
    if transport != "object_store":
        problem = _shared_memory_problem(cfg.shm_dir, policy, engines)
        if problem and transport == "shm":
            raise ValueError(f"rollout.weight_sync=shm is not possible here: {problem}")
        transport = "object_store" if problem else "shm"
    return WeightSync(transport, cfg.shm_dir, cfg.colocate, reason=problem)


def _shared_memory_problem(shm_dir: str, policy: ActorGroup, engines: ActorGroup) -> str | None:
    """Why the shm transport cannot serve these actors, or None when it can."""
    infos: list[dict[str, Any]] = wait(
        [
            policy.call_rank0_async(lambda a: a.host_info, shm_dir),
            *engines.call_async(lambda a: a.host_info, shm_dir),
        ]
    )
    writer, readers = infos[0], infos[1:]
    if any(r["node_id"] != writer["node_id"] for r in readers):
        return "the policy's rank 0 and the rollout engines run on different nodes"
    if writer["free_bytes"] is None:
        return f"{shm_dir} does not exist on the policy's node"
    weights = policy.call_rank0(lambda a: a.weights_bytes)
    if writer["free_bytes"] < HEADROOM * weights:
        return (
            f"{shm_dir} has {writer['free_bytes'] / 1e9:.2f} GB free, the weights need "
            f"{HEADROOM * weights / 1e9:.2f} GB (raise the container's shm size, e.g. "
            "docker-compose shm_size, or set rollout.weight_sync=object_store)"
        )
    return None
