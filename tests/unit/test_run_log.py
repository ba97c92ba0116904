"""Tests for instructray.run_log: metrics.jsonl, summary.json, TensorBoard and console lines."""

from __future__ import annotations

import io
import json
import math
import time
from pathlib import Path

from rich.console import Console

from instructray.run_log import RunLogger, format_metrics, read_metrics


def _logger(run_dir: Path, tensorboard: bool = False) -> tuple[RunLogger, io.StringIO]:
    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None, highlight=False)
    return RunLogger(run_dir, tensorboard=tensorboard, console=console), out


def _lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _strict_json(text: str):
    def reject(constant: str):
        raise ValueError(f"not standard JSON: {constant}")

    return json.loads(text, parse_constant=reject)


def test_creates_run_dir(tmp_path):
    run_dir = tmp_path / "a" / "b"
    log, _ = _logger(run_dir)
    assert run_dir.is_dir()
    assert log.metrics_path == run_dir / "metrics.jsonl"
    assert log.summary_path == run_dir / "summary.json"
    assert read_metrics(run_dir) == []


def test_one_json_line_per_log_call(tmp_path):
    log, _ = _logger(tmp_path)
    before = time.time()
    log.log("sft", 1, {"loss": 2.5, "lr": 1e-4})
    log.log("sft", 2, {"loss": 2.0, "lr": 1e-4, "tokens": 128})
    after = time.time()
    text = (tmp_path / "metrics.jsonl").read_text()
    assert text.endswith("\n")
    rows = _lines(tmp_path)
    assert len(rows) == 2
    assert list(rows[0]) == ["stage", "step", "time", "loss", "lr"]
    assert rows[0]["stage"] == "sft"
    assert rows[0]["step"] == 1
    assert rows[0]["loss"] == 2.5
    assert rows[0]["lr"] == 1e-4
    assert rows[1] == {
        "stage": "sft",
        "step": 2,
        "time": rows[1]["time"],
        "loss": 2.0,
        "lr": 1e-4,
        "tokens": 128,
    }
    assert before <= rows[0]["time"] <= rows[1]["time"] <= after


def test_appends_to_an_existing_file(tmp_path):
    log, _ = _logger(tmp_path)
    log.log("sft", 1, {"loss": 1.0})
    again, _ = _logger(tmp_path)
    again.log("rm", 1, {"loss": 0.5})
    assert [(r["stage"], r["loss"]) for r in _lines(tmp_path)] == [("sft", 1.0), ("rm", 0.5)]


def test_non_finite_values_become_null(tmp_path):
    log, _ = _logger(tmp_path)
    log.log("ppo", 1, {"loss": math.nan, "kl": math.inf, "ratio": -math.inf, "reward": 0.5})
    text = (tmp_path / "metrics.jsonl").read_text()
    row = _strict_json(text)
    assert row["loss"] is None
    assert row["kl"] is None
    assert row["ratio"] is None
    assert row["reward"] == 0.5
    assert "NaN" not in text
    assert "Infinity" not in text


def test_summary_after_end_stage(tmp_path):
    log, _ = _logger(tmp_path)
    log.start_stage("sft")
    for step, loss in enumerate([3.0, 2.5, 2.0, 1.5], start=1):
        log.log("sft", step, {"loss": loss, "lr": 1e-3}, total=4)
    ckpt = tmp_path / "checkpoints" / "sft"
    log.end_stage("sft", ckpt, {"eval_loss": 1.75, "eval_ppl": 5})
    body = _strict_json((tmp_path / "summary.json").read_text())
    assert body["status"] == "running"
    assert body["error"] is None
    sft = body["stages"]["sft"]
    assert sft["stage"] == "sft"
    assert sft["first_loss"] == 3.0
    assert sft["last_loss"] == 1.5
    assert sft["steps"] == 4
    assert sft["checkpoint"] == str(ckpt)
    assert sft["eval"] == {"eval_loss": 1.75, "eval_ppl": 5.0}
    assert isinstance(sft["eval"]["eval_ppl"], float)
    assert 0 <= sft["wall_time_s"] < 60
    assert not (tmp_path / "summary.tmp").exists()


def test_summary_keeps_every_stage_and_final_status(tmp_path):
    log, _ = _logger(tmp_path)
    log.start_stage("sft")
    log.log("sft", 1, {"loss": 1.0})
    log.end_stage("sft", tmp_path / "sft", {})
    log.start_stage("rm")
    log.log("rm", 1, {"accuracy": 0.5})
    log.end_stage("rm", None, {"accuracy": 0.75})
    log.write_summary("failed", error="boom")
    body = json.loads((tmp_path / "summary.json").read_text())
    assert body["status"] == "failed"
    assert body["error"] == "boom"
    assert list(body["stages"]) == ["sft", "rm"]
    rm = body["stages"]["rm"]
    assert rm["first_loss"] is None
    assert rm["last_loss"] is None
    assert rm["steps"] == 1
    assert rm["checkpoint"] is None
    assert rm["eval"] == {"accuracy": 0.75}


