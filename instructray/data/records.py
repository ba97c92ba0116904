"""Plain records passed between the data readers, the labeler and the trainers."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class SFTExample:
    """A demonstration: the policy learns to write ``response`` after ``prompt``."""

    prompt: str
    response: str


@dataclass(frozen=True)
class RankedComparison:
    """K ≥ 2 answers to one prompt, best first (InstructGPT's ranking format)."""

    prompt: str
    ranked: tuple[str, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.ranked, tuple):
            object.__setattr__(self, "ranked", tuple(self.ranked))
        if len(self.ranked) < 2:
            raise ValueError(f"a ranking needs at least 2 answers, got {len(self.ranked)}")

    def pairs(self) -> Iterator[tuple[str, str]]:
        """All (better, worse) pairs: K(K−1)/2 of them."""
        for i, better in enumerate(self.ranked):
            for worse in self.ranked[i + 1 :]:
                yield better, worse


@dataclass(frozen=True)
class PromptExample:
    """A prompt for RL rollouts."""

    prompt: str


@dataclass(frozen=True)
class TextExample:
    """Plain text for the pretraining-mix (ptx) loss."""

    text: str
