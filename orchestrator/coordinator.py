"""The PPO coordinator: rollouts → scores → advantages → PPO updates → weight sync.

Every model lives on its own actor group; this loop only moves batches between them and does the
cheap per-token arithmetic (KL, reward shaping, advantages) on the driver."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from statistics import fmean
from typing import Any, TypeVar

import torch

from instructray.actors.group import ActorGroup, RoleError, resolved, wait
from instructray.algorithms import (
    AdaptiveKLController,
    FixedKLController,
    KLController,
    engine_mismatch,
    get_advantage_estimator,
    masked_mean,
    masked_sum,
)
from instructray.config import PPOStageConfig, RolloutConfig, SamplingConfig
from instructray.config.rank import CriticLossParams, PolicyLossParams
from instructray.data import PromptExample, TextExample
from instructray.orchestrator.batching import cycle, lm_batch, prompt_ids
from instructray.orchestrator.experience import Experience, assemble_experience
from instructray.orchestrator.measure import RewardSource, forward_on
from instructray.orchestrator.recovery import PROBE, STATELESS_ROLES, RoleRestarts
from instructray.orchestrator.stages.common import Stopwatch
from instructray.orchestrator.weight_sync import choose_weight_sync
from instructray.rollout.batch import Rollout
from instructray.training.batches import PolicyShard, TextBatch
from instructray.training.guard import check_finite

T = TypeVar("T")
ENGINE_GAP_LIMIT = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 5e-2}
"""Largest mean |log-prob| gap between restarted engines and the policy that passes, by dtype:
fp32 on CPU shows ~1e-7 (other kernels, same weights), one tiny-preset PPO step moves it ~1e-3."""


@dataclass
class PendingRollout:
    refs: list[Any]
    """The engines' results, one ref per engine."""
    group_ids: torch.Tensor
    version: int
    """The policy version (weight syncs so far) the engines sampled with."""
    prompt_ids: list[list[int]]
    seed: int
    """What the batch was launched with: engines that restart sample it again."""


@dataclass
class PPORoles:
    policy: ActorGroup
    reference: ActorGroup
    reward: ActorGroup | None
    """None when ``ppo.reward_function`` scores the responses instead of a reward model."""
    rollout: ActorGroup
    critic: ActorGroup | None
    """None when the advantage estimator needs no critic."""

    def shutdown(self) -> None:
        for group in (self.policy, self.reference, self.reward, self.rollout, self.critic):
            if group is not None:
                group.shutdown()


