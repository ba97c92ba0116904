"""Sentiment judges: the hidden "human preference" of the Rotten Tomatoes task.

A judge maps texts to real-valued scores, higher meaning more positive (more "fresh").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, Self, runtime_checkable

import numpy as np


@runtime_checkable
class Judge(Protocol):
    def score(self, texts: Sequence[str]) -> np.ndarray: ...


class LinearSentimentJudge:
    """Logistic regression on fresh (1) vs rotten (0) reviews over the features a subclass
    computes; ``score`` is the logit, so 0 is the decision boundary and differences are
    log-odds."""

    def __init__(self, c: float = 1.0, max_iter: int = 1000) -> None:
        # Imported here so `import instructray.data` stays light for processes that only read.
        from sklearn.linear_model import LogisticRegression

        self.model = LogisticRegression(C=c, max_iter=max_iter)
        self._fitted = False

    def features(self, texts: list[str], fit: bool) -> object:
        """The model's input for ``texts``; ``fit`` is true once, on the training texts."""
        raise NotImplementedError

    def fit(self, texts: Sequence[str], labels: Sequence[int]) -> Self:
        if len(texts) != len(labels):
            raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
        if set(labels) - {0, 1}:
            raise ValueError(f"labels must be 0 (rotten) or 1 (fresh), got {sorted(set(labels))}")
        self.model.fit(self.features(list(texts), fit=True), np.asarray(labels, dtype=np.int64))
        self._fitted = True
        return self

    def score(self, texts: Sequence[str]) -> np.ndarray:
        if not self._fitted:
            raise RuntimeError(f"{type(self).__name__}.score called before fit")
        if len(texts) == 0:
            return np.zeros(0, dtype=np.float64)
        features = self.features(list(texts), fit=False)
        return np.asarray(self.model.decision_function(features), dtype=np.float64)

    def accuracy(self, texts: Sequence[str], labels: Sequence[int]) -> float:
        return sign_accuracy(self, texts, labels)


class SentimentJudge(LinearSentimentJudge):
    """Bag of words: a logistic regression on which words a review contains."""

    def __init__(self) -> None:
        from sklearn.feature_extraction.text import CountVectorizer

        super().__init__()
        self.vectorizer = CountVectorizer(binary=True, lowercase=True, ngram_range=(1, 1), min_df=2)

    def features(self, texts: list[str], fit: bool) -> object:
        if fit:
            return self.vectorizer.fit_transform(texts)
        return self.vectorizer.transform(texts)


def sign_accuracy(judge: Judge, texts: Sequence[str], labels: Sequence[int]) -> float:
    """The share of texts whose score has the sign of their label (1 = fresh: positive)."""
    return float(np.mean((judge.score(texts) > 0) == (np.asarray(labels) == 1)))


class VaderJudge:
    """VADER's rule-based compound score in [-1, 1]: a second judge unrelated to the corpus."""

    def __init__(self) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self._analyzer = SentimentIntensityAnalyzer()

    def score(self, texts: Sequence[str]) -> np.ndarray:
        return np.array(
            [self._analyzer.polarity_scores(t)["compound"] for t in texts], dtype=np.float64
        )

    def accuracy(self, texts: Sequence[str], labels: Sequence[int]) -> float:
        return sign_accuracy(self, texts, labels)
