"""What the supervised stages (pretrain, sft, rm, dpo) share: the epoch loop over data-parallel
ranks, sharded evaluation, saving."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from statistics import fmean
from typing import Any

from instructray.actors.group import ActorGroup
from instructray.orchestrator.batching import epoch_batches, num_batches, split_for_ranks
from instructray.orchestrator.context import JobContext
from instructray.orchestrator.resume import StageResume
from instructray.training.batches import TensorBatch

Encode = Callable[[list[Any]], TensorBatch]


def mean_over_ranks(results: list[dict[str, float]]) -> dict[str, float]:
    return {key: fmean(r[key] for r in results) for key in results[0]}


def run_sharded(
    group: ActorGroup,
    method: Callable[[Any], Any],
    encode: Encode,
    items: Sequence[Any],
    *common: Any,
) -> dict[str, float]:
    """Split ``items`` between the ranks, encode each share, run ``method`` on all ranks at
    once (a collective under ZeRO), and average what they report."""
    shards = [encode(part) for part in split_for_ranks(items, group.world_size)]
    return mean_over_ranks(group.map(method, shards, *common))


def train_epochs(
    ctx: JobContext,
    stage: str,
    group: ActorGroup,
    items: Sequence[Any],
    batch_size: int,
    epochs: float,
    encode: Encode,
    method: Callable[[Any], Any],
    *common: Any,
    steps_before: int = 0,
    steps_total: int | None = None,
    resume: StageResume | None = None,
    evals: dict[str, Any] | None = None,
) -> int:
    """One optimizer step per batch of ``batch_size`` items for ``epochs`` passes, a metrics
    line per step (with throughput: tokens/s when the actor counts tokens). A stage that
    trains in phases numbers its steps on from ``steps_before`` out of ``steps_total``.

    With ``resume``, the steps up to ``resume.step`` (done before an interruption) are skipped
    (the batch order is a function of the seed, so the data position is the step) and a train
    state of ``group`` is saved when due, with ``evals``: what the stage measured so far.
    Returns the last step number."""
    total = steps_total or num_batches(len(items), batch_size, epochs)
    clock = Stopwatch()
    step = steps_before
    batches = epoch_batches(items, batch_size, epochs, ctx.cfg.seed)
    for step, batch in enumerate(batches, steps_before + 1):
        if resume is not None and step <= resume.step:
            continue
        metrics = run_sharded(group, method, encode, batch, *common)
        elapsed = max(clock.lap(), 1e-9)
        if "tokens" in metrics:
            metrics["tokens_per_s"] = metrics.pop("tokens") * group.world_size / elapsed
        metrics["examples_per_s"] = batch_size / elapsed
        ctx.log.log(stage, step, metrics, total)
        if resume is not None and resume.due(step, total):
            saved = resume.save(step, {group.placement.name: group}, {"evals": evals or {}})
            ctx.log.info(f"[{stage}] train state saved: {saved}")
            clock.lap()  # the save is not the next step's time
    return step


def save(ctx: JobContext, group: ActorGroup, name: str) -> Path:
    """Every rank takes part (ZeRO-3 gathers); rank 0 writes an HF folder."""
    out = ctx.checkpoint_dir(name)
    group.call(lambda a: a.save_checkpoint, str(out))
    return out


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        elapsed, self.start = now - self.start, now
        return elapsed
