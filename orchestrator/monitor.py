"""The reward-hacking monitor of a PPO run: every ``ppo.monitor.every`` iterations the current
policy answers a fixed set of held-out prompts, which the proxy reward and the gold judges
score; `instructray.evaluation.RewardHackingMonitor` decides whether the gains look real.

A rising proxy reward proves nothing: the monitor logs the gold judges beside it and warns when
the proxy rises while gold falls, or when one word's frequency explodes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from instructray.actors.group import wait
from instructray.config import MonitorConfig, SamplingConfig
from instructray.data import PromptExample
from instructray.evaluation import EvalJudge, MonitorResult, RewardHackingMonitor
from instructray.orchestrator.batching import prompt_ids
from instructray.orchestrator.coordinator import PPORoles, generate_on
from instructray.orchestrator.measure import PROXY, RewardSource, SampleScorer
from instructray.rollout.batch import Rollout

MONITOR_SEED = 7919
"""The same sampling seed at every observation: common random numbers make the comparison
with the first observation less noisy."""


class PPOMonitor:
    def __init__(
        self,
        cfg: MonitorConfig,
        sampling: SamplingConfig,
        roles: PPORoles,
        reward: RewardSource,
        judges: Sequence[EvalJudge],
        tokenizer: Any,
        prompts: Sequence[PromptExample],
        max_prompt_tokens: int,
        colocate: bool = False,
    ):
        self.cfg = cfg
        self.colocate = colocate
        self.sampling = sampling
        self.engines = roles.rollout
        self.tokenizer = tokenizer
        self.prompts = [p.prompt for p in prompts[: cfg.num_prompts]]
        self.ids = prompt_ids(tokenizer, prompts[: cfg.num_prompts], max_prompt_tokens)
        self.scorer = SampleScorer(roles.policy, roles.reference, reward, judges, tokenizer)
        self.detector = RewardHackingMonitor(
            proxy=PROXY,
            gold=[j.name for j in judges],
            token_ratio=cfg.token_ratio,
            token_min_increase=cfg.token_min_increase,
            token_min_count=cfg.token_min_count,
        )

    def due(self, iteration: int, last: int) -> bool:
        return self.cfg.every > 0 and (iteration % self.cfg.every == 0 or iteration == last)

    def observe(self, iteration: int) -> MonitorResult:
        """Sample and score the monitor prompts with the engines' current weights (call it
        after a weight sync; iteration 0 is the SFT policy, the baseline)."""
        refs = generate_on(self.engines, self.ids, self.sampling, 1, MONITOR_SEED)
        rollout = Rollout.merge(wait(refs), self.tokenizer.pad_token_id)
        if self.colocate:  # the scoring passes need the device the engine shares
            self.engines.call(lambda a: a.sleep)
        try:
            samples = self.scorer.score(rollout, self.prompts, self.sampling.temperature)
        finally:  # the next iteration (or a retry after a restart) generates first
            if self.colocate:
                self.engines.call(lambda a: a.wake_up)
        return self.detector.observe(iteration, samples)