def generate_on(
    engines: ActorGroup, ids: list[list[int]], sampling: SamplingConfig, n: int, seed: int
) -> list[Any]:
    """Start sampling ``n`` responses per prompt, the prompts split between the engines;
    `Rollout.merge` of the results is one batch in prompt order."""
    per_engine = -(-len(ids) // engines.world_size)
    chunks = [ids[i : i + per_engine] for i in range(0, len(ids), per_engine)]
    return engines.map_async(lambda a: a.generate, chunks, sampling, n, seed)


def make_kl_controller(cfg: PPOStageConfig) -> KLController:
    if cfg.kl.adaptive:
        return AdaptiveKLController(cfg.kl.init_coef, cfg.kl.target, cfg.kl.horizon)
    return FixedKLController(cfg.kl.init_coef)


class PPOCoordinator:
    def __init__(
        self,
        cfg: PPOStageConfig,
        rollout_cfg: RolloutConfig,
        roles: PPORoles,
        reward: RewardSource,
        tokenizer: Any,
        prompts: Sequence[PromptExample],
        ptx_texts: Sequence[TextExample],
        max_prompt_tokens: int,
        max_seq_len: int,
        seed: int,
        max_role_restarts: int = 0,
        dtype: str = "float32",
    ):
        self.cfg = cfg
        self.rollout_cfg = rollout_cfg
        self.dtype = dtype
        self.colocate = rollout_cfg.colocate
        self.roles = roles
        self.reward = reward
        self.weight_sync = choose_weight_sync(rollout_cfg, roles.policy, roles.rollout)
        stateless = {name: getattr(roles, name) for name in STATELESS_ROLES}
        self.restarts = RoleRestarts(
            {name: group for name, group in stateless.items() if group is not None},
            max_role_restarts,
        )
        self.tokenizer = tokenizer
        self.max_prompt_tokens = max_prompt_tokens
        self.max_seq_len = max_seq_len
        self.seed = seed
        self.estimator = get_advantage_estimator(cfg.advantage_estimator)
        self.kl_ctl = make_kl_controller(cfg)
        self.prompts = cycle(prompts, seed)
        self.ptx_texts = cycle(ptx_texts, seed + 1) if cfg.ptx_coef > 0 and ptx_texts else None
        self.generator = torch.Generator().manual_seed(seed)
        self.policy_version = 0
        """Weight syncs so far: the version of the policy the engines sample from."""
        self.pending: deque[PendingRollout] = deque()
        """Rollout batches already being generated (async mode), oldest first."""

    # -- train state (see orchestrator.resume) -------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What continues this loop exactly after a restart; the roles save their own."""
        return {
            "kl_coef": self.kl_ctl.value,
            "prompts_drawn": self.prompts.drawn,
            "ptx_drawn": self.ptx_texts.drawn if self.ptx_texts is not None else 0,
            "minibatch_generator": self.generator.get_state(),
            "policy_version": self.policy_version,
            # Async mode: the rollouts generated for later iterations are saved (waited for,
            # not dropped), so the resumed run trains on what the uninterrupted one would.
            "pending": [
                (wait(p.refs), p.group_ids, p.version, p.prompt_ids, p.seed) for p in self.pending
            ],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.kl_ctl.value = state["kl_coef"]
        self.prompts = cycle(self.prompts.items, self.seed, state["prompts_drawn"])
        if self.ptx_texts is not None:
            self.ptx_texts = cycle(self.ptx_texts.items, self.seed + 1, state["ptx_drawn"])
        self.generator.set_state(state["minibatch_generator"])
        self.policy_version = state["policy_version"]
        self.pending = deque(
            PendingRollout(resolved(results), *rest) for results, *rest in state["pending"]
        )

    # -- one iteration ------------------------------------------------------------------------
    def train_step(self, iteration: int) -> dict[str, float]:
        clock, timings = Stopwatch(), {}

        # A stateless role that dies is restarted and the call retried with the same batch
        # (an engine restart samples the pending batches again, this one first).
        rollout, group_ids, sampled_by = self.with_restarts(partial(self.next_rollout, iteration))
        timings["time_generate"] = clock.lap()
        exp = self.with_restarts(partial(self.make_experience, rollout, group_ids))
        timings["time_score"] = clock.lap()
        self.pending.popleft()
        # Weight syncs between sampling and training this batch (async: up to the queue length).
        staleness = float(self.policy_version - sampled_by)
        check_finite(
            {"scores": exp.scores, "advantages": exp.advantages, "returns": exp.returns},
            f"PPO iteration {iteration}, before the updates",
        )

        train_metrics = self.learn(exp)
        timings["time_train"] = clock.lap()

        sync_info = self.sync_weights()
        timings["time_sync"] = clock.lap()
        self.policy_version += 1

        mask = exp.action_mask
        kl_per_sample = masked_sum(exp.kl, mask, dim=-1)
        metrics = {
            "loss": train_metrics["policy_loss"],
            "reward_mean": exp.scores.mean().item(),
            "reward_std": exp.scores.std().item() if len(exp) > 1 else 0.0,
            "kl": kl_per_sample.mean().item(),
            "kl_coef": self.kl_ctl.value,
            "rollout_staleness": staleness,
            "role_restarts": float(self.restarts.done),
            "response_length": mask.sum(-1).float().mean().item(),
            "return_mean": masked_mean(exp.returns, mask).item(),
            **train_metrics,
            **sync_info,
            **timings,
        }
        if exp.ended is not None:
            metrics["eos_fraction"] = exp.ended.float().mean().item()
        if not self.cfg.async_queue:  # async: time_generate is only the wait, not generation
            metrics["tokens_per_s"] = mask.sum().item() / max(timings["time_generate"], 1e-9)
        if exp.rollout_logprobs is not None and self.cfg.old_logprobs == "recompute":
            metrics |= engine_mismatch(exp.logprobs, exp.rollout_logprobs, mask)
        if exp.is_weights is not None:
            metrics["is_weight_mean"] = masked_mean(exp.is_weights, mask).item()
        self.kl_ctl.update(metrics["kl"], n_steps=len(exp))
        return metrics

    # -- the pieces ---------------------------------------------------------------------------
    def launch_generation(self, iteration: int) -> PendingRollout:
        """Start sampling the next prompts on every engine (prompts split between engines)."""
        cfg = self.cfg
        prompts = [next(self.prompts) for _ in range(cfg.rollout_batch_size)]
        ids = prompt_ids(self.tokenizer, prompts, self.max_prompt_tokens)
        group_ids = torch.arange(len(prompts)).repeat_interleave(cfg.samples_per_prompt)
        return self._generate(ids, group_ids, self.seed * 100003 + iteration)

    def _generate(self, ids: list[list[int]], group_ids: torch.Tensor, seed: int) -> PendingRollout:
        cfg = self.cfg
        refs = generate_on(self.roles.rollout, ids, cfg.sampling, cfg.samples_per_prompt, seed)
        return PendingRollout(refs, group_ids, self.policy_version, ids, seed)

    def next_rollout(self, iteration: int) -> tuple[Rollout, torch.Tensor, int]:
        """This iteration's rollouts, the head of ``pending`` (popped once they are scored).
        In async mode up to ``async_queue`` later batches are already being generated (with
        the weights of their launch time) while we train. Also returns the policy version the
        batch was sampled with."""
        while len(self.pending) < 1 + self.cfg.async_queue:
            self.pending.append(self.launch_generation(iteration + len(self.pending)))
        batch = self.pending[0]
        rollout = Rollout.merge(wait(batch.refs), self.tokenizer.pad_token_id)
        if self.colocate:
            self.roles.rollout.call(lambda a: a.sleep)
        return rollout, batch.group_ids, batch.version

    def make_experience(self, rollout: Rollout, group_ids: torch.Tensor) -> Experience:
        """Score the rollouts on every model at once, then shape rewards and advantages."""
        roles, cfg = self.roles, self.cfg
        temperature = cfg.sampling.temperature
        inputs = rollout.action_batch()
        engine_logprobs = rollout.logprobs
        from_engine = cfg.old_logprobs == "engine" and engine_logprobs is not None
        policy_refs = (
            []
            if from_engine
            else forward_on(roles.policy, lambda a: a.action_logprobs, inputs, temperature)
        )
        ref_refs = forward_on(roles.reference, lambda a: a.action_logprobs, inputs, temperature)
        score_refs = self.reward.start(rollout)
        value_refs = (
            forward_on(roles.critic, lambda a: a.action_values, inputs)
            if roles.critic is not None
            else []
        )
        logprobs = engine_logprobs if from_engine else torch.cat(wait(policy_refs))
        ref_logprobs = torch.cat(wait(ref_refs))
        scores = self.reward.result(score_refs, rollout)
        values = torch.cat(wait(value_refs)) if value_refs else None
        return assemble_experience(
            rollout,
            group_ids,
            logprobs,
            ref_logprobs,
            scores,
            values,
            self.tokenizer.eos_token_id,
            cfg,
            self.kl_ctl.value,
            self.estimator,
        )

    def _ptx_shards(self, world_size: int) -> list[TextBatch | None]:
        if self.ptx_texts is None:
            return [None] * world_size
        texts = [next(self.ptx_texts) for _ in range(self.cfg.ptx_batch_size * world_size)]
        per_rank = self.cfg.ptx_batch_size
        return [
            lm_batch(self.tokenizer, texts[r * per_rank : (r + 1) * per_rank], 0, self.max_seq_len)
            for r in range(world_size)
        ]

    def learn(self, exp: Experience) -> dict[str, float]:
        """``ppo_epochs`` passes of mini-batch updates; policy and critic train side by side."""
        roles, cfg = self.roles, self.cfg
        policy_rows, critic_rows = [], []
        for _ in range(cfg.ppo_epochs):
            for mb in exp.minibatches(cfg.mini_batch_size, self.generator):
                shards = mb.shard(roles.policy.world_size)
                ptx = self._ptx_shards(roles.policy.world_size)
                policy_refs = roles.policy.map_async(
                    lambda a: a.train_ppo,
                    [PolicyShard(s.policy_batch(), p) for s, p in zip(shards, ptx, strict=True)],
                    PolicyLossParams.of(cfg),
                )
                critic_refs = []
                if roles.critic is not None:
                    critic_shards = [s.critic_batch() for s in mb.shard(roles.critic.world_size)]
                    critic_refs = roles.critic.map_async(
                        lambda a: a.train_critic, critic_shards, CriticLossParams.of(cfg)
                    )
                policy_rows += wait(policy_refs)
                critic_rows += wait(critic_refs)
        rows = policy_rows + critic_rows
        keys = {k for row in rows for k in row}
        return {k: fmean(row[k] for row in rows if k in row) for k in sorted(keys)}

    def sync_weights(self) -> dict[str, float]:
        """Make the updated policy the one that generates (engines wake up first when
        colocated); the transport was chosen from the actors' placement at start."""
        return self.with_restarts(lambda: self.weight_sync(self.roles.policy, self.roles.rollout))

    # -- in-place restarts of the stateless roles (see orchestrator.recovery) ------------------
    def with_restarts(self, work: Callable[[], T]) -> T:
        """``work()``, run again after a stateless role it used died and restarted in place
        (`restart_role` re-raises what cannot be handled so, and bounds the restarts)."""
        while True:
            try:
                return work()
            except RoleError as err:
                self.restart_role(err)

    def restart_role(self, err: RoleError) -> None:
        """Start the stateless role that ``err`` names again, or re-raise ``err``. What the
        run computes stays exactly what an uninterrupted run computes: a batch the engines
        lost is sampled again with the same prompts, seeds and weights. In async mode the
        batches in flight were sampled by older weights, which only the train state holds:
        there a lost engine rolls the stage back instead."""
        if err.role == "rollout" and self.cfg.async_queue:
            raise err
        group = self.restarts.restart(err)
        if group is not self.roles.rollout:
            return
        # New engines may sit on another node: choose the transport again.
        self.weight_sync = choose_weight_sync(self.rollout_cfg, self.roles.policy, group)
        self.weight_sync(self.roles.policy, group)
        gap = self.engine_policy_gap()
        if gap > ENGINE_GAP_LIMIT[self.dtype]:  # NaN (no engine log-probs) cannot be checked
            raise RoleError(
                f"the restarted rollout engines do not hold the policy's weights: their "
                f"greedy tokens' log-probs differ from the policy's by {gap:.3g} on average"
            )
        self.restarts.notes[self.restarts.done] += (
            f"; the current policy weights synced (log-prob gap {gap:.2g})"
        )
        lost, self.pending = self.pending, deque()
        for batch in lost:
            self.pending.append(self._generate(batch.prompt_ids, batch.group_ids, batch.seed))

    def engine_policy_gap(self) -> float:
        """Mean |engine − policy| log-prob of the engines' greedy tokens on a few training
        prompts: about 0 when the engines hold the policy's current weights (NaN from an
        engine that reports no log-probs)."""
        n = max(self.roles.policy.world_size, self.roles.rollout.world_size)
        ids = prompt_ids(self.tokenizer, list(self.prompts.items[:n]), self.max_prompt_tokens)
        refs = generate_on(self.roles.rollout, ids, PROBE, 1, 0)
        rollout = Rollout.merge(wait(refs), self.tokenizer.pad_token_id)
        if rollout.logprobs is None:
            return float("nan")
        inputs = rollout.action_batch()
        policy = forward_on(self.roles.policy, lambda a: a.action_logprobs, inputs, 1.0)
        diff = (torch.cat(wait(policy)) - rollout.logprobs).abs()
        return masked_mean(diff, rollout.action_mask).item()
