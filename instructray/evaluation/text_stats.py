"""Word-level statistics of generated text: diversity, repetition and words that took over.

A "word" is a match of the regex ``[a-z0-9']+`` in the lowercased text: letters, digits and
apostrophes, so "Don't stop!" is ["don't", "stop"]. This is deliberately tokenizer-free, so two
policies with different tokenizers, or a policy and its SFT model, are measured on the same
units. Reward hacking by a tiny policy usually shows up here first: the policy learns that the
reward model likes one word and emits it everywhere.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

_WORD = re.compile(r"[a-z0-9']+")


def words(text: str) -> list[str]:
    """The lowercased words of `text`: the matches of ``[a-z0-9']+`` after lowercasing."""
    return _WORD.findall(text.lower())


def _ngrams(tokens: Sequence[str], n: int) -> Iterable[tuple[str, ...]]:
    return zip(*(tokens[i:] for i in range(n)), strict=False)


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique n-grams / total n-grams, counted over all texts (no n-gram spans two texts).

    0.0 when the texts hold no n-gram at all (e.g. every text is shorter than n words).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    seen: set[tuple[str, ...]] = set()
    total = 0
    for text in texts:
        grams = list(_ngrams(words(text), n))
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


def repetition(texts: Sequence[str]) -> float:
    """Mean over texts with >= 1 word of the fraction of words repeating an earlier one (1 - unique/total).

    0.0 when no text has a word. "a b a a" repeats 2 of 4 words: 0.5.
    """
    fractions = []
    for text in texts:
        tokens = words(text)
        if tokens:
            fractions.append(1.0 - len(set(tokens)) / len(tokens))
    return sum(fractions) / len(fractions) if fractions else 0.0


def repeated_ngram_fraction(text: str, n: int = 3) -> float:
    """Share of a text's word n-grams that repeat an earlier one of the same text (0 when it
    has none): "it is great. it is great." has 4 trigrams, 3 distinct: 0.25."""
    grams = list(_ngrams(words(text), n))
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def _counts(texts: Sequence[str]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(words(text))
    return counts


def per_thousand(texts: Sequence[str]) -> dict[str, float]:
    """Each word's frequency per 1,000 words over all texts ({} when there are no words)."""
    counts = _counts(texts)
    total = sum(counts.values())
    return {word: 1000.0 * count / total for word, count in counts.items()} if total else {}


def top_gained_words(
    texts: Sequence[str],
    baseline_texts: Sequence[str],
    k: int = 10,
    min_count: int = 5,
) -> list[dict[str, Any]]:
    """The up-to-k words whose frequency per 1,000 words rose most from `baseline_texts`.

    With c / T a word's count / the total word count in `texts` and b / B the same in the
    baseline: per_1000 = 1000 c / T and baseline_per_1000 = 1000 b / B (unsmoothed; their
    difference is the increase that ranks words), and

        ratio = ((c + 1) / (T / 1000)) / ((b + 1) / (B / 1000))

    i.e. add-one smoothing on both counts, so a word absent from the baseline gets a finite ratio
    instead of infinity, and rare words cannot reach a large ratio by chance alone. An empty
    baseline counts as B = 1 word. Only words with c >= min_count and a positive increase are
    kept, sorted by increase (descending, then by word). Each entry is
    {"word", "per_1000", "baseline_per_1000", "ratio", "count", "baseline_count"}.
    """
    counts = _counts(texts)
    total = sum(counts.values())
    if total == 0 or k <= 0:
        return []
    baseline_counts = _counts(baseline_texts)
    baseline_total = max(1, sum(baseline_counts.values()))
    rows = []
    for word, count in counts.items():
        if count < min_count:
            continue
        base = baseline_counts.get(word, 0)
        rate = 1000.0 * count / total
        base_rate = 1000.0 * base / baseline_total
        if rate <= base_rate:
            continue
        ratio = ((count + 1) / (total / 1000.0)) / ((base + 1) / (baseline_total / 1000.0))
        rows.append(
            {
                "word": word,
                "per_1000": rate,
                "baseline_per_1000": base_rate,
                "ratio": ratio,
                "count": count,
                "baseline_count": base,
            }
        )
    rows.sort(key=lambda r: (-(r["per_1000"] - r["baseline_per_1000"]), r["word"]))
    return rows[:k]
