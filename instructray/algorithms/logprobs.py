"""Token log-probabilities and entropies from language-model logits."""

from __future__ import annotations

import torch
from torch import Tensor


def tempered_logits(logits: Tensor, temperature: float) -> Tensor:
    """The logits of the distribution a sampler at ``temperature`` draws from: logits / T.

    π_old, π_θ, the reference and the entropy must all describe that distribution, or the
    PPO ratio, the KL penalty and the entropy bonus measure a policy nobody sampled from.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return logits if temperature == 1.0 else logits / temperature


def logprobs_from_logits(logits: Tensor, labels: Tensor) -> Tensor:
    """Log-probability of each label under softmax(logits): [B,T,V], [B,T] -> [B,T] (float32).

    Computes logit[label] - logsumexp(logits) so the full [B,T,V] log-softmax is never stored;
    half-precision logits are upcast one row at a time to bound the float32 copy.
    """
    index = labels.long().unsqueeze(-1)
    if logits.dtype in (torch.float32, torch.float64):
        picked = logits.gather(-1, index).squeeze(-1)
        return picked - torch.logsumexp(logits, dim=-1)
    rows = []
    for row_logits, row_index in zip(logits, index, strict=True):
        row = row_logits.float()
        rows.append(row.gather(-1, row_index).squeeze(-1) - torch.logsumexp(row, dim=-1))
    return torch.stack(rows)


def response_logprobs(logits: Tensor, sequences: Tensor, num_actions: int) -> Tensor:
    """Log-probs of the last `num_actions` tokens of `sequences`: [B,L,V], [B,L] -> [B,A].

    Logits at position t predict token t+1, so response tokens L-A..L-1 use logits L-A-1..L-2.
    """
    if not 0 < num_actions < sequences.shape[1]:
        raise ValueError(f"num_actions must be in (0, {sequences.shape[1]}), got {num_actions}")
    return logprobs_from_logits(logits[:, -num_actions - 1 : -1], sequences[:, -num_actions:])


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of softmax(logits) over the last dim: [..., V] -> [...] (float32).

    Works in log-space (log_softmax), so large logits do not overflow; entries with zero
    probability (e.g. -inf logits from vocabulary masking) contribute 0 instead of NaN.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    probs = logp.exp()
    # Fill before multiplying: 0 * -inf would poison both the value and its gradient.
    logp = logp.masked_fill(probs == 0, 0.0)
    return -(probs * logp).sum(dim=-1)
