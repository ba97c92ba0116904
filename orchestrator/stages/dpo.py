"""DPO: the two-step alternative to RM + PPO. The policy starts from the SFT model, which also
serves (frozen, on its own actor) as the reference; every ranked pair is one training pair."""

from __future__ import annotations

from pathlib import Path

from instructray.actors.group import ActorGroup
from instructray.config.rank import DPOLossParams
from instructray.orchestrator.batching import (
    comparison_pairs,
    pair_batch,
    split_for_ranks,
)
from instructray.orchestrator.context import JobContext, split_eval
from instructray.orchestrator.resume import StageResume
from instructray.orchestrator.roles import deepspeed_spec, role_size, solo_threads, start_causal_lm
from instructray.orchestrator.stages.common import mean_over_ranks, save, train_epochs
from instructray.orchestrator.stages.rm import comparisons_for
from instructray.training.batches import PairBatch


def _with_reference(reference: ActorGroup, batch: PairBatch) -> PairBatch:
    return batch.with_reference(*reference.call_rank0(lambda a: a.pair_logps, batch))


def run(ctx: JobContext) -> Path:
    cfg, scfg = ctx.cfg, ctx.cfg.dpo
    pairs = comparison_pairs(comparisons_for(ctx))
    if scfg.max_pairs:
        pairs = pairs[: scfg.max_pairs]
    train, held_out = split_eval(
        pairs, cfg.data.eval_fraction, cfg.seed, max_eval=256, key=lambda p: p.prompt
    )
    init = ctx.sft_model()
    tokenizer = ctx.tokenizer(init)
    world = role_size(cfg, "policy")
    spec = deepspeed_spec(cfg, scfg.batch_size, scfg.micro_batch_size, world, scfg.optim, "dpo")

    def encode(part):
        return pair_batch(tokenizer, part, cfg.model.max_prompt_tokens, cfg.model.max_seq_len)

    ctx.log.info(
        f"[dpo] {len(train)} pairs / {len(held_out)} held out, beta {scfg.beta}, "
        f"{scfg.loss_type} loss, policy and reference from {init}"
    )
    # The reference scores each batch before the policy trains on it: never both at once.
    resume = StageResume.open(ctx, "dpo")
    reference = start_causal_lm(cfg, "reference", str(init), None, solo_threads(cfg, "reference"))
    policy = start_causal_lm(cfg, "policy", str(init), spec, solo_threads(cfg, "policy"))
    loss = DPOLossParams.of(scfg)
    try:
        held_batches = [
            _with_reference(reference, encode(p)) for p in split_for_ranks(held_out, world)
        ]

        def evaluate() -> dict[str, float]:
            return mean_over_ranks(policy.map(lambda a: a.eval_dpo, held_batches, loss))

        evals = resume.load_evals(policy)
        if "before" not in evals:
            evals["before"] = evaluate()
        before = evals["before"]
        train_epochs(
            ctx,
            "dpo",
            policy,
            train,
            scfg.batch_size,
            scfg.epochs,
            lambda part: _with_reference(reference, encode(part)),
            lambda a: a.train_dpo,
            loss,
            resume=resume,
            evals=evals,
        )
        after = evaluate()
        checkpoint = save(ctx, policy, "dpo")
    finally:
        policy.shutdown()
        reference.shutdown()
    ctx.log.end_stage(
        "dpo",
        checkpoint,
        {
            "heldout_margin_before": before["reward_margin"],
            "heldout_margin": after["reward_margin"],
            "heldout_accuracy": after["reward_accuracy"],
            "heldout_loss": after["loss"],
        },
    )
    return checkpoint
