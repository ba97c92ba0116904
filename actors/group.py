"""Ray plumbing: start the ranks of one role as Ray actors with explicit resources, wire their
process group, and fan calls out to them. Nothing here knows about models or losses."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError

_OWNER: dict[str, tuple[int, str]] = {}
"""(group, "role (rank i of n)") of each pending result by its id (not the ref itself, which
would keep the object alive), so a failure can name them."""


class RoleError(RuntimeError):
    """A rank of a role failed: its method raised, or its process died (``died``)."""

    def __init__(self, message: str, died: bool = False) -> None:
        super().__init__(message)
        self.died = died


@dataclass(frozen=True)
class RolePlacement:
    """Where one role's ranks run: count and Ray resources per rank."""

    name: str
    actors: int
    num_cpus: float
    num_gpus: float = 0.0
    env_vars: dict[str, str] = field(default_factory=dict)


class ActorGroup:
    """N ranks of one actor class; rank i gets ``(rank=i, world_size=N, **init_kwargs)``."""

    def __init__(
        self,
        actor_cls: type,
        placement: RolePlacement,
        distributed: bool,
        **init_kwargs: Any,
    ):
        self.placement = placement
        remote_cls = ray.remote(actor_cls).options(
            num_cpus=placement.num_cpus,
            num_gpus=placement.num_gpus,
            runtime_env={"env_vars": placement.env_vars} if placement.env_vars else None,
        )
        self.actors = [
            remote_cls.remote(rank=rank, world_size=placement.actors, **init_kwargs)
            for rank in range(placement.actors)
        ]
        if distributed:
            addr, port = ray.get(self.actors[0].free_address.remote())
            ray.get([a.init_process_group.remote(addr, port) for a in self.actors])

    @property
    def world_size(self) -> int:
        return len(self.actors)

    def _owned(self, refs: list[ray.ObjectRef]) -> list[ray.ObjectRef]:
        for rank, ref in enumerate(refs):
            _OWNER[ref.hex()] = (id(self), f"{self.placement.name} (rank {rank} of {len(refs)})")
        return refs

    def call(self, fn: Callable[[Any, int], ray.ObjectRef]) -> list[Any]:
        """``fn(actor, rank)`` on every rank at once; waits and returns the results by rank."""
        return wait(self.submit(fn))

    def submit(self, fn: Callable[[Any, int], ray.ObjectRef]) -> list[ray.ObjectRef]:
        """Like `call` without waiting, so several roles can work at the same time."""
        return self._owned([fn(actor, rank) for rank, actor in enumerate(self.actors)])

    def map_async(
        self, method: Callable[[Any], Any], shards: Sequence[Any], *common: Any
    ) -> list[ray.ObjectRef]:
        """``method(actor).remote(shard, *common)`` with one shard per rank, without waiting."""
        if len(shards) != len(self.actors):
            raise ValueError(f"{len(shards)} shards for {len(self.actors)} ranks")
        return self._owned(
            [method(a).remote(s, *common) for a, s in zip(self.actors, shards, strict=True)]
        )

    def map(self, method: Callable[[Any], Any], shards: Sequence[Any], *common: Any) -> list[Any]:
        return wait(self.map_async(method, shards, *common))

    def call_rank0(self, fn: Callable[[Any], ray.ObjectRef]) -> Any:
        return wait(self._owned([fn(self.actors[0])]))[0]

    def shutdown(self, close_timeout_s: float = 60.0) -> None:
        """Let every rank `close` (bounded wait: a hung or dead one is killed all the same),
        then kill them."""
        closing = [a.close.remote() for a in self.actors if hasattr(a, "close")]
        if closing:
            ray.wait(closing, num_returns=len(closing), timeout=close_timeout_s)
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        for key in [k for k, (group, _) in _OWNER.items() if group == id(self)]:
            del _OWNER[key]  # results nobody waited for (another rank had failed first)


def wait(refs: Sequence[ray.ObjectRef]) -> list[Any]:
    """The results of ``refs``; a failure is re-raised as `RoleError` naming role and rank."""
    refs = list(refs)
    try:
        return ray.get(refs)
    except RayError as err:
        owner = next((_OWNER[r.hex()][1] for r in refs if r.hex() in _OWNER and _failed(r)), None)
        # A rank killed inside a collective also fails its peers' calls: any death counts.
        died = isinstance(err, RayActorError) or any(_died(r) for r in refs)
        what = "died" if isinstance(err, RayActorError) else "failed"
        # A method's own exception, without Ray's wrapping (the traceback stays chained).
        cause = getattr(err, "cause", None)
        detail = f"{type(cause).__name__}: {cause}" if isinstance(cause, Exception) else err
        raise RoleError(f"{owner or 'an actor'} {what}: {detail}", died=died) from err
    finally:
        for ref in refs:
            _OWNER.pop(ref.hex(), None)


def _died(ref: ray.ObjectRef) -> bool:
    try:
        ray.get(ref, timeout=0)
    except RayActorError:
        return True
    except RayError:
        return False
    return False


def _failed(ref: ray.ObjectRef) -> bool:
    try:
        ray.get(ref, timeout=0)
    except GetTimeoutError:  # still running
        return False
    except RayError:
        return True
    return False


def resolved(values: Sequence[Any]) -> list[ray.ObjectRef]:
    """Refs to values already at hand (rollouts restored from a train state), to queue beside
    refs of work still in flight."""
    return [ray.put(value) for value in values]
