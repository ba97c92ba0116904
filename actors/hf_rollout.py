"""The rollout role with the HF transformers backend: a copy of the policy that samples responses.

It keeps the `generate` / `load_weights` surface that a vLLM engine actor can offer too, so the
coordinator does not care which backend produced a batch."""

from __future__ import annotations

import time

import torch

from instructray.actors.base import RankActor
from instructray.config import SamplingConfig
from instructray.models import load_causal_lm
from instructray.rollout.batch import Rollout
from instructray.rollout.weights import read_file, state_bytes
from instructray.training.deepspeed_model import torch_dtype


def response_mask(responses: torch.Tensor, eos_id: int, pad_id: int) -> torch.Tensor:
    """1 for the actions: tokens up to and including the first EOS, without generate()'s
    trailing padding (works when pad == eos). Always a prefix of the row: a pad id the model
    sampled mid-response is an action like any other, not a hole in the mask."""
    is_eos = responses == eos_id
    after_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
    valid = ~after_eos
    if pad_id != eos_id:
        positions = torch.arange(responses.shape[-1], device=responses.device)
        last_real = torch.where(responses != pad_id, positions, -1).amax(dim=-1, keepdim=True)
        valid &= positions <= last_real
    return valid


class HFRolloutActor(RankActor):
    def load(self, path: str, dtype: str) -> None:
        self.load_tokenizer(path)
        self._attach(load_causal_lm(path, torch_dtype(dtype)), spec=None)

    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> dict[str, float]:
        assert self.model is not None
        start = time.perf_counter()
        self.model.load_state_dict(state_dict, strict=True)
        return {
            "sync_seconds": time.perf_counter() - start,
            "sync_bytes": float(state_bytes(state_dict)),
        }

    def load_weights_file(self, path: str) -> dict[str, float]:
        start = time.perf_counter()
        info = self.load_weights(dict(read_file(path)))
        return info | {"sync_seconds": time.perf_counter() - start}

    def sleep(self) -> None:
        """Free the device for colocated trainers (weights parked in host memory)."""
        assert self.model is not None
        self.model.to("cpu")

    def wake_up(self) -> None:
        assert self.model is not None
        self.model.to(self.device)

    @torch.no_grad()
    def generate(
        self, prompts: list[list[int]], sampling: SamplingConfig, n: int, seed: int
    ) -> Rollout:
        """``n`` samples for each prompt (token ids), as `[left-padded prompt | response]`."""
        assert self.model is not None
        tok = self.tokenizer
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), tok.pad_token_id, dtype=torch.long)
        prompt_mask = torch.zeros_like(ids)
        for i, prompt in enumerate(prompts):
            ids[i, width - len(prompt) :] = torch.tensor(prompt)
            prompt_mask[i, width - len(prompt) :] = 1
        torch.manual_seed(seed)
        out = self.model.generate(
            input_ids=ids.to(self.device),
            attention_mask=prompt_mask.to(self.device),
            **(
                {
                    "do_sample": True,
                    "temperature": sampling.temperature,
                    "top_p": sampling.top_p,
                    "top_k": 0,
                }
                if sampling.temperature > 0
                else {"do_sample": False}
            ),
            max_new_tokens=sampling.max_new_tokens,
            num_return_sequences=n,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        ).cpu()
        responses = out[:, width:]
        action_mask = response_mask(responses, tok.eos_token_id, tok.pad_token_id)
        attention_mask = torch.cat([prompt_mask.repeat_interleave(n, dim=0), action_mask.long()], 1)
        return Rollout(
            sequences=out.masked_fill(attention_mask == 0, tok.pad_token_id),
            attention_mask=attention_mask,
            action_mask=action_mask,
        )
