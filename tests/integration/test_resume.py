"""kill -9 of the driver mid-stage, `instructray run --resume`, and the same numbers as an
uninterrupted run of the same seed: per-step metrics after the resume point, step counts, and
the final weights (fp32 on CPU: bit-exact in our runs; asserted to 1e-6)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from instructray import cli
from instructray.actors.group import ROLE_ENV
from instructray.config import load_config
from instructray.orchestrator.pipeline import run_job
from instructray.run_log import read_metrics

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
# Timings, throughput and sync measurements differ between any two runs; a faulty run counts
# its in-place restarts.
UNEQUAL = (
    "time_",
    "tokens_per_s",
    "examples_per_s",
    "sync_seconds",
    "sync_reload_seconds",
    "role_restarts",
)


def _driver_env() -> dict[str, str]:
    """The killed driver joins the session's Ray cluster: a second local cluster on one box
    interferes with the first."""
    import ray

    return os.environ | {"RAY_ADDRESS": ray.get_runtime_context().gcs_address}


def _logged(run_dir: Path, stage: str, step: int) -> bool:
    try:
        return any(r["step"] >= step for r in read_metrics(run_dir, stage))
    except ValueError:  # a line being written
        return False


class Driver:
    """`instructray run` in a subprocess on the session's cluster, to be killed with SIGKILL."""

    def __init__(self, sets: list[str], run_dir: Path) -> None:
        argv = [sys.executable, "-m", "instructray.cli", "run", str(REPO / "configs/tiny.yaml")]
        argv += [arg for s in sets for arg in ("--set", s)] + ["--out", str(run_dir)]
        self.log = run_dir.parent / f"{run_dir.name}.log"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                argv, env=_driver_env(), stdout=out, stderr=subprocess.STDOUT
            )

    def until(self, condition: Callable[[], bool], what: str, timeout_s: float = 600) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                tail = self.log.read_text()[-3000:]
                raise AssertionError(f"no {what}: the driver ended or timed out:\n{tail}")
            time.sleep(0.1)

    def kill_9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        _wait_for_its_actors_to_go()


def run_and_kill(sets: list[str], run_dir: Path, stage: str, step: int) -> None:
    """The driver killed with SIGKILL once ``stage`` logged ``step``."""
    driver = Driver(sets, run_dir)
    driver.until(lambda: _logged(run_dir, stage, step), f"{stage} step {step}")
    driver.kill_9()


def _wait_for_its_actors_to_go(timeout_s: float = 120) -> None:
    import ray

    deadline = time.monotonic() + timeout_s
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"]:
        assert time.monotonic() < deadline, "the killed driver's actors kept their CPUs"
        time.sleep(0.5)


def _comparable(row: dict) -> dict:
    return {
        k: v
        for k, v in row.items()
        if isinstance(v, int | float) and k != "time" and not k.startswith(UNEQUAL)
    }


def assert_same_after(reference: Path, resumed: Path, stage: str, after: int) -> None:
    ref = {r["step"]: _comparable(r) for r in read_metrics(reference, stage)}
    got = [r for r in read_metrics(resumed, stage)]
    assert [r["step"] for r in got] == sorted(ref), "each step once, in order"
    later = [_comparable(r) for r in got if r["step"] > after]
    assert later, f"no {stage} step after {after}: the resumed run did not train"
    for row in later:
        assert row == pytest.approx(ref[row["step"]], rel=1e-6, abs=1e-9), row["step"]


def assert_same_weights(reference: Path, resumed: Path) -> None:
    (ref_file,) = reference.glob("*.safetensors")
    (got_file,) = resumed.glob("*.safetensors")
    ref, got = load_file(ref_file), load_file(got_file)
    assert ref.keys() == got.keys()
    for name, tensor in ref.items():
        torch.testing.assert_close(got[name], tensor, rtol=1e-6, atol=1e-7, msg=name)


def _resume(run_dir: Path) -> dict:
    assert cli.main(["run", "--resume", str(run_dir)]) == 0
    return json.loads((run_dir / "summary.json").read_text())


def _killed_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def ppo_sets(sft: Path) -> list[str]:
    return [
        "stages=[ppo]",
        f"model.sft_checkpoint={sft}",
        # A scripted reward: the critic is then the only value-model actor (the one killed).
        "ppo.reward_function=tests.integration.test_tiny_job:words_per_response",
        "output.tensorboard=false",
        "output.train_state_every=2",
        "ppo.iterations=6",
        "ppo.rollout_batch_size=32",
        # Async: the batch of iteration k+1 is generated during iteration k and must be saved.
        "ppo.async_queue=1",
        "ppo.monitor.every=3",
        "ppo.monitor.num_prompts=16",
    ]


def _processes(title: str) -> list[int]:
    """Pids of the processes whose title (Ray's ray::Class, vLLM's VLLM::EngineCore) starts
    with ``title``."""
    return [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if (p.info["cmdline"] or [""])[0].startswith(title)
    ]


def _actor_pid(role: str) -> int:
    """The pid of the one actor process of ``role`` (each rank has INSTRUCTRAY_ROLE set)."""
    (pid,) = [pid for pid in _processes("ray::") if _role_of(pid) == role]
    return pid


def _role_of(pid: int) -> str | None:
    try:
        return psutil.Process(pid).environ().get(ROLE_ENV)
    except psutil.Error:  # gone meanwhile
        return None


