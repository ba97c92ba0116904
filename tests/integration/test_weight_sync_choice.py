"""Choosing the weight-sync transport from where the actors run (real Ray actors)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from instructray.actors.base import RankActor
from instructray.actors.group import ActorGroup, RolePlacement
from instructray.config import RolloutConfig
from instructray.orchestrator.weight_sync import choose_weight_sync


class LinearActor(RankActor):
    """A rank that holds a 4 MB model, enough for the free-space check."""

    def __init__(self, rank: int, world_size: int, seed: int):
        super().__init__(rank, world_size, seed)
        self.model = torch.nn.Linear(1000, 1000)


@pytest.fixture(scope="module")
def groups(ray_cluster):
    policy = ActorGroup(LinearActor, RolePlacement("policy", 1, 0.01), False, seed=0)
    engines = ActorGroup(LinearActor, RolePlacement("rollout", 2, 0.01), False, seed=0)
    yield policy, engines
    policy.shutdown()
    engines.shutdown()


def test_auto_picks_shared_memory_on_one_node(groups, tmp_path: Path) -> None:
    sync = choose_weight_sync(RolloutConfig(shm_dir=str(tmp_path)), *groups)
    assert sync.transport == "shm" and sync.shm_dir == str(tmp_path)


def test_auto_falls_back_to_the_object_store_without_shared_memory(groups, tmp_path) -> None:
    missing = str(tmp_path / "no-such-dir")
    assert choose_weight_sync(RolloutConfig(shm_dir=missing), *groups).transport == "object_store"
    with pytest.raises(ValueError, match="no-such-dir does not exist"):
        choose_weight_sync(RolloutConfig(weight_sync="shm", shm_dir=missing), *groups)


def test_object_store_is_taken_when_asked(groups, tmp_path: Path) -> None:
    cfg = RolloutConfig(weight_sync="object_store", shm_dir=str(tmp_path))
    assert choose_weight_sync(cfg, *groups).transport == "object_store"


def test_write_weights_then_remove(groups, tmp_path: Path) -> None:
    policy, _ = groups
    path = str(tmp_path / "w.safetensors")
    written = policy.call_rank0(lambda a: a.write_weights, path)
    assert written == policy.call_rank0(lambda a: a.weights_bytes) == 4_004_000
    policy.call_rank0(lambda a: a.remove_file, path)
    assert not Path(path).exists()
