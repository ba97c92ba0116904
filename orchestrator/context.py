"""What the stages of one job share: config, run folder, logger, data, checkpoints so far."""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

from instructray.config import JobConfig, Stage
from instructray.data import (
    Judge,
    PromptExample,
    RankedComparison,
    RottenTomatoesTask,
    SFTExample,
    TextExample,
    VaderJudge,
    read_preferences,
    read_prompts,
    read_sft,
    read_texts,
)
from instructray.evaluation import EvalJudge, TextJudge, load_judge
from instructray.models import default_cache_dir, load_tokenizer, resolve_base_model
from instructray.run_log import RunLogger

T = TypeVar("T")


def split_eval(
    items: list[T],
    fraction: float,
    seed: int,
    max_eval: int = 512,
    key: Callable[[T], Hashable] | None = None,
) -> tuple[list[T], list[T]]:
    """A seeded (train, held-out) split; held-out is ``fraction`` of the items, capped.

    With ``key`` (e.g. the prompt), items sharing a key fall on the same side, so no held-out
    pair shares a prompt with a training pair: whole groups, in shuffled order, are held out
    until the held-out part reaches its size (at least one group, never past the cap unless
    the first group alone is larger).
    """
    groups: dict[Hashable, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(i if key is None else key(item), []).append(i)
    order = list(groups.values())
    random.Random(seed).shuffle(order)
    n_eval = min(max_eval, max(1, int(len(items) * fraction)))
    held_idx: list[int] = []
    taken = 0
    while taken < len(order) and len(held_idx) < n_eval:
        group = order[taken]
        if held_idx and len(held_idx) + len(group) > max_eval:
            break
        held_idx += group
        taken += 1
    held = [items[i] for i in held_idx]
    train = [items[i] for group in order[taken:] for i in group]
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
        """Every prompt of data.prompts (or the task), held-out ones included."""
        return self._pick(self.cfg.data.prompts, read_prompts, "prompts")

    @cached_property
    def _prompt_split(self) -> tuple[list[PromptExample], list[PromptExample]]:
        if self.cfg.data.eval_prompts is not None:
            return self.prompts, read_prompts(self.cfg.data.eval_prompts)
        wanted = max(self.cfg.eval.num_prompts, self.cfg.ppo.monitor.num_prompts)
        n_eval = min(wanted, len(self.prompts) // 5)
        if n_eval == 0:
            return self.prompts, []
        # Held out whether or not this job evaluates, so PPO's prompts do not depend on it
        # and `instructray eval` can measure the run later on prompts no stage saw.
        return self.prompts[:-n_eval], self.prompts[-n_eval:]

    @property
    def train_prompts(self) -> list[PromptExample]:
        """Prompts the labeler and PPO may use: never the held-out eval prompts."""
        return self._prompt_split[0]

    def eval_prompts(self, n: int) -> list[PromptExample]:
        """The first ``n`` held-out prompts (data.eval_prompts, or the last of the prompts)."""
        held = self._prompt_split[1]
        if not held:
            raise ValueError(
                f"no held-out prompts for evaluation: {len(self.prompts)} prompts are too few "
                "to hold out a fifth; give data.eval_prompts"
            )
        return held[:n]

    def pretrain_split(self) -> tuple[list[TextExample], list[TextExample]]:
        """(train, held-out) pre-training texts: pre-training and ptx train on the first part,
        the eval stage measures the alignment tax on the second."""
        return split_eval(self.pretrain_texts, self.cfg.data.eval_fraction, self.cfg.seed, 256)

    @cached_property
    def labeler_judge(self) -> Judge:
        """The built-in task's simulated labeler (rm.labeler.judge), fitted once per job."""
        assert self.task is not None, "only the built-in task has a simulated labeler"
        lcfg = self.cfg.rm.labeler
        if lcfg.judge == "bag_of_words":
            return self.task.labeler_judge()
        cache = self.cfg.output.cache_dir or default_cache_dir()
        fluency_model = resolve_base_model(lcfg.fluency_model, Path(cache))
        return self.task.meaning_judge(fluency_model)

    def gold_judges(self) -> list[EvalJudge]:
        """Judges of alignment that no training stage used: the task's (the labeler's
        noiseless preference, a judge fitted on reviews of other movies, VADER) and eval.judges."""
        judges: list[EvalJudge] = []
        if self.task is not None:
            kind = self.cfg.rm.labeler.judge.replace("_", "-")
            judges += [
                TextJudge(
                    "labeler", self.labeler_judge, f"the simulated labeler ({kind}), noiseless"
                ),
                TextJudge("judge_heldout", self.task.eval_judge(), "bag-of-words LR, other movies"),
                TextJudge("vader", VaderJudge(), "VADER lexicon sentiment (another family)"),
            ]
        judges += [load_judge(spec) for spec in self.cfg.eval.judges]
        return judges

    def check_files(self, stages: list[str]) -> None:
        """Read every user data file the stages will need now, so a malformed line fails the
        job before any actor starts rather than hours into it."""
        needed = {
            "pretrain": ("pretrain_texts",),
            "sft": ("sft_examples",),
            "ppo": ("prompts",) + (("pretrain_texts",) if self.cfg.ppo.ptx_coef > 0 else ()),
            "eval": ("prompts",),
        }
        for stage in stages:
            for name in needed.get(stage, ()):
                if not getattr(self, name):
                    raise ValueError(f"stage {stage!r}: the {name.replace('_', ' ')} are empty")
        if {"rm", "dpo"} & set(stages):
            self.user_preferences()
        if {"ppo", "eval"} & set(stages):
            self._prompt_split  # noqa: B018  (reads data.eval_prompts now)

    def rl_prompts(self, labeled: int) -> list[PromptExample]:
        """PPO prompts: when the task's prompts also fed the labeler, the ones it did not see."""
        prompts = self.train_prompts
        if self.cfg.data.prompts is None and len(prompts) - labeled >= labeled // 2:
            return prompts[labeled:]
        return prompts

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
    resuming: bool = False
    """`instructray run --resume`: the unfinished stage continues from its newest train state."""

    def checkpoint_dir(self, name: str) -> Path:
        return self.run_dir / "checkpoints" / name

    def sft_model(self) -> Path:
        """Input of rm, ppo and dpo: this job's SFT, a given SFT checkpoint, or the base."""
        if "sft" in self.checkpoints:
            return self.checkpoints["sft"]
        if self.cfg.model.sft_checkpoint:
            return Path(self.cfg.model.sft_checkpoint)
        return self.checkpoints.get("pretrain", self.base_model)

    def reward_model(self) -> Path | None:
        """This job's RM, a given one, or None (PPO with ``ppo.reward_function``)."""
        if "rm" in self.checkpoints:
            return self.checkpoints["rm"]
        given = self.cfg.model.reward_checkpoint
        return None if given is None else Path(given)

    def tokenizer(self, path: Path) -> Any:
        return load_tokenizer(path)