def _restarted(run_dir: Path, count: int) -> bool:
    """``count`` stateless roles restarted in place so far."""
    warnings = _summary(run_dir).get("warnings", [])
    return sum(w["kind"] == "role_restarted" for w in warnings) >= count


def _summary(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def _restarted_past(run_dir: Path, restarts: int, step: int) -> bool:
    """The stage restarted ``restarts`` times and has logged ``step`` since."""
    return len(_summary(run_dir).get("resumes", [])) >= restarts and _logged(run_dir, "ppo", step)


def reference_killed_after_step_2(sets: list[str], tmp_path: Path) -> tuple[Path, Path, Driver]:
    """An uninterrupted PPO run (``reference``), then the same run in a driver of its own whose
    reference actor gets kill -9 after step 2, followed until it restarted in place."""
    reference, run_dir = tmp_path / "reference", tmp_path / "faulty"
    run_job(load_config(REPO / "configs" / "tiny.yaml", [*sets, f"output.run_dir={reference}"]))
    driver = Driver(sets, run_dir)
    driver.until(lambda: _logged(run_dir, "ppo", 2), "ppo step 2")
    os.kill(_actor_pid("reference"), signal.SIGKILL)
    driver.until(lambda: _restarted(run_dir, 1), "a restart of the reference")
    return reference, run_dir, driver


def test_ppo_survives_dead_reference_critic_engine_and_kill_9_of_its_driver(
    tiny_run: Path, ray_cluster: None, tmp_path: Path
) -> None:
    """Async PPO: the reference restarts in place (the batch in flight is still good); a
    trainer or an engine rolls the stage back (the in-flight batch comes from the train
    state); the driver resumes. Every step ends as in an uninterrupted run."""
    reference, run_dir, driver = reference_killed_after_step_2(
        ppo_sets(tiny_run / "checkpoints" / "sft"), tmp_path
    )
    driver.until(lambda: _logged(run_dir, "ppo", 3), "ppo step 3")
    (critic,) = _processes("ray::ValueModelActor")
    os.kill(critic, signal.SIGKILL)  # a trainer rank: back to the state of step 2
    driver.until(lambda: _restarted_past(run_dir, 1, 4), "restart after the critic's death")
    (engine_core,) = _processes("VLLM::EngineCore")
    os.kill(engine_core, signal.SIGKILL)  # inside the rollout actor: back to step 4
    driver.until(lambda: _restarted_past(run_dir, 2, 5), "restart after the engine's death")
    driver.kill_9()
    assert _summary(run_dir)["status"] == "running"  # what a kill -9 leaves
    summary = _resume(run_dir)

    assert summary["status"] == "succeeded"
    assert [(r["stage"], r["after_step"]) for r in summary["resumes"]] == [
        ("ppo", 2),  # the critic died at step 3 or 4
        ("ppo", 4),  # the engine core died at step 5
        ("ppo", 4),  # the driver was killed at step 5
    ]
    died = [w["message"] for w in summary["warnings"] if w["kind"] == "actor_died"]
    assert [m.split(" died: ")[0] for m in died] == [
        "critic (rank 0 of 1)",
        "rollout (rank 0 of 1)",
    ]
    assert "restart 2 of 2" in died[1]
    restarted = [w["message"] for w in summary["warnings"] if w["kind"] == "role_restarted"]
    assert len(restarted) == 1 and restarted[0].startswith("reference (rank 0 of 1) died")
    assert summary["stages"]["ppo"]["steps"] == 6
    assert_same_after(reference, run_dir, "ppo", after=2)
    staleness = [r["rollout_staleness"] for r in read_metrics(run_dir, "ppo") if r["step"]]
    assert staleness == [0.0] + [1.0] * 5
    for part in ("ppo", "ppo_critic"):
        assert_same_weights(reference / "checkpoints" / part, run_dir / "checkpoints" / part)
    discarded = [json.loads(line) for line in (run_dir / "metrics.discarded.jsonl").open()]
    assert {row["step"] for row in discarded} >= {3, 5}


def test_sft_resumes_after_kill_9_mid_epoch(ray_cluster: None, tmp_path: Path) -> None:
    sets = [
        "stages=[sft]",
        "sft.max_examples=600",  # 540 train: 16 steps of 32
        "output.tensorboard=false",
        "output.train_state_every=4",
    ]
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    run_job(load_config(REPO / "configs" / "tiny.yaml", [*sets, f"output.run_dir={reference}"]))

    run_and_kill(sets, killed, "sft", step=10)
    summary = _resume(killed)

    after = summary["resumes"][0]["after_step"]
    assert after in (8, 12)  # the newest complete state when the kill landed (1 kept)
    assert summary["status"] == "succeeded"
    assert summary["stages"]["sft"]["steps"] == 16
    assert_same_after(reference, killed, "sft", after=after)
    assert_same_weights(reference / "checkpoints" / "sft", killed / "checkpoints" / "sft")
    ref_summary = json.loads((reference / "summary.json").read_text())
    assert summary["stages"]["sft"]["eval"] == ref_summary["stages"]["sft"]["eval"]
    assert summary["stages"]["sft"]["first_loss"] == ref_summary["stages"]["sft"]["first_loss"]
