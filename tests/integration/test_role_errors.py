"""A rank that fails or dies is reported by its role and rank, not by its actor class."""

from __future__ import annotations

import os
import time

import pytest

from instructray.actors import group as group_module
from instructray.actors.group import ActorGroup, RoleError, RolePlacement, wait


class Worker:
    def __init__(self, rank: int, world_size: int):
        self.rank = rank

    def echo(self, value: int) -> int:
        return value

    def fail_on_rank_1(self) -> int:
        if self.rank == 1:
            raise ValueError("a NaN in the batch")
        return self.rank

    def die(self) -> None:
        os._exit(1)

    def sleep(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds


def test_a_failing_or_dead_rank_is_named_by_role_and_rank(ray_cluster: None) -> None:
    pending_before = dict(group_module._OWNER)  # earlier failed jobs may have left some
    critic = ActorGroup(Worker, RolePlacement("critic", 2, num_cpus=0.1), distributed=False)
    try:
        assert critic.call(lambda a: a.echo, 10) == [10, 10]
        assert critic.map(lambda a: a.echo, [3, 4]) == [3, 4]
        assert critic.map(lambda a: a.echo, [5]) == [5]  # fewer shards: rank 1 stays idle
        with pytest.raises(ValueError, match="3 shards for 2 ranks"):
            critic.map(lambda a: a.echo, [1, 2, 3])
        with pytest.raises(
            RoleError, match=r"^critic \(rank 1 of 2\) failed: ValueError: a NaN in the batch$"
        ) as failed:
            critic.call(lambda a: a.fail_on_rank_1)
        assert not failed.value.died  # a method's error is not retried by a restart
        with pytest.raises(RoleError, match=r"^critic \(rank [01] of 2\) died: ") as died:
            wait(critic.call_async(lambda a: a.die))
        assert died.value.died
        assert dict(group_module._OWNER) == pending_before  # nothing kept for collected results
    finally:
        critic.shutdown()


def test_a_rank_that_does_not_answer_is_taken_as_hung(ray_cluster: None) -> None:
    """Alive but stuck (a deadlocked collective, a wedged driver call): the wait ends at the
    role's call timeout with the late rank named, and the stage may restart."""
    placement = RolePlacement("reference", 2, num_cpus=0.1, call_timeout_s=2.0)
    reference = ActorGroup(Worker, placement, distributed=False)
    try:
        assert reference.call(lambda a: a.sleep, 0.1) == [0.1, 0.1]  # within the timeout
        start = time.monotonic()
        with pytest.raises(
            RoleError,
            match=r"^reference \(rank 1 of 2\) did not answer within 2 s \(ray.call_timeout_s\)",
        ) as hung:
            reference.map(lambda a: a.sleep, [0.0, 60.0])
        waited = time.monotonic() - start
        assert 2.0 <= waited < 10.0
        assert hung.value.hung and not hung.value.died and hung.value.restartable
    finally:
        reference.shutdown(close_timeout_s=1.0)


def test_a_role_the_cluster_cannot_place_fails_with_what_it_asked_for(ray_cluster: None) -> None:
    """Ray keeps an actor that asks for more than the cluster has pending forever."""
    placement = RolePlacement("critic", 1, num_cpus=4096, start_timeout_s=1.0)
    start = time.monotonic()
    with pytest.raises(
        RoleError,
        match=r"^1 of the 1 critic ranks did not start within 1 s \(ray.start_timeout_s\); "
        r"each asks for num_cpus=4096, num_gpus=0",
    ) as unplaced:
        ActorGroup(Worker, placement, distributed=False)
    assert time.monotonic() - start < 10.0
    assert not unplaced.value.restartable  # more attempts would not find the CPUs either
