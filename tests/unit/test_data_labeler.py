"""The simulated labeler: judge order at noise 0, Plackett–Luce noise, determinism."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from instructray.data import RankedComparison, RottenTomatoesTask, SimulatedLabeler, agreement


class TableJudge:
    """Scores from a fixed table; counts calls."""

    def __init__(self, table: dict[str, float]) -> None:
        self.table = table
        self.calls: list[list[str]] = []

    def score(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return np.array([self.table[t] for t in texts], dtype=np.float64)


TABLE = {"a": 0.5, "b": 2.0, "c": -1.0, "d": 1.0, "e": 1.0}


@pytest.fixture(scope="module")
def review_batches() -> tuple[SimulatedLabeler, list[str], list[list[str]]]:
    task = RottenTomatoesTask.build(seed=0)
    reviews = [r.text for r in task.prompt_reviews()]
    rng = np.random.default_rng(0)
    answers = [[reviews[i] for i in rng.choice(len(reviews), 4, replace=False)] for _ in range(300)]
    return SimulatedLabeler(task.labeler_judge(), 0.0, 0), [f"p{i}" for i in range(300)], answers


def test_noise_zero_ranks_by_score_ties_by_index() -> None:
    labeler = SimulatedLabeler(TableJudge(TABLE), noise=0.0, seed=0)
    assert labeler.rank("p", ["a", "b", "c", "d"]) == RankedComparison("p", ("b", "d", "a", "c"))
    assert labeler.rank("p", ["e", "c", "d"]).ranked == ("e", "d", "c")
    assert labeler.rank("p", ["d", "c", "e"]).ranked == ("d", "e", "c")


def test_duplicates_are_removed() -> None:
    judge = TableJudge(TABLE)
    labeler = SimulatedLabeler(judge, noise=0.0, seed=0)
    assert labeler.rank("p", ["a", "c", "a", "b"]).ranked == ("b", "a", "c")
    assert judge.calls[-1] == ["a", "c", "b"]
    assert labeler.rank("p", ["a", "a"]) is None
    assert labeler.rank("p", ["a"]) is None


def test_pairs_for_k4() -> None:
    comparison = SimulatedLabeler(TableJudge(TABLE), 0.0, 0).rank("p", ["a", "b", "c", "d"])
    assert len(list(comparison.pairs())) == 6


def test_rank_many_scores_once_and_matches_rank() -> None:
    prompts = ["p", "q", "r"]
    answer_lists = [["a", "b", "c", "d"], ["e", "e"], ["c", "a"]]
    judge = TableJudge(TABLE)
    batch = SimulatedLabeler(judge, noise=1.5, seed=7).rank_many(prompts, answer_lists)
    assert judge.calls == [["a", "b", "c", "d", "c", "a"]]
    assert [c.prompt for c in batch] == ["p", "r"]
    one_by_one = SimulatedLabeler(TableJudge(TABLE), noise=1.5, seed=7)
    expected = [one_by_one.rank(p, a) for p, a in zip(prompts, answer_lists, strict=True)]
    assert batch == [c for c in expected if c is not None]
    with pytest.raises(ValueError, match="2 prompts but 1 answer lists"):
        one_by_one.rank_many(["p", "q"], [["a", "b"]])


def test_deterministic_for_a_seed() -> None:
    def rankings(seed: int) -> list[tuple[str, ...]]:
        labeler = SimulatedLabeler(TableJudge(TABLE), noise=1.0, seed=seed)
        return [labeler.rank("p", ["a", "b", "c", "d"]).ranked for _ in range(50)]

    assert rankings(3) == rankings(3)
    assert rankings(3) != rankings(4)


def test_gumbel_noise_is_plackett_luce() -> None:
    # P(x ranked above y) = sigmoid((s_x - s_y) / noise) for Gumbel-perturbed scores.
    labeler = SimulatedLabeler(TableJudge({"x": 1.0, "y": 0.0}), noise=1.0, seed=0)
    wins = np.mean([labeler.rank("p", ["x", "y"]).ranked[0] == "x" for _ in range(4000)])
    assert wins == pytest.approx(1 / (1 + np.exp(-1.0)), abs=0.02)


def test_agreement_on_real_reviews_falls_with_noise(review_batches) -> None:
    noiseless, prompts, answers = review_batches
    judge = noiseless.judge
    measured = {}
    for noise in (0.0, 0.5, 1.0, 2.0):
        labeler = SimulatedLabeler(judge, noise=noise, seed=1)
        comparisons = labeler.rank_many(prompts, answers)
        assert len(comparisons) == 300 and all(len(c.ranked) == 4 for c in comparisons)
        measured[noise] = agreement(noiseless, comparisons)
    assert measured[0.0] == 1.0
    assert measured[0.0] > measured[0.5] > measured[1.0] > measured[2.0]
    assert 0.6 < measured[1.0] < 0.9


def test_agreement_counts_ties_as_half() -> None:
    labeler = SimulatedLabeler(TableJudge(TABLE), 0.0, 0)
    assert agreement(labeler, [RankedComparison("p", ("d", "e"))]) == 0.5
    assert agreement(labeler, [RankedComparison("p", ("c", "a", "b"))]) == 0.0
    assert (
        agreement(labeler, [RankedComparison("p", ("b", "a")), RankedComparison("q", ("c", "a"))])
        == 0.5
    )


def test_agreement_reuses_the_scores_of_ranked_texts() -> None:
    judge = TableJudge(TABLE)
    labeler = SimulatedLabeler(judge, 0.0, 0)
    comparisons = labeler.rank_many(["p", "q"], [["a", "b"], ["c", "d"]])
    assert judge.calls == [["a", "b", "c", "d"]]  # one call for every answer
    assert agreement(labeler, comparisons) == 1.0
    assert agreement(labeler, [RankedComparison("r", ("e", "a"))]) == 1.0
    assert judge.calls[1:] == [["e"]]  # only the unseen text is judged


def test_negative_noise_rejected() -> None:
    with pytest.raises(ValueError, match="noise"):
        SimulatedLabeler(TableJudge(TABLE), noise=-0.1, seed=0)


def test_rank_many_keeps_each_answers_sampled_tokens() -> None:
    """The sampler's tokens travel with each answer through the ranking (a repeated text keeps
    its first sample's ids), so the RM trains on exactly what was sampled."""
    labeler = SimulatedLabeler(TableJudge(TABLE), noise=0.0, seed=0)
    sampled = [((7, 8), [(1, 2), (3,), (4, 5, 99), (6,)]), ((9,), [(10,), (11, 99)])]
    comps = labeler.rank_many(["p", "q"], [["a", "b", "c", "b"], ["c", "d"]], sampled)
    assert comps[0] == RankedComparison("p", ("b", "a", "c"), (7, 8), ((3,), (1, 2), (4, 5, 99)))
    assert comps[1] == RankedComparison("q", ("d", "c"), (9,), ((11, 99), (10,)))
    with pytest.raises(ValueError, match="2 prompts but 1 sampled-token entries"):
        labeler.rank_many(["p", "q"], [["a", "b"], ["c", "d"]], sampled[:1])
