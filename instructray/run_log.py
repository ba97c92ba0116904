"""What a run leaves behind: RUN_DIR/metrics.jsonl, RUN_DIR/summary.json, TensorBoard events,
and one human-readable line per logged step on the terminal (or the job's log)."""

from __future__ import annotations

import fcntl
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console


@dataclass
class StageSummary:
    stage: str
    first_loss: float | None = None
    last_loss: float | None = None
    steps: int = 0
    wall_time_s: float = 0.0
    checkpoint: str | None = None
    eval: dict[str, float] = field(default_factory=dict)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def format_metrics(metrics: dict[str, float]) -> str:
    parts = []
    for key, value in metrics.items():
        if isinstance(value, float):
            parts.append(f"{key}={value:.4g}")
        else:
            parts.append(f"{key}={value}")
    return " ".join(parts)


def _log_width() -> int | None:
    """A terminal's own width; 160 columns in a job log, where rich would assume 80 and wrap
    every metrics line and the eval table."""
    return None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160


class RunLogger:
    """Appends one JSON object per step to metrics.jsonl and keeps per-stage summaries."""

    def __init__(
        self,
        run_dir: Path,
        tensorboard: bool = True,
        console: Console | None = None,
        keep_summary: bool = False,
    ):
        """``keep_summary`` continues an existing summary.json (its stages and warnings), as
        `instructray eval` does on a finished run; otherwise the run starts a new one."""
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = run_dir / "metrics.jsonl"
        self.summary_path = run_dir / "summary.json"
        self.console = console or Console(highlight=False, width=_log_width())
        self.summaries: dict[str, StageSummary] = {}
        self.warnings: list[dict[str, Any]] = []
        self.previous_status: str | None = None
        """The status of the run this logger continues (keep_summary), else None."""
        self.resumes: list[dict[str, Any]] = []
        if keep_summary and self.summary_path.exists():
            previous = json.loads(self.summary_path.read_text())
            self.previous_status = previous.get("status")
            self.summaries = {k: StageSummary(**v) for k, v in previous["stages"].items()}
            self.warnings = previous.get("warnings", [])
            self.resumes = previous.get("resumes", [])
        self._stage_started: dict[str, float] = {}
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def info(self, message: str) -> None:
        self.console.print(message, markup=False, highlight=False)

    def warn(self, stage: str, step: int, kind: str, message: str, key: str = "") -> None:
        """A warning the user must see: a log line now, and one entry per (stage, kind, key)
        in summary.json's ``warnings`` (``step`` where it first fired, ``last_step`` and the
        latest ``message`` when it repeats)."""
        self.console.print(f"[{stage}] WARNING {message}", style="bold yellow", markup=False)
        for entry in self.warnings:
            if (entry["stage"], entry["kind"], entry.get("key", "")) == (stage, kind, key):
                entry.update(message=message, last_step=step)
                break
        else:
            self.warnings.append(
                {
                    "stage": stage,
                    "step": step,
                    "last_step": step,
                    "kind": kind,
                    "key": key,
                    "message": message,
                }
            )
        self.write_summary()

    def start_stage(self, stage: str, keep: bool = False) -> None:
        """``keep``: a resumed stage continues its summary (first loss, steps so far)."""
        if not keep or stage not in self.summaries:
            self.summaries[stage] = StageSummary(stage=stage)
        # From the first stage on, summary.json says the run is under way.
        self.write_summary(status=self.previous_status or "running")
        self._stage_started[stage] = time.perf_counter()
        self.console.rule(f"stage {stage}")

    def log(self, stage: str, step: int, metrics: dict[str, float], total: int | None = None):
        record = {"stage": stage, "step": step, "time": time.time()}
        record.update({k: _clean(v) for k, v in metrics.items()})
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        summary = self.summaries.setdefault(stage, StageSummary(stage=stage))
        summary.steps = max(summary.steps, step)
        if "loss" in metrics:
            if summary.first_loss is None:
                summary.first_loss = _clean(float(metrics["loss"]))
            summary.last_loss = _clean(float(metrics["loss"]))
        if self._tb is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(f"{stage}/{key}", value, step)
        if total is None or step in (1, total) or step % max(1, total // 20) == 0:
            where = f"{step}/{total}" if total else str(step)
            self.info(f"[{stage}] step {where} {format_metrics(metrics)}")

    def end_stage(self, stage: str, checkpoint: Path | None, eval_metrics: dict[str, float]):
        summary = self.summaries.setdefault(stage, StageSummary(stage=stage))
        summary.wall_time_s = round(time.perf_counter() - self._stage_started.get(stage, 0.0), 2)
        summary.checkpoint = str(checkpoint) if checkpoint else None
        summary.eval = {k: _clean(float(v)) for k, v in eval_metrics.items()}
        self.write_summary()
        self.info(
            f"[{stage}] done in {summary.wall_time_s:.1f}s "
            f"loss {summary.first_loss} -> {summary.last_loss} eval {format_metrics(summary.eval)}"
        )

    def record_resume(self, stage: str, after_step: int) -> None:
        """A resumed run continues ``stage`` after ``after_step`` (0: from its beginning).
        The lines the interrupted attempt logged past that step move to
        metrics.discarded.jsonl: kept, but out of the run's one history."""
        kept, dropped = [], []
        if self.metrics_path.exists():
            for line in self.metrics_path.read_text().splitlines():
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError:  # the half-written last line of a killed driver
                    dropped.append(line)
                    continue
                later = row.get("step", 0) > after_step or after_step == 0
                (dropped if row.get("stage") == stage and later else kept).append(line)
        if dropped:
            with (self.run_dir / "metrics.discarded.jsonl").open("a") as f:
                f.write("".join(line + "\n" for line in dropped))
            tmp = self.metrics_path.with_suffix(".tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            tmp.replace(self.metrics_path)
        # The stage's summary so far, from its kept lines (the killed attempt may not have
        # written summary.json since the stage began).
        losses = [
            row["loss"]
            for row in map(json.loads, kept)
            if row.get("stage") == stage and row.get("loss") is not None
        ]
        self.summaries[stage] = StageSummary(
            stage=stage,
            first_loss=losses[0] if losses else None,
            last_loss=losses[-1] if losses else None,
            steps=after_step,
        )
        self.resumes.append(
            {
                "stage": stage,
                "after_step": after_step,
                "discarded_lines": len(dropped),
                "time": time.time(),
            }
        )
        self.write_summary()

    def write_summary(self, status: str = "running", error: str | None = None) -> None:
        body = {
            "status": status,
            "error": error,
            "stages": {name: asdict(s) for name, s in self.summaries.items()},
            "warnings": self.warnings,
        }
        if self.resumes:
            body["resumes"] = self.resumes
        tmp = self.summary_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(body, indent=2, allow_nan=False))
        tmp.replace(self.summary_path)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


@contextmanager
def hold_run_folder(run_dir: Path) -> Iterator[None]:
    """One driver writes a run folder at a time: an exclusive lock on RUN_DIR/.driver.lock,
    released by the kernel when the driver exits, even by kill -9."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / ".driver.lock").open("a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            raise RunFolderBusy(
                f"{run_dir} is being written by another driver (pid {holder}); wait for it, "
                f"or stop it first"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class RunFolderBusy(RuntimeError):
    pass


class Interrupted(BaseException):
    """A signal stopped the run (SIGTERM from `ray job stop`, or the entry point's parent
    died): summary.json says ``interrupted``, and `instructray run --resume` continues it."""


def read_metrics(run_dir: Path, stage: str | None = None) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if stage is None or r["stage"] == stage]
