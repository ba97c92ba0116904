"""The eval stage: is the aligned policy preferred over the SFT model, by judges no training
stage saw? Each policy checkpoint answers the same held-out prompts; the proxy reward, the gold
judges, KL to the reference, the LM loss on held-out pre-training text (the alignment tax) and
the text statistics that expose reward hacking go to RUN_DIR/eval.json and RUN_DIR/report/."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from rich.table import Table

from instructray.actors.group import ActorGroup, wait
from instructray.evaluation import SampleSet, summarize, verdict, write_report
from instructray.orchestrator.batching import lm_batch, prompt_ids
from instructray.orchestrator.context import JobContext
from instructray.orchestrator.coordinator import generate_on
from instructray.orchestrator.measure import PROXY, RewardSource, SampleScorer
from instructray.orchestrator.roles import start_causal_lm, start_rollout, start_value_model
from instructray.orchestrator.stages.common import run_sharded
from instructray.orchestrator.weight_sync import choose_weight_sync
from instructray.rollout.batch import Rollout
from instructray.run_log import read_metrics

EVAL_SEED = 104729
"""Every checkpoint samples with the same seeds (common random numbers: less noise in the
paired comparison with the baseline)."""


def eval_checkpoints(ctx: JobContext) -> dict[str, Path]:
    """The policies to evaluate that this run has, baseline first. Without a pretrain stage
    the base model stands in for "pretrain" (it is the pre-trained model)."""
    ecfg = ctx.cfg.eval
    known: dict[str, Path] = {"pretrain": ctx.checkpoints.get("pretrain", ctx.base_model)}
    if "sft" in ctx.checkpoints or ctx.cfg.model.sft_checkpoint:
        known["sft"] = ctx.sft_model()
    known |= {k: v for k, v in ctx.checkpoints.items() if k in ("ppo", "dpo")}
    if ecfg.baseline not in known:
        raise ValueError(
            f"eval.baseline {ecfg.baseline!r} has no checkpoint in this run "
            f"(found: {', '.join(known) or 'none'})"
        )
    names = [ecfg.baseline] + [n for n in ecfg.checkpoints if n in known and n != ecfg.baseline]
    return {name: known[name] for name in names}


def run(ctx: JobContext) -> Path:
    cfg, ecfg = ctx.cfg, ctx.cfg.eval
    checkpoints = eval_checkpoints(ctx)
    prompts = ctx.data.eval_prompts(ecfg.num_prompts)
    judges = ctx.data.gold_judges()
    texts = ctx.data.pretrain_split()[1][: ecfg.lm_loss_texts]
    reference, rm = ctx.sft_model(), ctx.reward_model()
    proxy_fn = cfg.ppo.reward_function if "ppo" in checkpoints else None
    baseline = next(iter(checkpoints))
    tokenizer = ctx.tokenizer(checkpoints[baseline])
    ctx.log.info(
        f"[eval] {', '.join(checkpoints)} on {len(prompts)} held-out prompts "
        f"(T={ecfg.sampling.temperature}, ≤{ecfg.sampling.max_new_tokens} tokens) vs "
        f"{baseline}; gold judges {', '.join(j.name for j in judges) or 'none'}; proxy "
        f"{proxy_fn or rm or 'none'}; KL to {reference}"
    )
    ids = prompt_ids(tokenizer, prompts, cfg.model.max_prompt_tokens)
    ref_group = start_causal_lm(cfg, "reference", str(reference), spec=None)
    rm_group = None
    if proxy_fn is None and rm is not None:
        rm_group = start_value_model(cfg, "reward", str(rm), spec=None)
    engines = start_rollout(cfg, str(checkpoints[baseline]))
    groups: list[ActorGroup] = [ref_group, engines] + ([rm_group] if rm_group else [])
    samples: dict[str, SampleSet] = {}
    lm_loss: dict[str, float] = {}
    try:
        reward = None
        if rm_group is not None or proxy_fn is not None:
            reward = RewardSource.of(rm_group, proxy_fn, tokenizer)
        for name, path in checkpoints.items():
            clock = time.perf_counter()
            policy = start_causal_lm(cfg, "policy", str(path), spec=None)
            try:
                if name != baseline:
                    choose_weight_sync(cfg.rollout, policy, engines)(policy, engines)
                rollout = Rollout.merge(
                    wait(generate_on(engines, ids, ecfg.sampling, 1, EVAL_SEED)),
                    tokenizer.pad_token_id,
                )
                scorer = SampleScorer(policy, ref_group, reward, judges, tokenizer)
                # KL needs a stochastic policy: greedy decoding is measured at T=1.
                samples[name] = scorer.score(
                    rollout, [p.prompt for p in prompts], ecfg.sampling.temperature or 1.0
                )
                lm_loss[name] = held_out_lm_loss(ctx, policy, tokenizer, texts)
            finally:
                policy.shutdown()
            ctx.log.info(f"[eval] {name}: sampled and scored in {time.perf_counter() - clock:.1f}s")
    finally:
        for group in groups:
            group.shutdown()
    result = evaluation_result(ctx, checkpoints, samples, lm_loss, judges, reward is not None)
    path = write_result(ctx.run_dir, result)
    report = write_report(ctx.run_dir, result, read_metrics(ctx.run_dir))
    ctx.log.console.print(result_table(result))
    for message in (v["message"] for v in result["verdicts"].values()):
        ctx.log.info(f"[eval] {message}")
    ctx.log.info(f"[eval] {path}; report {report}")
    ctx.log.end_stage("eval", path, summary_metrics(result))
    return path


def held_out_lm_loss(ctx: JobContext, policy: ActorGroup, tokenizer: Any, texts: list) -> float:
    if not texts:
        return float("nan")
    cfg = ctx.cfg

    def encode(part: list) -> dict:
        return lm_batch(tokenizer, part, cfg.model.max_prompt_tokens, cfg.model.max_seq_len)

    return run_sharded(policy, lambda a: a.eval_lm, encode, texts)["loss"]


def evaluation_result(
    ctx: JobContext,
    checkpoints: dict[str, Path],
    samples: dict[str, SampleSet],
    lm_loss: dict[str, float],
    judges: list,
    has_proxy: bool,
) -> dict[str, Any]:
    ecfg = ctx.cfg.eval
    baseline = next(iter(checkpoints))
    proxy = PROXY if has_proxy else None
    gold = [j.name for j in judges]
    entries, verdicts = {}, {}
    for name, path in checkpoints.items():
        entry = summarize(
            samples[name],
            None if name == baseline else samples[baseline],
            proxy,
            confidence=ecfg.confidence,
            n_resamples=ecfg.bootstrap_resamples,
            seed=ctx.cfg.seed,
        )
        entries[name] = {"path": str(path), "lm_loss": lm_loss[name], **entry}
        if name != baseline:
            verdicts[name] = verdict(entries[name], gold, proxy, name=name, baseline=baseline)
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "baseline": baseline,
        "proxy": proxy,
        "gold": gold,
        "judges": {j.name: getattr(j, "description", "") for j in judges},
        "num_prompts": len(samples[baseline].prompts),
        "sampling": ecfg.sampling.model_dump(),
        "confidence": ecfg.confidence,
        "checkpoints": entries,
        "verdicts": verdicts,
    }


def write_result(run_dir: Path, result: dict[str, Any]) -> Path:
    """RUN_DIR/eval.json, replaced atomically (NaN written as null)."""
    path = run_dir / "eval.json"
    tmp = path.with_name(f".eval.json.tmp{os.getpid()}")
    tmp.write_text(json.dumps(_finite(result), indent=2, allow_nan=False))
    os.replace(tmp, path)
    return path


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def summary_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The numbers summary.json keeps: each win-rate vs the baseline, and the verdicts."""
    out: dict[str, float] = {}
    for name, entry in result["checkpoints"].items():
        for judge, interval in entry["win_rate"].items():
            out[f"{name}_win_rate_{judge}"] = interval["estimate"]
        if entry.get("kl_per_sequence") is not None:
            out[f"{name}_kl"] = entry["kl_per_sequence"]
    for name, v in result["verdicts"].items():
        out[f"{name}_aligned"] = float(v["aligned"])
        out[f"{name}_possible_reward_hacking"] = float(v["possible_reward_hacking"])
    return out


