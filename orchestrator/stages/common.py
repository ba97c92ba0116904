"""Small pieces several stages use: averaging rank metrics, throughput, saving."""

from __future__ import annotations

import time
from pathlib import Path
from statistics import fmean

from instructray.actors.group import ActorGroup
from instructray.orchestrator.context import JobContext


def mean_over_ranks(results: list[dict[str, float]]) -> dict[str, float]:
    return {key: fmean(r[key] for r in results) for key in results[0]}


def save(ctx: JobContext, group: ActorGroup, name: str) -> Path:
    """Every rank takes part (ZeRO-3 gathers); rank 0 writes an HF folder."""
    out = ctx.checkpoint_dir(name)
    group.call(lambda a, _r: a.save_checkpoint.remote(str(out)))
    return out


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        elapsed, self.start = now - self.start, now
        return elapsed
