"""The simulated human labeler: ranks K sampled answers per prompt, as InstructGPT's did.

Each answer's utility is the judge's score of the answer text alone (the continuation, not the
prompt) plus ``noise`` × standard Gumbel noise; answers are ranked by utility, highest first.
Sorting Gumbel-perturbed scores samples a Plackett–Luce ranking with weights exp(score/noise),
so ``noise`` plays the role of the labeler's inconsistency (temperature).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from instructray.data.judges import Judge
from instructray.data.records import RankedComparison, TokenIds

SampledTokens = tuple[Sequence[int], Sequence[Sequence[int]]]
"""(prompt ids, one id sequence per answer) as the sampler produced them."""


class SimulatedLabeler:
    def __init__(self, judge: Judge, noise: float, seed: int) -> None:
        if noise < 0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        self.judge = judge
        self.noise = float(noise)
        self.seed = seed
        # One stream per labeler: the same seed and the same sequence of calls give the
        # same rankings.
        self._rng = np.random.default_rng(seed)
        self.judged: dict[str, float] = {}
        """The noiseless judge score of every text ranked so far (agreement reuses them)."""

    def rank(self, prompt: str, answers: Sequence[str]) -> RankedComparison | None:
        """Rank distinct answers best first; None if fewer than 2 distinct answers."""
        distinct = list(dict.fromkeys(answers))
        if len(distinct) < 2:
            return None
        scores = self.judge.score(distinct)
        self.judged.update(zip(distinct, np.asarray(scores, dtype=float).tolist(), strict=True))
        return self._rank(prompt, distinct, scores)

    def rank_many(
        self,
        prompts: Sequence[str],
        answer_lists: Sequence[Sequence[str]],
        sampled: Sequence[SampledTokens] | None = None,
    ) -> list[RankedComparison]:
        """``rank`` for each prompt, with every answer scored in one judge call.

        ``sampled[i]`` = (prompt ids, one id tuple per answer) keeps the sampler's tokens
        with each ranked answer (an answer repeated as text keeps its first sample's ids).
        Prompts with fewer than 2 distinct answers are left out of the result. Given the same
        seed, the result equals calling ``rank`` on each prompt in turn.
        """
        if len(prompts) != len(answer_lists):
            raise ValueError(f"{len(prompts)} prompts but {len(answer_lists)} answer lists")
        if sampled is not None and len(sampled) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(sampled)} sampled-token entries")
        firsts = [_first_occurrences(answers) for answers in answer_lists]
        groups = [
            [answers[i] for i in keep] for answers, keep in zip(answer_lists, firsts, strict=True)
        ]
        flat = [answer for group in groups if len(group) >= 2 for answer in group]
        scores = self.judge.score(flat) if flat else np.zeros(0)
        self.judged.update(zip(flat, np.asarray(scores, dtype=float).tolist(), strict=True))
        out: list[RankedComparison] = []
        start = 0
        for n, (prompt, group) in enumerate(zip(prompts, groups, strict=True)):
            if len(group) < 2:
                continue
            ids = None
            if sampled is not None:
                prompt_ids, answer_ids = sampled[n]
                ids = (tuple(prompt_ids), [tuple(answer_ids[i]) for i in firsts[n]])
            out.append(self._rank(prompt, group, scores[start : start + len(group)], ids))
            start += len(group)
        return out

    def _rank(
        self,
        prompt: str,
        answers: list[str],
        scores: np.ndarray,
        ids: tuple[TokenIds, list[TokenIds]] | None = None,
    ) -> RankedComparison:
        utility = np.asarray(scores, dtype=np.float64)
        if self.noise > 0:
            utility = utility + self.noise * self._rng.gumbel(size=len(answers))
        # A stable sort of -utility breaks ties by answer index.
        order = np.argsort(-utility, kind="stable")
        ranked = tuple(answers[i] for i in order)
        if ids is None:
            return RankedComparison(prompt, ranked)
        prompt_ids, answer_ids = ids
        return RankedComparison(prompt, ranked, prompt_ids, tuple(answer_ids[i] for i in order))


def _first_occurrences(answers: Sequence[str]) -> list[int]:
    """Indices of each distinct answer's first appearance, in order."""
    first: dict[str, int] = {}
    for i, answer in enumerate(answers):
        first.setdefault(answer, i)
    return list(first.values())


def agreement(labeler: SimulatedLabeler, comparisons: Sequence[RankedComparison]) -> float:
    """Fraction of (better, worse) pairs the noiseless judge orders the same way.

    A tie in judge score counts as half agreement. NaN if there are no pairs.
    """
    answers = list(dict.fromkeys(a for c in comparisons for a in c.ranked))
    if not answers:
        return float("nan")
    unseen = [a for a in answers if a not in labeler.judged]
    score = dict(labeler.judged)
    if unseen:
        score.update(zip(unseen, np.asarray(labeler.judge.score(unseen)).tolist(), strict=True))
    total = 0.0
    pairs = 0
    for comparison in comparisons:
        for better, worse in comparison.pairs():
            difference = score[better] - score[worse]
            total += 1.0 if difference > 0 else 0.5 if difference == 0 else 0.0
            pairs += 1
    return total / pairs if pairs else float("nan")
