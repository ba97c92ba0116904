"""Forward passes shared by the actors: logits and values of `[prompt | response]` batches."""

from __future__ import annotations

import torch

from instructray.algorithms import response_logprobs, tempered_logits
from instructray.models import token_values


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