def result_table(result: dict[str, Any]) -> Table:
    """The eval table printed at the end of a job: win-rate vs the baseline with its CI."""
    judges = ([result["proxy"]] if result["proxy"] else []) + result["gold"]
    level = round(100 * result["confidence"])
    table = Table(title=f"win-rate vs {result['baseline']} ({level}% bootstrap CI)")
    table.add_column("policy")
    for judge in judges:
        table.add_column(judge + (" (proxy)" if judge == result["proxy"] else ""))
    columns = ("KL/seq", "LM loss", "ref. logp/tok", "length", "EOS", "distinct-2", "top gained")
    for column in columns:
        table.add_column(column)
    for name, e in result["checkpoints"].items():
        cells = []
        for judge in judges:
            w = e["win_rate"].get(judge)
            cells.append(
                "—" if w is None else f"{w['estimate']:.2f} ({w['low']:.2f}–{w['high']:.2f})"
            )
        top = e["top_gained_words"][0] if e["top_gained_words"] else None
        cells += [
            _num(e.get("kl_per_sequence")),
            _num(e.get("lm_loss")),
            _num(e.get("reference_logprob_per_token")),
            _num(e["length"], 1),
            _num(e["eos_fraction"]),
            _num(e["distinct_2"]),
            "—" if top is None else f"{top['word']} ×{top['ratio']:.1f}",
        ]
        table.add_row(name, *cells)
    return table


def _num(value: float | None, digits: int = 2) -> str:
    return "—" if value is None or value != value else f"{value:.{digits}f}"
