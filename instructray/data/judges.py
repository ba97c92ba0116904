"""Sentiment judges: the hidden "human preference" of the Rotten Tomatoes task.

A judge maps texts to real-valued scores, higher meaning more positive (more "fresh").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Judge(Protocol):
    def score(self, texts: Sequence[str]) -> np.ndarray: ...


class SentimentJudge:
    """Bag-of-words logistic regression on fresh (1) vs rotten (0) reviews.

    ``score`` is the logit, so 0 is the decision boundary and differences are log-odds.
    """

    def __init__(self) -> None:
        # Imported here so `import instructray.data` stays light for processes that only read.
        from sklearn.feature_extraction.text import CountVectorizer
        from sklearn.linear_model import LogisticRegression

        self.vectorizer = CountVectorizer(binary=True, lowercase=True, ngram_range=(1, 1), min_df=2)
        self.model = LogisticRegression(C=1.0, max_iter=1000)
        self._fitted = False

    def fit(self, texts: Sequence[str], labels: Sequence[int]) -> SentimentJudge:
        if len(texts) != len(labels):
            raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
        if set(labels) - {0, 1}:
            raise ValueError(f"labels must be 0 (rotten) or 1 (fresh), got {sorted(set(labels))}")
        features = self.vectorizer.fit_transform(list(texts))
        self.model.fit(features, np.asarray(labels, dtype=np.int64))
        self._fitted = True
        return self

    def score(self, texts: Sequence[str]) -> np.ndarray:
        if not self._fitted:
            raise RuntimeError("SentimentJudge.score called before fit")
        if len(texts) == 0:
            return np.zeros(0, dtype=np.float64)
        features = self.vectorizer.transform(list(texts))
        return np.asarray(self.model.decision_function(features), dtype=np.float64)

    def accuracy(self, texts: Sequence[str], labels: Sequence[int]) -> float:
        predicted = self.score(texts) > 0
        return float(np.mean(predicted == (np.asarray(labels) == 1)))


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
        predicted = self.score(texts) > 0
        return float(np.mean(predicted == (np.asarray(labels) == 1)))
