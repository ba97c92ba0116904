"""Ray plumbing: start the ranks of one role as Ray actors with explicit resources, wire their
process group, and fan calls out to them. Nothing here knows about models or losses."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError

Method = Callable[[Any], Any]
"""Picks a method of an actor handle, e.g. ``lambda a: a.train_ppo``; the group calls
``.remote`` on it, so callers never hold Ray handles."""

ROLE_ENV = "INSTRUCTRAY_ROLE"
DEFAULT_CALL_TIMEOUT_S = 1800.0
DEFAULT_START_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class _Owner:
    group: int
    role: str
    label: str
    """"role (rank i of n)", to name the rank in an error."""
    timeout_s: float


_OWNER: dict[str, _Owner] = {}
"""The owner of each pending result by its id (not the ref itself, which would keep the object
alive), so a failure or a timeout can name the role and rank."""


class RoleError(RuntimeError):
    """A rank of a role failed: its method raised, its process died (``died``), or it did not
    answer within its group's call timeout (``hung``)."""

    def __init__(
        self, message: str, died: bool = False, hung: bool = False, role: str | None = None
    ) -> None:
        super().__init__(message)
        self.died = died
        self.hung = hung
        self.role = role
        """The role of the rank that failed first (None when it cannot be told)."""

    @property
    def restartable(self) -> bool:
        """A lost or stuck process: starting the stage again from a train state can help;
        a method that raised (NaN, a bug) would only raise again."""
        return self.died or self.hung


@dataclass(frozen=True)
class RolePlacement:
    """Where one role's ranks run: count and Ray resources per rank."""

    name: str
    actors: int
    num_cpus: float
    num_gpus: float = 0.0
    env_vars: dict[str, str] = field(default_factory=dict)
    call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S
    """Longest wait for one call on a rank before it is taken as hung."""
    start_timeout_s: float = DEFAULT_START_TIMEOUT_S
    """Longest wait for the ranks' processes to start (Ray holds an actor back, without an
    error, while the cluster lacks the resources it asks for)."""
    resources: dict[str, float] = field(default_factory=dict)
    """Ray custom resources per rank (resources.<role>.resources): pins the role to nodes."""


