"""The labeler that reads meaning: sentence-embedding sentiment, fluency, no repetition."""

from __future__ import annotations

import numpy as np
import pytest

from instructray.data import RottenTomatoesTask
from instructray.data.meaning_judge import MeaningJudge, SentenceSentimentJudge
from instructray.evaluation import ATTACKS, attack_win_rates, repeated_ngram_fraction


@pytest.fixture(scope="module")
def task() -> RottenTomatoesTask:
    return RottenTomatoesTask.build(seed=0)


def _labels(reviews) -> list[int]:
    return [int(r.label == "fresh") for r in reviews]


def test_repeated_trigrams_by_hand() -> None:
    # trigrams: (it is great) (is great it) (great it is) (it is great): 3 distinct of 4
    assert repeated_ngram_fraction("it is great. it is great.") == pytest.approx(0.25)
    assert repeated_ngram_fraction("a b c d") == 0.0
    assert repeated_ngram_fraction("too short") == 0.0


def test_sentence_sentiment_reads_held_out_reviews(task: RottenTomatoesTask) -> None:
    """On reviews it never saw, the embedding classifier tells fresh from rotten about as well
    as the bag of words (0.765 vs 0.723 on the whole slice, bench/labeler_judge.py)."""
    train, held = task.judge_labeler[:1500], task.judge_eval[:600]
    judge = SentenceSentimentJudge().fit([r.text for r in train], _labels(train))
    accuracy = judge.accuracy([r.text for r in held], _labels(held))
    assert accuracy > 0.72
    assert judge.score(["A moving, beautifully acted film."])[0] > 0
    assert judge.score(["A tedious, lifeless mess."])[0] < 0


@pytest.mark.e2e
def test_meaning_judge_cannot_be_gamed_by_known_edits(task: RottenTomatoesTask) -> None:
    """Inserting a praised or frequent word, repeating the text or looping praise does not pay
    with this judge (each edit wins < 0.5 of the time; inserting " and" or " great" every third
    word comes closest, as fluency above the real-review reference earns nothing), while a
    reader's preference for fresh over rotten reviews survives. The bag of words loses."""
    from instructray.models import default_cache_dir, resolve_base_model

    train = task.judge_labeler[:1500]
    judge = MeaningJudge.fit(
        [r.text for r in train],
        _labels(train),
        resolve_base_model("smollm2", default_cache_dir()),
        reference_texts=128,
    )
    texts = [r.text for r in task.judge_eval[:60]]
    wins = attack_win_rates(judge.score, texts)
    assert set(wins) == set(ATTACKS)
    for attack, rate in wins.items():
        if attack != "append_praise":  # a review that ends "Great!" is more positive
            assert rate < 0.5, (attack, wins)
    bag_of_words = attack_win_rates(task.labeler_judge().score, texts)
    assert bag_of_words["insert_great"] > 0.9 and bag_of_words["praise_loop"] > 0.9
    fresh = [r.text for r in task.judge_eval if r.label == "fresh"][:40]
    rotten = [r.text for r in task.judge_eval if r.label == "rotten"][:40]
    f, r = judge.score(fresh), judge.score(rotten)
    assert np.mean(f[:, None] > r[None, :]) > 0.65
