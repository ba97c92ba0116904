"""Typed batches: what the driver hands a rank across the Ray boundary, one class per kind of
work, so an actor reads ``batch.advantages``, never ``batch["advantages"]``.

Every field of a `TensorBatch` is row-aligned (dim 0 is the row) or is itself a `TensorBatch`
(a DPO pair's two sides); ``None`` marks an optional field that is absent. Row layout of the
PPO batches: ``[left-padded prompt | right-padded response]``, per-token fields [B, R] cover the
response only (see `instructray.orchestrator.experience`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from typing import Any, Self

import torch


@dataclass(frozen=True)
class TensorBatch:
    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Self:
        def apply(value: Any) -> Any:
            if value is None:
                return None
            return value._map(fn) if isinstance(value, TensorBatch) else fn(value)

        return replace(self, **{f.name: apply(getattr(self, f.name)) for f in fields(self)})

    def __len__(self) -> int:
        first = getattr(self, fields(self)[0].name)
        return len(first)

    def to(self, device: torch.device) -> Self:
        return self._map(lambda t: t.to(device))

    def rows(self, index: slice | torch.Tensor) -> Self:
        """The rows in ``index`` (a slice, indices or a bool mask), every field alike."""
        return self._map(lambda t: t[index])

    def split(self, parts: int) -> list[Self]:
        """Exactly ``parts`` contiguous slices whose sizes differ by at most one (data-parallel
        shards, or the ptx texts of each PPO micro-batch); refuses to make an empty part."""
        n = len(self)
        if not 0 < parts <= n:
            raise ValueError(f"cannot split a batch of {n} rows into {parts} non-empty parts")
        # as torch.tensor_split: the first n % parts slices get one row more
        sizes = [n // parts + (1 if i < n % parts else 0) for i in range(parts)]
        bounds = [sum(sizes[:i]) for i in range(parts + 1)]
        return [self.rows(slice(bounds[i], bounds[i + 1])) for i in range(parts)]

    def chunks(self, size: int) -> Iterator[Self]:
        """Consecutive slices of ``size`` rows (the last may be shorter): micro-batches."""
        for start in range(0, len(self), size):
            yield self.rows(slice(start, start + size))


@dataclass(frozen=True)
class TextBatch(TensorBatch):
    """Right-padded texts for language modelling (pre-training, SFT, the PPO-ptx term)."""

    input_ids: torch.Tensor
    """[B, T] token ids, padded on the right."""
    attention_mask: torch.Tensor
    """[B, T] 1 on real tokens."""
    loss_mask: torch.Tensor
    """[B, T] 1 on the tokens the loss predicts (an SFT response and its EOS; every token of
    a plain text)."""


@dataclass(frozen=True)
class RankingBatch(TensorBatch):
    """The K ranked answers of each comparison, flattened: one row per answer."""

    input_ids: torch.Tensor
    """[B, T] prompt and answer, padded on the right."""
    attention_mask: torch.Tensor
    group_ids: torch.Tensor
    """[B] index of the comparison a row belongs to (consecutive rows share it)."""
    ranks: torch.Tensor
    """[B] the answer's place in its ranking, 0 = best."""

    def whole_groups(self, groups_per_chunk: int) -> Iterator[RankingBatch]:
        """Micro-batches of whole comparisons, so no prompt's K answers are split."""
        groups = torch.unique_consecutive(self.group_ids)
        for i in range(0, len(groups), groups_per_chunk):
            yield self.rows(torch.isin(self.group_ids, groups[i : i + groups_per_chunk]))


@dataclass(frozen=True)
class PairBatch(TensorBatch):
    """(prompt, chosen, rejected) for DPO: each side a `TextBatch` whose loss mask marks the
    answer, and the frozen reference's log π_ref(y|x) of both once it has scored them."""

    chosen: TextBatch
    rejected: TextBatch
    ref_chosen_logps: torch.Tensor | None = None
    """[B] summed reference log-probs of the chosen answer."""
    ref_rejected_logps: torch.Tensor | None = None

    def with_reference(self, chosen: torch.Tensor, rejected: torch.Tensor) -> PairBatch:
        return replace(self, ref_chosen_logps=chosen, ref_rejected_logps=rejected)


@dataclass(frozen=True)
class ActionBatch(TensorBatch):
    """Sampled `[prompt | response]` rows: what a forward pass for log-probs, values or
    reward scores needs."""

    sequences: torch.Tensor
    """[B, P+R] token ids."""
    attention_mask: torch.Tensor
    """[B, P+R] 1 on prompt and response tokens."""
    action_mask: torch.Tensor
    """[B, R] 1 on the sampled response tokens (EOS included)."""

    @property
    def num_actions(self) -> int:
        return self.action_mask.shape[1]


@dataclass(frozen=True)
class PolicyBatch(ActionBatch):
    """A PPO policy rank's rows: the actions and what the clipped surrogate needs."""

    logprobs: torch.Tensor
    """[B, R] log π_old of the sampled tokens."""
    advantages: torch.Tensor
    """[B, R]."""
    is_weights: torch.Tensor | None = None
    """[B, R] truncated importance weights (engine log-probs with ``ppo.tis_cap``)."""


@dataclass(frozen=True)
class CriticBatch(ActionBatch):
    """A PPO critic rank's rows: the actions and what the clipped value loss needs."""

    values: torch.Tensor
    """[B, R] V_old(s_t) from the rollout's scoring pass."""
    returns: torch.Tensor
    """[B, R] value targets."""


@dataclass(frozen=True)
class PolicyShard:
    """One policy rank's share of a PPO mini-batch."""

    rollout: PolicyBatch
    ptx: TextBatch | None
    """Pre-training texts for PPO-ptx; None without."""
