"""Reward-model stage: collect rankings (a user file, or the simulated labeler ranking K SFT
samples per prompt as InstructGPT's labelers did), then train r(x, y) with the pairwise loss over
all K(K−1)/2 pairs of each prompt's ranking in one batch element."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from instructray.actors.group import ActorGroup
from instructray.config import SamplingConfig
from instructray.data import (
    RankedComparison,
    SimulatedLabeler,
    agreement,
    read_preferences,
    write_preferences,
)
from instructray.orchestrator.batching import (
    lm_batch,
    num_batches,
    prompt_ids,
    ranking_batch,
    split_for_ranks,
)
from instructray.orchestrator.context import JobContext, split_eval
from instructray.orchestrator.resume import StageResume
from instructray.orchestrator.roles import (
    deepspeed_spec,
    role_size,
    solo_threads,
    start_rollout,
    start_value_model,
)
from instructray.orchestrator.stages.common import run_sharded, save, train_epochs
from instructray.rollout.batch import Rollout
from instructray.training.batches import TextBatch

LABEL_CHUNK = 128
"""Prompts per generate call while collecting samples for the labeler."""


def sampled_responses(tokenizer: Any, rollout: Rollout) -> tuple[list[str], list[tuple[int, ...]]]:
    """Each response's text (special tokens skipped) and the exact tokens sampled (EOS only
    where the sampler emitted it)."""
    texts, ids = [], []
    for row, mask in zip(rollout.responses, rollout.action_mask, strict=True):
        response = row[mask.bool()]
        texts.append(tokenizer.decode(response, skip_special_tokens=True))
        ids.append(tuple(response.tolist()))
    return texts, ids


def label_sft_samples(ctx: JobContext) -> list[RankedComparison]:
    """K ∈ [k_min, k_max] samples of the SFT model per prompt, ranked by the labeler."""
    cfg, lcfg = ctx.cfg, ctx.cfg.rm.labeler
    assert ctx.data.task is not None
    prompts = ctx.data.train_prompts[: lcfg.num_prompts]
    sft = ctx.sft_model()
    tokenizer = ctx.tokenizer(sft)
    ctx.log.info(
        f"[rm] sampling {lcfg.k_min}..{lcfg.k_max} answers for {len(prompts)} prompts from {sft}"
    )
    sampling = SamplingConfig(temperature=lcfg.temperature, max_new_tokens=lcfg.max_new_tokens)
    ids = prompt_ids(tokenizer, prompts, cfg.model.max_prompt_tokens)
    rng = random.Random(cfg.seed)
    ks = [rng.randint(lcfg.k_min, lcfg.k_max) for _ in prompts]
    answer_lists: list[list[str]] = [[] for _ in prompts]
    sampled: list[tuple] = [(ids[i], []) for i in range(len(prompts))]
    # Each prompt gets exactly its K samples: one generate call per K (and chunk).
    calls = [
        (k, members[start : start + LABEL_CHUNK])
        for k in sorted(set(ks))
        for members in [[i for i, ki in enumerate(ks) if ki == k]]
        for start in range(0, len(members), LABEL_CHUNK)
    ]
    done = 0
    rollout = start_rollout(cfg, str(sft))
    try:
        for k, members in calls:
            chunk = [ids[i] for i in members]
            seed = cfg.seed + 1000 * k + members[0]
            out = rollout.call_rank0(lambda a: a.generate, chunk, sampling, k, seed)
            texts, answer_ids = sampled_responses(tokenizer, out)
            for j, i in enumerate(members):
                answer_lists[i] = texts[j * k : (j + 1) * k]
                sampled[i] = (ids[i], answer_ids[j * k : (j + 1) * k])
            done += len(members)
            ctx.log.info(f"[rm] sampled {done}/{len(ids)} prompts (K={k})")
    finally:
        rollout.shutdown()
    labeler = SimulatedLabeler(ctx.data.labeler_judge, noise=lcfg.noise, seed=cfg.seed)
    comparisons = labeler.rank_many([p.prompt for p in prompts], answer_lists, sampled)
    path = ctx.run_dir / "data" / "comparisons.jsonl"
    write_preferences(path, comparisons)
    ctx.log.info(
        f"[rm] labeler ranked {len(comparisons)} prompts "
        f"({sum(len(c.ranked) for c in comparisons)} answers, agreement with its "
        f"noiseless judge {agreement(labeler, comparisons):.3f}) -> {path}"
    )
    return comparisons


def normalize_on_demonstrations(ctx: JobContext, group: ActorGroup, tokenizer) -> float:
    """InstructGPT's last RM step: an offset so that SFT demonstrations score 0 on average
    (stored as ``reward_offset`` in the checkpoint's config; scores are logit − offset)."""
    has_demos = ctx.cfg.data.sft is not None or ctx.data.task is not None
    demos = ctx.data.sft_examples[: ctx.cfg.rm.normalize_samples] if has_demos else []
    if not demos:
        ctx.log.info("[rm] no SFT demonstrations (data.sft or data.task): reward_offset stays 0")
        return 0.0
    cfg = ctx.cfg

    def encode(part: list) -> TextBatch:
        return lm_batch(tokenizer, part, cfg.model.max_prompt_tokens, cfg.model.max_seq_len)

    shards = [encode(part) for part in split_for_ranks(demos, group.world_size)]
    scores = torch.cat(group.map(lambda a: a.scores, shards))
    offset = float(scores.mean())
    group.call(lambda a: a.set_reward_offset, offset)
    ctx.log.info(
        f"[rm] normalised: {len(scores)} SFT demonstrations scored {offset:+.4f} on average; "
        "reward_offset set so they average 0"
    )
    return offset


def comparisons_for(ctx: JobContext) -> list[RankedComparison]:
    if ctx.comparisons is None:
        labeled = ctx.run_dir / "data" / "comparisons.jsonl"
        if ctx.resuming and labeled.is_file():
            # The interrupted attempt's labels (written whole, before training on them):
            # labeling again would cost minutes.
            ctx.comparisons = read_preferences(labeled)
        else:
            ctx.comparisons = ctx.data.user_preferences() or label_sft_samples(ctx)
    return ctx.comparisons


def run(ctx: JobContext) -> Path:
    cfg, scfg = ctx.cfg, ctx.cfg.rm
    comparisons = comparisons_for(ctx)
    if scfg.max_comparisons:
        comparisons = comparisons[: scfg.max_comparisons]
    train, held_out = split_eval(
        comparisons, cfg.data.eval_fraction, cfg.seed, key=lambda c: c.prompt
    )
    init = ctx.sft_model()
    tokenizer = ctx.tokenizer(init)
    world = role_size(cfg, "reward")
    spec = deepspeed_spec(
        cfg,
        scfg.batch_size,
        scfg.micro_batch_size,
        world,
        scfg.optim,
        "rm",
        trainable_layers=scfg.trainable_layers,
    )
    n_pairs = sum(len(c.ranked) * (len(c.ranked) - 1) // 2 for c in train)
    ctx.log.info(
        f"[rm] {len(train)} rankings ({n_pairs} pairs) / {len(held_out)} held out, init {init}"
    )

    def encode(part: list) -> TextBatch:
        return ranking_batch(tokenizer, part, cfg.model.max_prompt_tokens, cfg.model.max_seq_len)

    task = ctx.data.task  # the config refuses rm.pmp_pairs without one
    pmp = task.review_preference_pairs(scfg.pmp_pairs) if task and scfg.pmp_pairs else []
    # Preference-model pre-training first (one epoch), then the labeled rankings.
    phases = [("review pairs (pre-training)", pmp, 1.0)] if pmp else []
    phases.append(("labeled rankings", train, scfg.epochs))
    total = sum(num_batches(len(items), scfg.batch_size, epochs) for _, items, epochs in phases)
    after_pmp: dict[str, float] = {}
    resume = StageResume.open(ctx, "rm")
    group = start_value_model(cfg, "reward", str(init), spec, solo_threads(cfg, "reward"))
    try:
        evals = resume.load_evals(group)
        if "before" not in evals:
            evals["before"] = run_sharded(group, lambda a: a.eval_rm, encode, held_out)
        before = evals["before"]
        step = 0
        for what, items, epochs in phases:
            ctx.log.info(f"[rm] training on {len(items)} {what} for {epochs:g} epochs")
            step = train_epochs(
                ctx,
                "rm",
                group,
                items,
                scfg.batch_size,
                epochs,
                encode,
                lambda a: a.train_rm,
                steps_before=step,
                steps_total=total,
                resume=resume,
                evals=evals,
            )
            if items is pmp:
                if "after_pmp" not in evals:
                    evals["after_pmp"] = run_sharded(group, lambda a: a.eval_rm, encode, held_out)
                after_pmp = evals["after_pmp"]
                ctx.log.info(
                    f"[rm] held-out accuracy after pre-training {after_pmp['accuracy']:.3f}"
                )
        after = run_sharded(group, lambda a: a.eval_rm, encode, held_out)
        offset = normalize_on_demonstrations(ctx, group, tokenizer)
        checkpoint = save(ctx, group, "rm")
    finally:
        group.shutdown()
    ctx.log.end_stage(
        "rm",
        checkpoint,
        {
            "heldout_accuracy_before": before["accuracy"],
            **({"heldout_accuracy_after_pmp": after_pmp["accuracy"]} if after_pmp else {}),
            "heldout_accuracy": after["accuracy"],
            "heldout_loss": after["loss"],
            "train_rankings": float(len(train)),
            "heldout_rankings": float(len(held_out)),
            "reward_offset": offset,
        },
    )
    return checkpoint
