"""`Rollout`: what every rollout engine returns (vLLM and the HF generate() fallback alike), what
the coordinator scores and trains on, and what a train state keeps of rollouts still in flight."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from instructray.training.batches import ActionBatch


@dataclass(frozen=True)
class Rollout:
    """Sampled responses, one row per sample: ``[left-padded prompt | right-padded response]``."""

    sequences: torch.Tensor
    """[B, P + R] token ids; padding is the tokenizer's pad id."""
    attention_mask: torch.Tensor
    """[B, P + R] 1 on prompt and response tokens, 0 on padding."""
    action_mask: torch.Tensor
    """[B, R] bool: the sampled tokens (the actions), EOS included where it was sampled."""
    logprobs: torch.Tensor | None = None
    """[B, R] the engine's own log-probs of the sampled tokens (vLLM); None from HF generate()."""

    def __len__(self) -> int:
        return self.sequences.shape[0]

    @property
    def num_actions(self) -> int:
        return self.action_mask.shape[1]

    @property
    def responses(self) -> torch.Tensor:
        """[B, R] the response part of ``sequences``."""
        return self.sequences[:, -self.num_actions :]

    def action_batch(self) -> ActionBatch:
        """What a forward pass over the rows needs (log-probs, values, reward scores)."""
        return ActionBatch(
            sequences=self.sequences,
            attention_mask=self.attention_mask,
            action_mask=self.action_mask,
        )

    @classmethod
    def merge(cls, parts: list[Rollout], pad_id: int) -> Rollout:
        """Concatenate the rollouts of several engines in order, re-padding prompts on the left
        and responses on the right to common widths."""
        if len(parts) == 1:
            return parts[0]
        prompt_width = max(p.sequences.shape[1] - p.num_actions for p in parts)
        resp_width = max(p.num_actions for p in parts)

        def widen(part: Rollout) -> Rollout:
            left = prompt_width - (part.sequences.shape[1] - part.num_actions)
            right = resp_width - part.num_actions
            return Rollout(
                sequences=F.pad(part.sequences, (left, right), value=pad_id),
                attention_mask=F.pad(part.attention_mask, (left, right), value=0),
                action_mask=F.pad(part.action_mask, (0, right), value=False),
                logprobs=None if part.logprobs is None else F.pad(part.logprobs, (0, right)),
            )

        wide = [widen(p) for p in parts]
        with_logprobs = [p.logprobs for p in wide if p.logprobs is not None]
        if with_logprobs and len(with_logprobs) != len(wide):
            raise ValueError("cannot merge rollouts with and without engine log-probs")
        return cls(
            sequences=torch.cat([p.sequences for p in wide]),
            attention_mask=torch.cat([p.attention_mask for p in wide]),
            action_mask=torch.cat([p.action_mask for p in wide]),
            logprobs=torch.cat(with_logprobs) if with_logprobs else None,
        )
