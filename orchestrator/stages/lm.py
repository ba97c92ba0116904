"""Language-model stages on the policy's DeepSpeed ranks: pre-training (every token of plain
text; the tiny preset's stand-in for GPT-3) and SFT (cross-entropy on response tokens only)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from instructray.config import LMStageConfig
from instructray.data import SFTExample, TextExample
from instructray.orchestrator.batching import epoch_batches, lm_batch, num_batches, split_for_ranks
from instructray.orchestrator.context import JobContext, split_eval
from instructray.orchestrator.roles import engine_spec, start_causal_lm
from instructray.orchestrator.stages.common import Stopwatch, mean_over_ranks, save

LMStage = Literal["pretrain", "sft"]


def _evaluate(ctx: JobContext, group, tokenizer, examples: Sequence) -> float:
    cfg = ctx.cfg
    parts = split_for_ranks(examples, group.world_size)
    batches = [
        lm_batch(tokenizer, p, cfg.model.max_prompt_tokens, cfg.model.max_seq_len) for p in parts
    ]
    results = group.map(lambda a: a.eval_lm, batches)
    return mean_over_ranks(results)["loss"]


def run(ctx: JobContext, stage: LMStage) -> Path:
    cfg = ctx.cfg
    scfg: LMStageConfig = cfg.pretrain if stage == "pretrain" else cfg.sft
    init = (
        ctx.base_model if stage == "pretrain" else ctx.checkpoints.get("pretrain", ctx.base_model)
    )
    examples: list[SFTExample] | list[TextExample] = (
        ctx.data.pretrain_texts if stage == "pretrain" else ctx.data.sft_examples
    )
    if scfg.max_examples:
        examples = examples[: scfg.max_examples]
    train, held_out = split_eval(examples, cfg.data.eval_fraction, cfg.seed, max_eval=256)
    tokenizer = ctx.tokenizer(init)
    world = cfg.resources.policy.actors
    spec = engine_spec(cfg, scfg.batch_size, scfg.micro_batch_size, world, scfg.optim, stage)
    ctx.log.info(
        f"[{stage}] {len(train)} train / {len(held_out)} held-out examples, "
        f"init {init}, {world} rank(s), ZeRO-{spec.zero_stage}"
    )
    group = start_causal_lm(cfg, "policy", str(init), spec)
    try:
        eval_before = _evaluate(ctx, group, tokenizer, held_out)
        total = num_batches(len(train), scfg.batch_size, scfg.epochs)
        clock = Stopwatch()
        for step, batch in enumerate(
            epoch_batches(train, scfg.batch_size, scfg.epochs, cfg.seed), start=1
        ):
            shards = [
                lm_batch(tokenizer, part, cfg.model.max_prompt_tokens, cfg.model.max_seq_len)
                for part in split_for_ranks(batch, world)
            ]
            metrics = mean_over_ranks(group.map(lambda a: a.train_lm, shards))
            tokens = metrics.pop("tokens") * world * spec.grad_accum_steps
            metrics["tokens_per_s"] = tokens / max(clock.lap(), 1e-9)
            ctx.log.log(stage, step, metrics, total)
        eval_after = _evaluate(ctx, group, tokenizer, held_out)
        checkpoint = save(ctx, group, stage)
    finally:
        group.shutdown()
    ctx.log.end_stage(stage, checkpoint, {"eval_loss_before": eval_before, "eval_loss": eval_after})
    return checkpoint
