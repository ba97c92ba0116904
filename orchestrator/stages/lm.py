"""Language-model stages on the policy's DeepSpeed ranks: pre-training (every token of plain
text; the tiny preset's stand-in for GPT-3) and SFT (cross-entropy on response tokens only)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from instructray.config import LMStageConfig
from instructray.data import SFTExample, TextExample
from instructray.orchestrator.batching import lm_batch
from instructray.orchestrator.context import JobContext, split_eval
from instructray.orchestrator.resume import StageResume
from instructray.orchestrator.roles import deepspeed_spec, role_size, solo_threads, start_causal_lm
from instructray.orchestrator.stages.common import run_sharded, save, train_epochs

LMStage = Literal["pretrain", "sft"]


def run(ctx: JobContext, stage: LMStage) -> Path:
    cfg = ctx.cfg
    scfg: LMStageConfig = cfg.pretrain if stage == "pretrain" else cfg.sft
    init = (
        ctx.base_model if stage == "pretrain" else ctx.checkpoints.get("pretrain", ctx.base_model)
    )
    train: list[SFTExample] | list[TextExample]
    if stage == "pretrain":
        # The held-out texts are the eval stage's measure of the alignment tax.
        train, held_out = ctx.data.pretrain_split()
        train = train[: scfg.max_examples] if scfg.max_examples else train
    else:
        examples = ctx.data.sft_examples
        examples = examples[: scfg.max_examples] if scfg.max_examples else examples
        train, held_out = split_eval(examples, cfg.data.eval_fraction, cfg.seed, max_eval=256)
    tokenizer = ctx.tokenizer(init)
    world = role_size(cfg, "policy")
    spec = deepspeed_spec(cfg, scfg.batch_size, scfg.micro_batch_size, world, scfg.optim, stage)
    ctx.log.info(
        f"[{stage}] {len(train)} train / {len(held_out)} held-out examples, "
        f"init {init}, {world} rank(s), ZeRO-{spec.zero_stage}"
    )

    def encode(part: list) -> dict:
        return lm_batch(tokenizer, part, cfg.model.max_prompt_tokens, cfg.model.max_seq_len)

    resume = StageResume.open(ctx, stage)
    group = start_causal_lm(cfg, "policy", str(init), spec, solo_threads(cfg, "policy"))
    try:
        evals = resume.load_evals(group)
        if "loss_before" not in evals:
            evals["loss_before"] = run_sharded(group, lambda a: a.eval_lm, encode, held_out)["loss"]
        eval_before = evals["loss_before"]
        train_epochs(
            ctx,
            stage,
            group,
            train,
            scfg.batch_size,
            scfg.epochs,
            encode,
            lambda a: a.train_lm,
            resume=resume,
            evals=evals,
        )
        eval_after = run_sharded(group, lambda a: a.eval_lm, encode, held_out)["loss"]
        checkpoint = save(ctx, group, stage)
    finally:
        group.shutdown()
    ctx.log.end_stage(stage, checkpoint, {"eval_loss_before": eval_before, "eval_loss": eval_after})
    return checkpoint
