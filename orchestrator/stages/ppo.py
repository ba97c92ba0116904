"""PPO(-ptx) stage: start the five roles, run the coordinator, save policy and critic.

InstructGPT's wiring: policy and reference start from the SFT model; the critic starts from the
reward model; the ptx term replays pre-training text."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from statistics import fmean
from typing import Any

from instructray.algorithms import CRITIC_FREE
from instructray.orchestrator.context import JobContext
from instructray.orchestrator.coordinator import PPOCoordinator, PPORoles
from instructray.orchestrator.measure import RewardSource
from instructray.orchestrator.monitor import PPOMonitor
from instructray.orchestrator.resume import StageResume
from instructray.orchestrator.roles import (
    deepspeed_spec,
    role_size,
    start_causal_lm,
    start_rollout,
    start_value_model,
)
from instructray.orchestrator.stages.common import Stopwatch, save


def start_roles(ctx: JobContext) -> PPORoles:
    cfg, scfg = ctx.cfg, ctx.cfg.ppo
    sft, rm = str(ctx.sft_model()), ctx.reward_model()
    uses_rm = scfg.reward_function is None
    # RL compares log-probs of the same tokens across passes: no dropout noise.
    policy_spec = deepspeed_spec(
        cfg,
        scfg.mini_batch_size,
        scfg.micro_batch_size,
        role_size(cfg, "policy"),
        scfg.policy_optim,
        "ppo policy",
        dropout=False,
    )
    critic = None
    if scfg.advantage_estimator not in CRITIC_FREE:
        critic_spec = deepspeed_spec(
            cfg,
            scfg.mini_batch_size,
            scfg.micro_batch_size,
            role_size(cfg, "critic"),
            scfg.critic_optim,
            "ppo critic",
            dropout=False,
        )
        # InstructGPT initialises the critic from the RM; without one, from the SFT model.
        critic = start_value_model(cfg, "critic", str(rm or sft), critic_spec)
    return PPORoles(
        policy=start_causal_lm(cfg, "policy", sft, policy_spec),
        reference=start_causal_lm(cfg, "reference", sft, spec=None),
        reward=start_value_model(cfg, "reward", str(rm), spec=None) if uses_rm else None,
        rollout=start_rollout(cfg, sft),
        critic=critic,
    )


def run(ctx: JobContext) -> Path:
    cfg, scfg = ctx.cfg, ctx.cfg.ppo
    sft = ctx.sft_model()
    ptx_texts = ctx.data.pretrain_split()[0] if scfg.ptx_coef > 0 else []
    reward_name = scfg.reward_function or f"reward model {ctx.reward_model()}"
    ctx.log.info(
        f"[ppo] {scfg.iterations} iterations × {scfg.rollout_batch_size} prompts × "
        f"{scfg.samples_per_prompt} samples at T={scfg.sampling.temperature}; advantages "
        f"{scfg.advantage_estimator}, KL {scfg.kl.estimator} β={scfg.kl.init_coef}"
        f"{' adaptive' if scfg.kl.adaptive else ''}, ptx γ={scfg.ptx_coef}; "
        f"policy {sft}, reward: {reward_name}"
    )
    tokenizer = ctx.tokenizer(sft)
    roles = start_roles(ctx)
    try:
        reward = RewardSource.of(roles.reward, scfg.reward_function, tokenizer)
        coordinator = PPOCoordinator(
            scfg,
            cfg.rollout,
            roles,
            reward,
            tokenizer,
            ctx.data.rl_prompts(cfg.rm.labeler.num_prompts),
            ptx_texts,
            cfg.model.max_prompt_tokens,
            cfg.model.max_seq_len,
            cfg.seed,
            max_role_restarts=cfg.ray.max_role_restarts,
            dtype=cfg.model.dtype,
        )
        sync = coordinator.weight_sync
        why = f" ({sync.reason})" if sync.reason else ""
        ctx.log.info(f"[ppo] weight sync into the engines: {sync.transport}{why}")
        resume = StageResume.open(ctx, "ppo")
        trainable = {"policy": roles.policy} | ({"critic": roles.critic} if roles.critic else {})
        history: list[dict[str, float]] = []
        monitor = start_monitor(ctx, roles, reward, tokenizer, baseline=resume.step == 0)
        if resume.step:
            saved = resume.load(trainable)
            coordinator.load_state_dict(saved["coordinator"])
            history = saved["history"]
            if monitor is not None:
                monitor.detector = saved["monitor"]
            coordinator.sync_weights()  # the engines started with the SFT weights
        for iteration in range(resume.step + 1, scfg.iterations + 1):
            metrics = coordinator.train_step(iteration)
            if monitor is not None and monitor.due(iteration, scfg.iterations):
                metrics |= coordinator.with_restarts(partial(observe, ctx, monitor, iteration))
            for number, note in coordinator.restarts.drain():
                ctx.log.warn("ppo", iteration, "role_restarted", note, key=str(number))
            history.append(metrics)
            ctx.log.log("ppo", iteration, metrics, scfg.iterations)
            if resume.due(iteration, scfg.iterations):
                driver = {
                    "coordinator": coordinator.state_dict(),
                    "history": history,
                    "monitor": monitor.detector if monitor is not None else None,
                }
                saved_to = resume.save(iteration, trainable, driver)
                ctx.log.info(f"[ppo] train state saved: {saved_to}")
        checkpoint = save(ctx, roles.policy, "ppo")
        if roles.critic is not None:
            save(ctx, roles.critic, "ppo_critic")
    finally:
        roles.shutdown()
    window = max(1, len(history) // 4)
    ctx.log.end_stage(
        "ppo",
        checkpoint,
        {
            "reward_first": fmean(m["reward_mean"] for m in history[:window]),
            "reward_last": fmean(m["reward_mean"] for m in history[-window:]),
            "kl_last": fmean(m["kl"] for m in history[-window:]),
            "seconds_per_iteration": fmean(
                sum(v for k, v in m.items() if k.startswith("time_")) for m in history
            ),
            "hacking_warnings": float(sum(w["stage"] == "ppo" for w in ctx.log.warnings)),
        },
    )
    return checkpoint


def start_monitor(
    ctx: JobContext, roles: PPORoles, reward: RewardSource, tokenizer: Any, baseline: bool = True
) -> PPOMonitor | None:
    """The reward-hacking monitor, with its baseline observation of the SFT policy (a resumed
    stage restores the saved one instead)."""
    cfg, mcfg = ctx.cfg, ctx.cfg.ppo.monitor
    if mcfg.every == 0:
        return None
    judges = ctx.data.gold_judges()
    monitor = PPOMonitor(
        mcfg,
        cfg.ppo.sampling,
        roles,
        reward,
        judges,
        tokenizer,
        ctx.data.eval_prompts(mcfg.num_prompts),
        cfg.model.max_prompt_tokens,
        colocate=cfg.rollout.colocate,
    )
    names = ", ".join(j.name for j in judges) or "none (token frequencies only)"
    ctx.log.info(
        f"[ppo] reward-hacking monitor: {len(monitor.prompts)} held-out prompts every "
        f"{mcfg.every} iterations; gold judges: {names}"
    )
    if baseline:  # step 0 is the SFT policy before any update: every later one compares to it
        ctx.log.log("ppo", 0, observe(ctx, monitor, 0), cfg.ppo.iterations)
    return monitor


def observe(ctx: JobContext, monitor: PPOMonitor, iteration: int) -> dict[str, float]:
    clock = Stopwatch()
    result = monitor.observe(iteration)
    for warning in result.warnings:
        key = str(warning.detail.get("word") or warning.detail.get("judge") or "")
        ctx.log.warn("ppo", iteration, warning.kind, warning.message, key=key)
    return result.metrics | {"time_monitor": clock.lap()}
