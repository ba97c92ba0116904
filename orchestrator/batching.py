"""Turning records into padded tensor batches (on the driver, before they go to the actors).

LM batches are right-padded with a ``loss_mask`` marking the target tokens; prompts for rollout
are token-id lists the rollout engine left-pads itself."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any, Generic, TypeVar

import torch

from instructray.data import (
    PreferencePair,
    PromptExample,
    RankedComparison,
    SFTExample,
    TextExample,
)
from instructray.data.records import TokenIds
from instructray.training.batches import PairBatch, RankingBatch, TextBatch

T = TypeVar("T")


def _ids(tokenizer: Any, text: str) -> list[int]:
    # Callers truncate (prompts from the left); verbose=False drops transformers' warning
    # about sequences longer than the model before that happens.
    return tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]


def pad_right(rows: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


def encode_prompt(tokenizer: Any, prompt: str, max_prompt_tokens: int) -> list[int]:
    """Prompt ids, truncated from the left so the end of the prompt (its question) survives."""
    ids = _ids(tokenizer, prompt)[-max_prompt_tokens:]
    if not ids:
        raise ValueError(f"prompt {prompt[:60]!r} encodes to no tokens")
    return ids


def _prompt_response(
    tokenizer: Any, prompt: str, response: str, max_prompt: int, max_len: int
) -> tuple[list[int], list[int]]:
    """(ids, loss_mask) of prompt + response + EOS; the loss covers the response and EOS."""
    p = encode_prompt(tokenizer, prompt, max_prompt)
    return _join(p, [*_ids(tokenizer, response), tokenizer.eos_token_id], max_len)


def _join(prompt: Sequence[int], response: Sequence[int], max_len: int):
    r = list(response)[: max(1, max_len - len(prompt))]
    return list(prompt) + r, [0] * len(prompt) + [1] * len(r)


def answer_row(
    tokenizer: Any,
    prompt: str,
    answer: str,
    prompt_ids: TokenIds | None,
    answer_ids: TokenIds | None,
    max_prompt: int,
    max_len: int,
) -> tuple[list[int], list[int]]:
    """(ids, loss_mask) of one answer to a prompt: the sampled tokens when the answer came
    from the policy (EOS only where it was emitted, as PPO rollouts are scored), else the
    text encoded with EOS appended (an answer from a file is complete)."""
    if prompt_ids is None or answer_ids is None:
        return _prompt_response(tokenizer, prompt, answer, max_prompt, max_len)
    return _join(list(prompt_ids)[-max_prompt:], answer_ids, max_len)


def lm_batch(
    tokenizer: Any, examples: Sequence[SFTExample | TextExample], max_prompt: int, max_len: int
) -> TextBatch:
    """SFT examples train on the response only; plain texts (pre-training) on every token."""
    rows, masks = [], []
    for ex in examples:
        if isinstance(ex, SFTExample):
            ids, loss = _prompt_response(tokenizer, ex.prompt, ex.response, max_prompt, max_len)
        else:
            ids = [*_ids(tokenizer, ex.text), tokenizer.eos_token_id][:max_len]
            loss = [1] * len(ids)
        rows.append(ids)
        masks.append(loss)
    input_ids, attention_mask = pad_right(rows, tokenizer.pad_token_id)
    loss_mask, _ = pad_right(masks, 0)
    return TextBatch(input_ids=input_ids, attention_mask=attention_mask, loss_mask=loss_mask)


def ranking_batch(
    tokenizer: Any, comparisons: Sequence[RankedComparison], max_prompt: int, max_len: int
) -> RankingBatch:
    """All K answers of every comparison, flattened, with group ids and ranks (0 = best)."""
    rows, group_ids, ranks = [], [], []
    for g, comp in enumerate(comparisons):
        for rank, answer in enumerate(comp.ranked):
            answer_ids = None if comp.ranked_ids is None else comp.ranked_ids[rank]
            ids, _ = answer_row(
                tokenizer, comp.prompt, answer, comp.prompt_ids, answer_ids, max_prompt, max_len
            )
            rows.append(ids)
            group_ids.append(g)
            ranks.append(rank)
    input_ids, attention_mask = pad_right(rows, tokenizer.pad_token_id)
    return RankingBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        group_ids=torch.tensor(group_ids),
        ranks=torch.tensor(ranks),
    )


def pair_batch(
    tokenizer: Any, pairs: Sequence[PreferencePair], max_prompt: int, max_len: int
) -> PairBatch:
    """(prompt, chosen, rejected) pairs for DPO."""
    sides = {}
    for side in ("chosen", "rejected"):
        encoded = [
            answer_row(
                tokenizer,
                p.prompt,
                getattr(p, side),
                p.prompt_ids,
                getattr(p, f"{side}_ids"),
                max_prompt,
                max_len,
            )
            for p in pairs
        ]
        ids, mask = pad_right([e[0] for e in encoded], tokenizer.pad_token_id)
        loss_mask, _ = pad_right([e[1] for e in encoded], 0)
        sides[side] = TextBatch(input_ids=ids, attention_mask=mask, loss_mask=loss_mask)
    return PairBatch(chosen=sides["chosen"], rejected=sides["rejected"])


def comparison_pairs(comparisons: Sequence[RankedComparison]) -> list[PreferencePair]:
    """Every (chosen, rejected) pair of every ranking."""
    return [pair for c in comparisons for pair in c.preference_pairs()]


def prompt_ids(
    tokenizer: Any, prompts: Sequence[PromptExample], max_prompt_tokens: int
) -> list[list[int]]:
    return [encode_prompt(tokenizer, p.prompt, max_prompt_tokens) for p in prompts]


def epoch_batches(
    items: Sequence[T], batch_size: int, epochs: float, seed: int
) -> Iterator[list[T]]:
    """Shuffled full batches for ``epochs`` passes (fractions allowed); the last partial batch
    of each pass is dropped so every optimizer step sees the same number of examples."""
    if len(items) < batch_size:
        raise ValueError(f"{len(items)} examples are fewer than one batch of {batch_size}")
    per_epoch = len(items) // batch_size
    total = max(1, round(per_epoch * epochs))
    rng = random.Random(seed)
    order: list[int] = []
    for step in range(total):
        if step % per_epoch == 0:
            order = list(range(len(items)))
            rng.shuffle(order)
        start = (step % per_epoch) * batch_size
        yield [items[i] for i in order[start : start + batch_size]]


def num_batches(n_items: int, batch_size: int, epochs: float) -> int:
    return max(1, round((n_items // batch_size) * epochs))


def split_for_ranks(items: Sequence[T], world_size: int) -> list[list[T]]:
    per_rank = len(items) // world_size
    return [list(items[r * per_rank : (r + 1) * per_rank]) for r in range(world_size)]


class Cycle(Generic[T]):
    """Endless shuffled passes (prompts for PPO, texts for the ptx term). ``drawn`` counts the
    items handed out: ``Cycle(items, seed, drawn)`` continues where a saved run stopped."""

    def __init__(self, items: Sequence[T], seed: int, drawn: int = 0) -> None:
        if not items:
            raise ValueError("cannot cycle over an empty dataset")
        self.items = items
        self.drawn = 0
        self._rng = random.Random(seed)
        self._order: list[int] = []
        self._next = 0
        for _ in range(drawn):
            next(self)

    def __iter__(self) -> Cycle[T]:
        return self

    def __next__(self) -> T:
        if self._next == len(self._order):
            self._order = list(range(len(self.items)))
            self._rng.shuffle(self._order)
            self._next = 0
        item = self.items[self._order[self._next]]
        self._next += 1
        self.drawn += 1
        return item


def cycle(items: Sequence[T], seed: int, drawn: int = 0) -> Cycle[T]:
    return Cycle(items, seed, drawn)