def test_steps_is_the_highest_step(tmp_path):
    log, _ = _logger(tmp_path)
    for step in (1, 5, 3):
        log.log("ppo", step, {"loss": float(step)})
    summary = log.summaries["ppo"]
    assert summary.steps == 5
    assert summary.first_loss == 1.0
    assert summary.last_loss == 3.0


def test_summary_is_valid_json_after_a_nan_loss(tmp_path):
    log, _ = _logger(tmp_path)
    log.start_stage("ppo")
    log.log("ppo", 1, {"loss": math.nan})
    log.end_stage("ppo", None, {"reward_last": math.inf})
    body = _strict_json((tmp_path / "summary.json").read_text())
    assert body["stages"]["ppo"]["first_loss"] is None
    assert body["stages"]["ppo"]["eval"]["reward_last"] is None


def test_read_metrics_filters_by_stage(tmp_path):
    log, _ = _logger(tmp_path)
    log.log("sft", 1, {"loss": 1.0})
    log.log("rm", 1, {"loss": 0.7})
    log.log("sft", 2, {"loss": 0.9})
    sft = read_metrics(tmp_path, "sft")
    assert [(r["step"], r["loss"]) for r in sft] == [(1, 1.0), (2, 0.9)]
    assert [r["loss"] for r in read_metrics(tmp_path, "rm")] == [0.7]
    assert read_metrics(tmp_path, "ppo") == []
    assert [r["stage"] for r in read_metrics(tmp_path)] == ["sft", "rm", "sft"]


def test_read_metrics_skips_blank_lines(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"stage": "sft", "step": 1}\n\n')
    assert read_metrics(tmp_path) == [{"stage": "sft", "step": 1}]


def test_console_line(tmp_path):
    log, out = _logger(tmp_path)
    log.log("sft", 3, {"loss": 1.234567, "tokens": 64})
    assert out.getvalue() == "[sft] step 3 loss=1.235 tokens=64\n"


def test_console_line_with_total_is_throttled(tmp_path):
    log, out = _logger(tmp_path)
    for step in range(1, 41):
        log.log("ppo", step, {"loss": 0.5}, total=40)
    lines = out.getvalue().splitlines()
    # Steps 1, every total//20 = 2nd step, and the last.
    assert len(lines) == 20 + 1
    assert lines[0] == "[ppo] step 1/40 loss=0.5"
    assert lines[1] == "[ppo] step 2/40 loss=0.5"
    assert lines[-1] == "[ppo] step 40/40 loss=0.5"
    # Every step still reaches metrics.jsonl.
    assert len(read_metrics(tmp_path, "ppo")) == 40


def test_stage_rule_and_done_line(tmp_path):
    log, out = _logger(tmp_path)
    log.start_stage("rm")
    log.log("rm", 1, {"loss": 0.25})
    log.end_stage("rm", None, {"accuracy": 0.5})
    text = out.getvalue()
    assert "stage rm" in text
    assert "[rm] step 1 loss=0.25" in text
    assert "[rm] done in " in text
    assert "loss 0.25 -> 0.25 eval accuracy=0.5" in text


def test_format_metrics():
    assert format_metrics({"loss": 0.123456, "step": 3, "lr": 1e-5}) == (
        "loss=0.1235 step=3 lr=1e-05"
    )
    assert format_metrics({}) == ""


def test_tensorboard_events(tmp_path):
    log, _ = _logger(tmp_path, tensorboard=True)
    log.log("sft", 1, {"loss": 1.5, "bad": math.nan})
    log.log("sft", 2, {"loss": 1.25})
    log.close()
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert acc.Tags()["scalars"] == ["sft/loss"]
    assert [(e.step, e.value) for e in acc.Scalars("sft/loss")] == [(1, 1.5), (2, 1.25)]
    assert len(_lines(tmp_path)) == 2


def test_summary_says_running_from_the_first_stage_on(tmp_path):
    log, _ = _logger(tmp_path)
    assert not log.summary_path.exists()
    log.start_stage("sft")  # a kill -9 from here on leaves a summary that says so
    summary = json.loads(log.summary_path.read_text())
    assert summary["status"] == "running"
    assert summary["stages"]["sft"]["steps"] == 0
