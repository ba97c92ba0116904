"""Train states on disk: atomic commit, partial saves never read, pruning, RNG round trip;
the data position of a resumed prompt cycle; the run log's record of a resume."""

from __future__ import annotations

import itertools
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from instructray.orchestrator.batching import cycle
from instructray.run_log import RunFolderBusy, RunLogger, hold_run_folder
from instructray.training.train_state import (
    COMPLETE,
    commit,
    complete_steps,
    latest_complete,
    load_driver_state,
    partial_dir,
    remove_partial,
    rng_state,
    save_driver_state,
    set_rng_state,
    step_dir,
)


def _save(root: Path, step: int, keep_last: int = 2) -> Path:
    tmp = partial_dir(root, step)
    (tmp / "policy").mkdir(parents=True)
    (tmp / "policy" / "weights.pt").write_bytes(b"w" * step)
    save_driver_state(tmp, {"step": step, "history": [{"loss": 1.0 / step}]})
    return commit(root, step, keep_last)


def test_commit_renames_and_keeps_the_newest(tmp_path: Path) -> None:
    for step in (5, 10, 15):
        _save(tmp_path, step)
    assert [s for s, _ in complete_steps(tmp_path)] == [10, 15]  # step 5 pruned
    step, path = latest_complete(tmp_path)
    assert (step, path) == (15, step_dir(tmp_path, 15))
    assert (path / COMPLETE).read_text() == "15\n"
    assert (path / "policy" / "weights.pt").read_bytes() == b"w" * 15
    assert load_driver_state(path) == {"step": 15, "history": [{"loss": 1.0 / 15}]}


def test_a_partial_save_is_never_read_and_is_removed(tmp_path: Path) -> None:
    _save(tmp_path, 4)
    half = partial_dir(tmp_path, 8)  # a save the kill interrupted
    (half / "policy").mkdir(parents=True)
    unsealed = step_dir(tmp_path, 12)  # renamed by hand, but never marked complete
    unsealed.mkdir()
    assert latest_complete(tmp_path) == (4, step_dir(tmp_path, 4))
    assert remove_partial(tmp_path) == [half]
    assert not half.exists()
    assert latest_complete(tmp_path / "missing") is None


def test_a_rolled_back_step_is_saved_again(tmp_path: Path) -> None:
    _save(tmp_path, 6)
    _save(tmp_path, 6)  # the same step, written again after a resume
    assert [s for s, _ in complete_steps(tmp_path)] == [6]


def test_rng_state_round_trip() -> None:
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    saved = rng_state()
    first = (random.random(), np.random.rand(), torch.rand(3))
    set_rng_state(saved)
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert first[:2] == again[:2]
    assert torch.equal(first[2], again[2])


def test_a_cycle_continues_where_it_was_drawn_to() -> None:
    items = list(range(7))
    whole = list(itertools.islice(cycle(items, seed=3), 30))
    first = cycle(items, seed=3)
    head = [next(first) for _ in range(11)]
    assert first.drawn == 11
    resumed = cycle(items, seed=3, drawn=first.drawn)  # across a pass boundary (7)
    assert head + [next(resumed) for _ in range(19)] == whole


def _logger(run_dir: Path, keep: bool = False) -> RunLogger:
    return RunLogger(run_dir, tensorboard=False, keep_summary=keep)


def test_record_resume_moves_the_lines_past_the_saved_step(tmp_path: Path) -> None:
    log = _logger(tmp_path)
    log.start_stage("sft")
    for step in (1, 2):
        log.log("sft", step, {"loss": 3.0 - step})
    log.end_stage("sft", tmp_path / "sft", {})
    log.start_stage("ppo")
    for step in range(0, 6):
        log.log("ppo", step, {"loss": float(step)})
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"stage": "ppo", "st')  # the half line of a kill -9
    log.write_summary()

    resumed = _logger(tmp_path, keep=True)
    resumed.start_stage("ppo", keep=True)
    resumed.record_resume("ppo", 4)

    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in rows] == [("sft", 1), ("sft", 2)] + [
        ("ppo", s) for s in range(5)
    ]
    moved = (tmp_path / "metrics.discarded.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in moved[:1]] == [5]
    assert moved[1] == '{"stage": "ppo", "st'
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["resumes"][0]["stage"] == "ppo"
    assert summary["resumes"][0]["after_step"] == 4
    assert summary["resumes"][0]["discarded_lines"] == 2
    assert summary["stages"]["ppo"]["steps"] == 4
    assert summary["stages"]["ppo"]["first_loss"] == 0.0  # kept from the first attempt
    assert summary["stages"]["sft"]["last_loss"] == 1.0


def test_a_stage_restarted_from_its_beginning_drops_all_its_lines(tmp_path: Path) -> None:
    log = _logger(tmp_path)
    for step in range(3):
        log.log("ppo", step, {"loss": 1.0})
    _logger(tmp_path, keep=True).record_resume("ppo", 0)
    assert (tmp_path / "metrics.jsonl").read_text() == ""
    assert len((tmp_path / "metrics.discarded.jsonl").read_text().splitlines()) == 3


def test_one_driver_per_run_folder(tmp_path: Path) -> None:
    with hold_run_folder(tmp_path):
        busy = pytest.raises(RunFolderBusy, match=r"another driver \(pid \d+\)")
        with busy, hold_run_folder(tmp_path):
            pass
        # Another process sees it held too.
        code = (
            "import sys; from pathlib import Path; from instructray.run_log import "
            "hold_run_folder, RunFolderBusy\n"
            "try:\n    with hold_run_folder(Path(sys.argv[1])): sys.exit(0)\n"
            "except RunFolderBusy: sys.exit(3)"
        )
        held = subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=False)
        assert held.returncode == 3
    with hold_run_folder(tmp_path):  # released on exit
        pass
