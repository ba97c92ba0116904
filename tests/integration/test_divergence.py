"""A diverging job fails, naming where, instead of ending `succeeded` with NaN weights."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from instructray.actors.group import RoleError
from tests.integration.tiny_ppo import run_tiny_ppo

pytestmark = pytest.mark.e2e


def test_a_huge_learning_rate_stops_the_job_at_the_first_nan(
    tiny_run: Path, ray_cluster: None, tmp_path: Path
) -> None:
    with pytest.raises(RoleError, match="NonFiniteError"):
        run_tiny_ppo(
            tiny_run,
            tmp_path,
            f"model.reward_checkpoint={tiny_run / 'checkpoints' / 'rm'}",
            "ppo.iterations=4",
            "ppo.monitor.every=0",
            "ppo.policy_optim.lr=1e9",
        )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert re.match(
        r"ppo stage failed: RoleError: policy \(rank 0 of 1\) failed: NonFiniteError: PPO "
        r"policy \(rank 0\), optimizer step \d+: loss has 1 non-finite of 1 values",
        summary["error"],
    ), summary["error"]
    assert not (tmp_path / "checkpoints" / "ppo").exists()  # no checkpoint of NaNs
