"""A signal ends a run as ``interrupted`` (never ``running`` forever), a driver started as a
Ray job's entry point dies with its parent, and an interrupted run resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from instructray import cli
from instructray.config import load_config
from instructray.orchestrator import pipeline
from instructray.orchestrator.context import JobContext
from instructray.orchestrator.resume import StageResume

REPO = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state  # a zombie has exited


def test_the_driver_of_a_ray_job_dies_with_its_entry_point_shell(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    code = (
        "import os, sys, time\n"
        "from instructray.cli import die_with_parent\n"
        "die_with_parent()\n"
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "time.sleep(120)\n"
    )
    script = tmp_path / "driver.py"
    script.write_text(code)
    # `; true` keeps the shell alive as the parent (a lone command would be exec'd).
    shell = subprocess.Popen(["sh", "-c", f"{sys.executable} {script}; true"], cwd=REPO)
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "the driver stand-in did not start"
        time.sleep(0.05)
    driver = int(pid_file.read_text())
    assert _alive(driver)
    shell.kill()  # SIGKILL: the shell cannot pass anything on
    shell.wait()
    deadline = time.monotonic() + 10
    while _alive(driver):
        assert time.monotonic() < deadline, "the driver outlived its entry-point shell"
        time.sleep(0.05)


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "init_ray", lambda _cfg: None)


def _argv(run_dir: Path, cache: Path) -> list[str]:
    sets = ["stages=[sft]", "output.tensorboard=false", f"output.cache_dir={cache}"]
    return ["run", str(REPO / "configs/tiny.yaml"), "--out", str(run_dir)] + [
        arg for s in sets for arg in ("--set", s)
    ]


@pytest.mark.usefixtures("no_ray")
def test_sigterm_mid_stage_leaves_an_interrupted_run_that_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, cache = tmp_path / "run", tmp_path / "cache"

    def stopped_mid_stage(ctx: JobContext) -> Path:
        ctx.log.log("sft", 1, {"loss": 2.0})
        os.kill(os.getpid(), signal.SIGTERM)  # what `ray job stop` sends
        time.sleep(10)
        raise AssertionError("SIGTERM did not interrupt the stage")

    monkeypatch.setitem(pipeline.STAGES, "sft", stopped_mid_stage)
    handler = signal.getsignal(signal.SIGTERM)
    assert cli.main(_argv(run_dir, cache)) == 143
    assert signal.getsignal(signal.SIGTERM) is handler  # restored for the caller
    assert "instructray run --resume" in capsys.readouterr().err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert summary["error"] == "sft stage interrupted: Interrupted: stopped by SIGTERM"

    def finishes(ctx: JobContext) -> Path:
        assert StageResume.open(ctx, "sft").step == 0
        ctx.log.log("sft", 1, {"loss": 1.5})
        ctx.log.end_stage("sft", None, {})
        return run_dir / "checkpoints" / "sft"

    monkeypatch.setitem(pipeline.STAGES, "sft", finishes)
    # No train state was saved: the stage starts again, its earlier line set aside.
    pipeline.resume_job(load_config(run_dir / "config.yaml"), run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [(r["stage"], r["after_step"]) for r in summary["resumes"]] == [("sft", 0)]
    assert summary["status"] == "succeeded"
    assert summary["stages"]["sft"]["first_loss"] == 1.5
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"], r["loss"]) for r in rows] == [("sft", 1, 1.5)]
    # A succeeded run is not resumed again.
    assert cli.main(["run", "--resume", str(run_dir)]) == 2
    assert "nothing to resume" in capsys.readouterr().err
