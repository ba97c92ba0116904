"""kill -9 of a stateless role mid-PPO (the reference, the vLLM engine core): that role alone
starts again, the engine with the current policy weights (checked), the iteration is retried, and
the run's numbers equal an uninterrupted run's; no roll-back to a train state."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest

from instructray.run_log import read_metrics
from tests.integration.test_resume import (
    _logged,
    _processes,
    assert_same_after,
    assert_same_weights,
    ppo_sets,
    reference_killed_after_step_2,
)

pytestmark = pytest.mark.e2e


def test_ppo_restarts_a_dead_reference_and_a_dead_engine_in_place(
    tiny_run: Path, ray_cluster: None, tmp_path: Path
) -> None:
    sets = [
        *ppo_sets(tiny_run / "checkpoints" / "sft"),
        "ppo.async_queue=0",  # in place is exact only without batches in flight
        "ppo.monitor.every=0",  # the reference and the engine serve PPO alone
    ]
    reference, run_dir, driver = reference_killed_after_step_2(sets, tmp_path)
    driver.until(lambda: _logged(run_dir, "ppo", 4), "ppo step 4")
    (engine_core,) = _processes("VLLM::EngineCore")
    os.kill(engine_core, signal.SIGKILL)
    assert driver.proc.wait(timeout=600) == 0, driver.log.read_text()[-3000:]

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "succeeded"
    assert summary.get("resumes", []) == []  # no roll-back to a train state
    assert not [w for w in summary["warnings"] if w["kind"] == "actor_died"]
    restarted = [w["message"] for w in summary["warnings"] if w["kind"] == "role_restarted"]
    assert [m.split(" died: ")[0] for m in restarted] == [
        "reference (rank 0 of 1)",
        "rollout (rank 0 of 1)",
    ]
    assert "restart 1 of 3: the reference role started again in place" in restarted[0]
    assert "restart 2 of 3: the rollout role started again in place" in restarted[1]
    gap = re.search(r"current policy weights synced \(log-prob gap ([0-9.e+-]+)\)", restarted[1])
    assert gap is not None and float(gap.group(1)) < 1e-5  # fp32: the engine has the weights

    assert summary["stages"]["ppo"]["steps"] == 6
    assert_same_after(reference, run_dir, "ppo", after=0)  # every step, bit for bit
    counts = [r["role_restarts"] for r in read_metrics(run_dir, "ppo")]
    assert counts == sorted(counts) and counts[0] == 0 and counts[-1] == 2
    for part in ("ppo", "ppo_critic"):
        assert_same_weights(reference / "checkpoints" / part, run_dir / "checkpoints" / part)
