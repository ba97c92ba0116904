"""Forward passes shared by the actors: logits and values of `[prompt | response]` batches."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from instructray.algorithms import response_logprobs, tempered_logits
from instructray.models import token_values

Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class PolicyShard:
    """One policy rank's share of a PPO mini-batch."""

    rollout: Batch
    """sequences, attention_mask, action_mask, logprobs (π_old), advantages, is_weights."""
    ptx: Batch | None
    """Pre-training text for PPO-ptx (input_ids, attention_mask, loss_mask); None without."""


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as generate() assigns them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def lm_logits(
    model: torch.nn.Module, input_ids: torch.Tensor, mask: torch.Tensor, keep_last: int = 0
) -> torch.Tensor:
    """Float logits of every position, or of the last ``keep_last`` only: the output layer
    (vocab × hidden per token, a fifth of SmolLM2's compute) then skips the prompt."""
    extra = {"logits_to_keep": keep_last} if keep_last else {}
    out = model(
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=position_ids_from_mask(mask),
        use_cache=False,
        **extra,
    )
    return out.logits.float()


def action_logprobs(
    model: torch.nn.Module,
    sequences: torch.Tensor,
    mask: torch.Tensor,
    num_actions: int,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of the last ``num_actions`` tokens and the logits that predicted them, both
    of the distribution sampled at ``temperature``."""
    logits = lm_logits(model, sequences, mask, keep_last=num_actions + 1)
    logits = tempered_logits(logits, temperature)
    action_logits = logits[:, -num_actions - 1 : -1]
    return response_logprobs(logits, sequences, num_actions), action_logits


def action_values(
    model: torch.nn.Module, sequences: torch.Tensor, mask: torch.Tensor, num_actions: int
) -> torch.Tensor:
    """V(s_t) for every response token: the value at the position that predicts it."""
    values = token_values(model, sequences, mask).float()
    return values[:, -num_actions - 1 : -1]


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def batch_size(batch: Batch) -> int:
    return next(v.shape[0] for v in batch.values() if isinstance(v, torch.Tensor))


def split_batch(batch: Batch, parts: int) -> list[Batch]:
    """Exactly ``parts`` contiguous row slices whose sizes differ by at most one (data-parallel
    shards, or the ptx texts of each PPO micro-batch); refuses to make an empty part."""
    rows = batch_size(batch)
    if not 0 < parts <= rows:
        raise ValueError(f"cannot split a batch of {rows} rows into {parts} non-empty parts")
    pieces = {k: torch.tensor_split(v, parts) for k, v in batch.items()}
    return [{k: pieces[k][i] for k in batch} for i in range(parts)]


def micro_batches(batch: Batch, size: int) -> Iterator[Batch]:
    n = batch_size(batch)
    for start in range(0, n, size):
        yield {
            k: v[start : start + size] if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()
        }
