"""Plain records passed between the data readers, the labeler and the trainers."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class SFTExample:
    """A demonstration: the policy learns to write ``response`` after ``prompt``."""

    prompt: str
    response: str


TokenIds = tuple[int, ...]


@dataclass(frozen=True)
class RankedComparison:
    """K ≥ 2 answers to one prompt, best first (InstructGPT's ranking format).

    Answers sampled by the policy also carry the tokens the sampler produced
    (``prompt_ids``, ``ranked_ids``): the trainers then use exactly those, EOS included only
    where the sampler emitted it, so a cut-off answer is scored in RM training as PPO will
    score a cut-off rollout. Answers from a file have no ids and are complete texts.
    """

    prompt: str
    ranked: tuple[str, ...]
    prompt_ids: TokenIds | None = None
    ranked_ids: tuple[TokenIds, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.ranked, tuple):
            object.__setattr__(self, "ranked", tuple(self.ranked))
        if len(self.ranked) < 2:
            raise ValueError(f"a ranking needs at least 2 answers, got {len(self.ranked)}")
        if (self.prompt_ids is None) != (self.ranked_ids is None):
            raise ValueError("give both prompt_ids and ranked_ids, or neither")
        if self.ranked_ids is not None and len(self.ranked_ids) != len(self.ranked):
            raise ValueError(
                f"{len(self.ranked_ids)} token-id answers for {len(self.ranked)} ranked answers"
            )

    def pairs(self) -> Iterator[tuple[str, str]]:
        """All (better, worse) pairs: K(K−1)/2 of them."""
        for i, better in enumerate(self.ranked):
            for worse in self.ranked[i + 1 :]:
                yield better, worse

    def preference_pairs(self) -> Iterator[PreferencePair]:
        """All K(K−1)/2 (chosen, rejected) pairs, token ids kept."""
        ids = self.ranked_ids
        for i in range(len(self.ranked)):
            for j in range(i + 1, len(self.ranked)):
                yield PreferencePair(
                    self.prompt,
                    self.ranked[i],
                    self.ranked[j],
                    self.prompt_ids,
                    None if ids is None else ids[i],
                    None if ids is None else ids[j],
                )


@dataclass(frozen=True)
class PreferencePair:
    """One (chosen, rejected) pair for DPO; token ids as in `RankedComparison`."""

    prompt: str
    chosen: str
    rejected: str
    prompt_ids: TokenIds | None = None
    chosen_ids: TokenIds | None = None
    rejected_ids: TokenIds | None = None


@dataclass(frozen=True)
class PromptExample:
    """A prompt for RL rollouts."""

    prompt: str


@dataclass(frozen=True)
class TextExample:
    """Plain text for the pretraining-mix (ptx) loss."""

    text: str
