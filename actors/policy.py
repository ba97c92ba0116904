"""The causal-LM role: the policy being trained (pre-training, SFT, DPO, PPO) and, loaded without
an optimizer, the frozen SFT reference whose log-probs anchor the KL penalty."""

from __future__ import annotations

from statistics import fmean

import torch

from instructray.actors.base import B, RankActor
from instructray.algorithms import (
    dpo_loss,
    entropy_bonus,
    entropy_from_logits,
    logprobs_from_logits,
    masked_mean,
    masked_sum,
    policy_loss_clipped,
    ptx_loss,
    sft_loss,
)
from instructray.config.rank import DPOLossParams, PolicyLossParams
from instructray.models import load_causal_lm
from instructray.training.batches import (
    ActionBatch,
    PairBatch,
    PolicyShard,
    TextBatch,
)
from instructray.training.deepspeed_model import DeepSpeedSpec, current_lr, torch_dtype
from instructray.training.forward import action_logprobs, lm_logits

EVAL_CHUNK = 16
"""Rows per forward pass of the no-grad evaluations (bounds the [rows, length, vocab] logits)."""


def _mean_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: fmean(row[key] for row in rows) for key in rows[0]}


class CausalLMActor(RankActor):
    def load(self, path: str, dtype: str, spec: DeepSpeedSpec | None) -> None:
        self.load_tokenizer(path)
        self._attach(load_causal_lm(path, torch_dtype(dtype)), spec)

    def _micro_batches(self, batch: B) -> list[B]:
        assert self.spec is not None, "this actor was loaded without an optimizer"
        return list(self._on_device(batch).chunks(self.spec.micro_batch_size))

    def _sequence_logps(self, text: TextBatch) -> torch.Tensor:
        """Summed log-probs of the tokens marked in ``loss_mask`` (DPO's log π(y|x))."""
        logits = lm_logits(self.model, text.input_ids, text.attention_mask)
        token_logps = logprobs_from_logits(logits[:, :-1], text.input_ids[:, 1:])
        return masked_sum(token_logps, text.loss_mask[:, 1:], dim=-1)

    # -- language modelling: pre-training and SFT --------------------------------------------
    def train_lm(self, batch: TextBatch) -> dict[str, float]:
        rows = []
        for mb in self._micro_batches(batch):
            logits = lm_logits(self.model, mb.input_ids, mb.attention_mask)
            loss = sft_loss(logits, mb.input_ids, mb.loss_mask)
            self._backward(loss, "language model")
            self._step("language model")
            rows.append({"loss": loss.item(), "tokens": float(mb.loss_mask.sum())})
        tokens = sum(row.pop("tokens") for row in rows)
        return {**_mean_metrics(rows), "tokens": tokens, "lr": current_lr(self.ds_model)}

    @torch.no_grad()
    def eval_lm(self, batch: TextBatch) -> dict[str, float]:
        """Token-weighted mean loss, a chunk of rows at a time: the logits of a whole
        held-out set (256 × 96 × SmolLM2's 49,152 words) would take 4.8 GB."""
        total, tokens = 0.0, 0.0
        for mb in self._on_device(batch).chunks(EVAL_CHUNK):
            logits = lm_logits(self.model, mb.input_ids, mb.attention_mask)
            n = float(mb.loss_mask[:, 1:].sum())
            total += sft_loss(logits, mb.input_ids, mb.loss_mask).item() * n
            tokens += n
        return {"loss": total / max(tokens, 1.0)}

    # -- log-probs for PPO (old policy, reference) and DPO (reference) -----------------------
    @torch.no_grad()
    def action_logprobs(self, batch: ActionBatch, temperature: float = 1.0) -> torch.Tensor:
        """Log-probs of the response tokens under the distribution sampled at
        ``temperature`` (π_old, the reference, the eval KL)."""
        batch = self._on_device(batch)
        logps, _ = action_logprobs(
            self.model, batch.sequences, batch.attention_mask, batch.num_actions, temperature
        )
        return logps.cpu()

    @torch.no_grad()
    def pair_logps(self, batch: PairBatch) -> tuple[torch.Tensor, torch.Tensor]:
        chosen, rejected = [], []
        for mb in self._on_device(batch).chunks(EVAL_CHUNK):
            chosen.append(self._sequence_logps(mb.chosen))
            rejected.append(self._sequence_logps(mb.rejected))
        return torch.cat(chosen).cpu(), torch.cat(rejected).cpu()

    # -- DPO ----------------------------------------------------------------------------------
    def _dpo_step(
        self, mb: PairBatch, loss: DPOLossParams
    ) -> tuple[torch.Tensor, dict[str, float]]:
        if mb.ref_chosen_logps is None or mb.ref_rejected_logps is None:
            raise ValueError("DPO pairs need the reference's log-probs (PairBatch.with_reference)")
        loss, chosen_r, rejected_r = dpo_loss(
            self._sequence_logps(mb.chosen),
            self._sequence_logps(mb.rejected),
            mb.ref_chosen_logps,
            mb.ref_rejected_logps,
            beta=loss.beta,
            loss_type=loss.loss_type,
            label_smoothing=loss.label_smoothing,
        )
        margin = chosen_r - rejected_r
        return loss, {
            "loss": loss.item(),
            "reward_margin": margin.mean().item(),
            "reward_accuracy": (margin > 0).float().mean().item(),
            "chosen_reward": chosen_r.mean().item(),
            "rejected_reward": rejected_r.mean().item(),
        }

    def train_dpo(self, batch: PairBatch, params: DPOLossParams) -> dict[str, float]:
        rows = []
        for mb in self._micro_batches(batch):
            loss, metrics = self._dpo_step(mb, params)
            self._backward(loss, "DPO policy")
            self._step("DPO policy")
            rows.append(metrics)
        return {**_mean_metrics(rows), "lr": current_lr(self.ds_model)}

    @torch.no_grad()
    def eval_dpo(self, batch: PairBatch, params: DPOLossParams) -> dict[str, float]:
        """Per-pair means over the held-out pairs, a chunk at a time."""
        rows, sizes = [], []
        for mb in self._on_device(batch).chunks(EVAL_CHUNK):
            rows.append(self._dpo_step(mb, params)[1])
            sizes.append(len(mb))
        total = sum(sizes)
        return {k: sum(r[k] * n for r, n in zip(rows, sizes, strict=True)) / total for k in rows[0]}

    # -- PPO(-ptx) ----------------------------------------------------------------------------
    def train_ppo(self, shard: PolicyShard, params: PolicyLossParams) -> dict[str, float]:
        """One optimizer step on a PPO mini-batch (this rank's share), micro-batched."""
        micro, ptx = self._micro_batches(shard.rollout), shard.ptx
        # One slice of the ptx texts per micro-batch, never fewer: DeepSpeed steps the
        # optimizer after exactly grad_accum_steps backward passes.
        ptx_micro: list[TextBatch | None] = (
            [None] * len(micro) if ptx is None else self._on_device(ptx).split(len(micro))
        )
        rows = []
        for mb, ptx_mb in zip(micro, ptx_micro, strict=True):
            mask = mb.action_mask
            logps, logits = action_logprobs(
                self.model, mb.sequences, mb.attention_mask, mb.num_actions, params.temperature
            )
            pg_loss, clip_frac, approx_kl = policy_loss_clipped(
                logps,
                mb.logprobs,
                mb.advantages,
                mask,
                params.clip_eps,
                token_weights=mb.is_weights,
            )
            entropy = entropy_bonus(entropy_from_logits(logits), mask)
            loss = pg_loss - params.entropy_coef * entropy
            metrics = {
                "policy_loss": pg_loss.item(),
                "clip_fraction": float(clip_frac),
                "approx_kl": float(approx_kl),
                "entropy": entropy.item(),
                "logprob_drift": masked_mean((logps - mb.logprobs).abs(), mask).item(),
            }
            if ptx_mb is not None and params.ptx_coef > 0:
                ptx_logits = lm_logits(self.model, ptx_mb.input_ids, ptx_mb.attention_mask)
                lm = ptx_loss(ptx_logits, ptx_mb.input_ids, ptx_mb.attention_mask)
                loss = loss + params.ptx_coef * lm
                metrics["ptx_loss"] = lm.item()
            self._backward(loss, "PPO policy")
            self._step("PPO policy")
            rows.append(metrics)
        return {**_mean_metrics(rows), "policy_lr": current_lr(self.ds_model)}
