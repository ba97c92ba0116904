"""PPO(-ptx) stage: start the five roles, run the coordinator, save policy and critic.

InstructGPT's wiring: policy and reference start from the SFT model; the critic starts from the
reward model; the ptx term replays pre-training text."""

from __future__ import annotations

from pathlib import Path
from statistics import fmean

from instructray.algorithms import CRITIC_FREE
from instructray.orchestrator.context import JobContext
from instructray.orchestrator.ppo import PPOCoordinator, PPORoles
from instructray.orchestrator.roles import (
    engine_spec,
    start_causal_lm,
    start_rollout,
    start_value_model,
)
from instructray.orchestrator.stages.common import save


def start_roles(ctx: JobContext) -> PPORoles:
    cfg, scfg = ctx.cfg, ctx.cfg.ppo
    sft, rm = str(ctx.sft_model()), str(ctx.reward_model())
    policy_spec = engine_spec(
        cfg,
        scfg.mini_batch_size,
        scfg.micro_batch_size,
        cfg.resources.policy.actors,
        scfg.policy_optim,
        "ppo policy",
    )
    critic = None
    if scfg.advantage_estimator not in CRITIC_FREE:
        critic_spec = engine_spec(
            cfg,
            scfg.mini_batch_size,
            scfg.micro_batch_size,
            cfg.resources.critic.actors,
            scfg.critic_optim,
            "ppo critic",
        )
        critic = start_value_model(cfg, "critic", rm, critic_spec)
    return PPORoles(
        policy=start_causal_lm(cfg, "policy", sft, policy_spec),
        reference=start_causal_lm(cfg, "reference", sft, spec=None),
        reward=start_value_model(cfg, "reward", rm, spec=None),
        rollout=start_rollout(cfg, sft),
        critic=critic,
    )


def run(ctx: JobContext) -> Path:
    cfg, scfg = ctx.cfg, ctx.cfg.ppo
    sft = ctx.sft_model()
    ptx_texts = ctx.data.pretrain_texts if scfg.ptx_coef > 0 else []
    ctx.log.info(
        f"[ppo] {scfg.iterations} iterations × {scfg.rollout_batch_size} prompts × "
        f"{scfg.samples_per_prompt} samples; advantages {scfg.advantage_estimator}, "
        f"KL {scfg.kl.estimator} β={scfg.kl.init_coef}"
        f"{' adaptive' if scfg.kl.adaptive else ''}, ptx γ={scfg.ptx_coef}; "
        f"policy {sft}, reward model {ctx.reward_model()}"
    )
    roles = start_roles(ctx)
    try:
        coordinator = PPOCoordinator(
            scfg,
            cfg.rollout,
            roles,
            ctx.tokenizer(sft),
            ctx.data.rl_prompts(cfg.rm.labeler.num_prompts),
            ptx_texts,
            cfg.model.max_prompt_tokens,
            cfg.model.max_seq_len,
            cfg.seed,
        )
        ctx.log.info(f"[ppo] weight sync into the engines: {coordinator.weight_sync.transport}")
        history = []
        for iteration in range(1, scfg.iterations + 1):
            metrics = coordinator.train_step(iteration)
            history.append(metrics)
            ctx.log.log("ppo", iteration, metrics, scfg.iterations)
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
        },
    )
    return checkpoint