class ActorGroup:
    """N ranks of one actor class; rank i gets ``(rank=i, world_size=N, **init_kwargs)``.

    Every call names a method with a selector (``lambda a: a.load``): ``call`` runs it on every
    rank with the same arguments, ``map`` with one shard per rank, ``call_rank0`` on rank 0;
    each waits (bounded by the placement's timeout) and its ``*_async`` twin returns refs for
    `wait`. Calls made through ``setup`` are replayed by ``restart``."""

    def __init__(
        self,
        actor_cls: type,
        placement: RolePlacement,
        distributed: bool,
        **init_kwargs: Any,
    ):
        self.placement = placement
        self.distributed = distributed
        self._remote_cls = ray.remote(actor_cls)
        self._options = {
            "num_cpus": placement.num_cpus,
            "num_gpus": placement.num_gpus,
            "resources": dict(placement.resources),
            # The role in each rank's environment too: `ps e`, psutil and the tests find it.
            "runtime_env": {"env_vars": {**placement.env_vars, ROLE_ENV: placement.name}},
        }
        self._init_kwargs = init_kwargs
        self._setup: list[tuple[Method, tuple[Any, ...]]] = []
        self._actors: list[Any] = []
        self._start()

    def _start(self) -> None:
        # Named by role and rank (`ray list actors`, the dashboard); unique across restarts.
        start = uuid.uuid4().hex[:6]
        self._actors = [
            self._remote_cls.options(
                **self._options, name=f"instructray-{self.placement.name}-{rank}-{start}"
            ).remote(rank=rank, world_size=self.placement.actors, **self._init_kwargs)
            for rank in range(self.placement.actors)
        ]
        self._wait_started()
        if self.distributed:
            addr, port = self.call_rank0(lambda a: a.free_address)
            self.call(lambda a: a.init_process_group, addr, port)

    def setup(self, method: Method, *args: Any) -> list[Any]:
        """`call`, remembered: a restart runs it again on the new ranks (loading weights)."""
        self._setup.append((method, args))
        return self.call(method, *args)

    def restart(self) -> None:
        """Kill every rank and start the role again as it was set up: for roles whose state is
        all in their setup calls (a frozen model, a rollout engine before its weight sync)."""
        self.shutdown(close_timeout_s=5.0)
        self._start()
        for method, args in self._setup:
            self.call(method, *args)

    @property
    def world_size(self) -> int:
        return len(self._actors)

    def _wait_started(self) -> None:
        p = self.placement
        ready = [a.__ray_ready__.remote() for a in self._actors]
        started, _ = ray.wait(ready, num_returns=len(ready), timeout=p.start_timeout_s)
        if len(started) < len(ready):
            self.shutdown(close_timeout_s=0)
            raise RoleError(
                f"{len(ready) - len(started)} of the {len(ready)} {p.name} ranks did not start "
                f"within {p.start_timeout_s:g} s (ray.start_timeout_s); each asks for "
                f"num_cpus={p.num_cpus:g}, num_gpus={p.num_gpus:g}"
                f"{f', resources={p.resources}' if p.resources else ''}: `ray status` shows whether "
                "the cluster has them (lower resources.*.num_cpus or add nodes)"
            )
        wait(self._owned(ready))  # a constructor that raised is reported here

    def _owned(self, refs: list[ray.ObjectRef]) -> list[ray.ObjectRef]:
        for rank, ref in enumerate(refs):
            name = self.placement.name
            label = f"{name} (rank {rank} of {self.world_size})"
            _OWNER[ref.hex()] = _Owner(id(self), name, label, self.placement.call_timeout_s)
        return refs

    def call_async(self, method: Method, *args: Any) -> list[ray.ObjectRef]:
        """``method`` on every rank with the same arguments, without waiting."""
        return self._owned([method(actor).remote(*args) for actor in self._actors])

    def call(self, method: Method, *args: Any) -> list[Any]:
        """``method`` on every rank with the same arguments; the results by rank."""
        return wait(self.call_async(method, *args))

    def map_async(self, method: Method, shards: Sequence[Any], *common: Any) -> list[ray.ObjectRef]:
        """``method(shard, *common)`` on rank i for the i-th shard, without waiting; fewer
        shards than ranks leave the last ranks idle."""
        if len(shards) > len(self._actors):
            raise ValueError(f"{len(shards)} shards for {len(self._actors)} ranks")
        return self._owned(
            [method(a).remote(s, *common) for a, s in zip(self._actors, shards, strict=False)]
        )

    def map(self, method: Method, shards: Sequence[Any], *common: Any) -> list[Any]:
        return wait(self.map_async(method, shards, *common))

    def call_rank0_async(self, method: Method, *args: Any) -> ray.ObjectRef:
        return self._owned([method(self._actors[0]).remote(*args)])[0]

    def call_rank0(self, method: Method, *args: Any) -> Any:
        return wait([self.call_rank0_async(method, *args)])[0]

    def shutdown(self, close_timeout_s: float = 60.0) -> None:
        """Let every rank `close` (bounded wait: a hung or dead one is killed all the same),
        then kill them."""
        closing = [a.close.remote() for a in self._actors if hasattr(a, "close")]
        if closing:
            ray.wait(closing, num_returns=len(closing), timeout=close_timeout_s)
        for actor in self._actors:
            ray.kill(actor)
        self._actors = []
        for key in [k for k, owner in _OWNER.items() if owner.group == id(self)]:
            del _OWNER[key]  # results nobody waited for (another rank had failed first)


def wait(refs: Sequence[ray.ObjectRef]) -> list[Any]:
    """The results of ``refs``; a failure is re-raised as `RoleError` naming role and rank, and
    so is a result not ready within the longest call timeout of the groups involved."""
    refs = list(refs)
    owners = [_OWNER.get(r.hex()) for r in refs]
    timeout_s = max((o.timeout_s for o in owners if o), default=DEFAULT_CALL_TIMEOUT_S)
    try:
        return ray.get(refs, timeout=timeout_s)
    except GetTimeoutError:
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        late = [o for r, o in zip(refs, owners, strict=True) if r not in ready]
        raise RoleError(
            f"{', '.join(o.label if o else 'an actor' for o in late)} did not answer within "
            f"{timeout_s:g} s (ray.call_timeout_s): taken as hung",
            hung=True,
            role=next((o.role for o in late if o), None),
        ) from None
    except RayError as err:
        owner = next((o for r, o in zip(refs, owners, strict=True) if o and _failed(r)), None)
        # A rank killed inside a collective also fails its peers' calls: any death counts.
        died = isinstance(err, RayActorError) or any(_died(r) for r in refs)
        what = "died" if isinstance(err, RayActorError) else "failed"
        # A method's own exception, without Ray's wrapping (the traceback stays chained).
        cause = getattr(err, "cause", None)
        detail = f"{type(cause).__name__}: {cause}" if isinstance(cause, Exception) else err
        raise RoleError(
            f"{owner.label if owner else 'an actor'} {what}: {detail}",
            died=died,
            role=owner.role if owner else None,
        ) from err
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
