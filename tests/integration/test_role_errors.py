"""A rank that fails or dies is reported by its role and rank, not by its actor class."""

from __future__ import annotations

import os

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


def test_a_failing_or_dead_rank_is_named_by_role_and_rank(ray_cluster: None) -> None:
    pending_before = dict(group_module._OWNER)  # earlier failed jobs may have left some
    critic = ActorGroup(Worker, RolePlacement("critic", 2, num_cpus=0.1), distributed=False)
    try:
        assert critic.call(lambda a, r: a.echo.remote(10 + r)) == [10, 11]
        assert critic.map(lambda a: a.echo, [3, 4]) == [3, 4]
        with pytest.raises(
            RoleError, match=r"^critic \(rank 1 of 2\) failed: ValueError: a NaN in the batch$"
        ) as failed:
            critic.call(lambda a, _r: a.fail_on_rank_1.remote())
        assert not failed.value.died  # a method's error is not retried by a restart
        with pytest.raises(RoleError, match=r"^critic \(rank [01] of 2\) died: ") as died:
            wait(critic.submit(lambda a, _r: a.die.remote()))
        assert died.value.died
        assert dict(group_module._OWNER) == pending_before  # nothing kept for collected results
    finally:
        critic.shutdown()
