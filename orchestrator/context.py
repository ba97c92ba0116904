"""What the stages of one job share: config, run folder, logger, data, checkpoints so far."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

from instructray.config import JobConfig, Stage
from instructray.data import (
    PromptExample,
    RankedComparison,
    RottenTomatoesTask,
    SFTExample,
    TextExample,
    read_preferences,
    read_prompts,
    read_sft,
    read_texts,
)
from instructray.models import load_tokenizer
from instructray.run_log import RunLogger

T = TypeVar("T")


def split_eval(
    items: list[T], fraction: float, seed: int, max_eval: int = 512
) -> tuple[list[T], list[T]]:
    """A seeded (train, held-out) split; held-out is ``fraction`` of the items, capped."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_eval = min(max_eval, max(1, int(len(items) * fraction)))
    held = [items[i] for i in order[:n_eval]]
    train = [items[i] for i in order[n_eval:]]
    return train, held


class JobData:
    """Each dataset from its file when the config names one, else from the built-in task."""

    def __init__(self, cfg: JobConfig):
        self.cfg = cfg

    @cached_property
    def task(self) -> RottenTomatoesTask | None:
        if self.cfg.data.task is None:
            return None
        return RottenTomatoesTask.build(seed=self.cfg.seed)

    def _pick(self, path: Path | None, reader: Any, from_task: str) -> list[Any]:
        if path is not None:
            return reader(path)
        assert self.task is not None, "config validation guarantees a file or a task"
        return getattr(self.task, from_task)()

    @cached_property
    def pretrain_texts(self) -> list[TextExample]:
        return self._pick(self.cfg.data.pretrain, read_texts, "pretrain_texts")

    @cached_property
    def sft_examples(self) -> list[SFTExample]:
        return self._pick(self.cfg.data.sft, read_sft, "sft_examples")

    @cached_property
    def prompts(self) -> list[PromptExample]:
        return self._pick(self.cfg.data.prompts, read_prompts, "prompts")

    def check_files(self, stages: list[str]) -> None:
        """Read every user data file the stages will need now, so a malformed line fails the
        job before any actor starts rather than hours into it."""
        needed = {
            "pretrain": ("pretrain_texts",),
            "sft": ("sft_examples",),
            "ppo": ("prompts",) + (("pretrain_texts",) if self.cfg.ppo.ptx_coef > 0 else ()),
        }
        for stage in stages:
            for name in needed.get(stage, ()):
                if not getattr(self, name):
                    raise ValueError(f"stage {stage!r}: the {name.replace('_', ' ')} are empty")
        if {"rm", "dpo"} & set(stages):
            self.user_preferences()

    def rl_prompts(self, labeled: int) -> list[PromptExample]:
        """PPO prompts: when the task's prompts also fed the labeler, the ones it did not see."""
        if self.cfg.data.prompts is None and len(self.prompts) - labeled >= labeled // 2:
            return self.prompts[labeled:]
        return self.prompts

    def user_preferences(self) -> list[RankedComparison] | None:
        path = self.cfg.data.preferences
        if path is None:
            return None
        return read_preferences(path, max_chars=self.cfg.data.preference_max_chars)


@dataclass
class JobContext:
    cfg: JobConfig
    run_dir: Path
    log: RunLogger
    base_model: Path
    data: JobData
    checkpoints: dict[Stage, Path] = field(default_factory=dict)
    comparisons: list[RankedComparison] | None = None
    """Rankings used by the rm stage (a user file or the simulated labeler's); dpo reuses them."""

    def checkpoint_dir(self, name: str) -> Path:
        return self.run_dir / "checkpoints" / name

    def sft_model(self) -> Path:
        """Input of rm, ppo and dpo: this job's SFT, a given SFT checkpoint, or the base."""
        if "sft" in self.checkpoints:
            return self.checkpoints["sft"]
        if self.cfg.model.sft_checkpoint:
            return Path(self.cfg.model.sft_checkpoint)
        return self.checkpoints.get("pretrain", self.base_model)

    def reward_model(self) -> Path:
        if "rm" in self.checkpoints:
            return self.checkpoints["rm"]
        assert self.cfg.model.reward_checkpoint, "config validation requires one"
        return Path(self.cfg.model.reward_checkpoint)

    def tokenizer(self, path: Path) -> Any:
        return load_tokenizer(path)
