"""The scalar-head role: the reward model (trained on rankings, then frozen to score rollouts)
and the critic (initialised from the reward model, trained on PPO returns)."""

from __future__ import annotations

from statistics import fmean

import torch

from instructray.actors.base import RankActor
from instructray.algorithms import pairwise_ranking_loss, value_loss_clipped
from instructray.config.rank import CriticLossParams
from instructray.models import load_value_model, sequence_scores
from instructray.training.batches import ActionBatch, CriticBatch, RankingBatch, TextBatch
from instructray.training.deepspeed_model import DeepSpeedSpec, current_lr, torch_dtype
from instructray.training.forward import action_values


class ValueModelActor(RankActor):
    def load(self, path: str, dtype: str, spec: DeepSpeedSpec | None) -> None:
        self.load_tokenizer(path)
        self._attach(load_value_model(path, torch_dtype(dtype)), spec)

    # -- reward model -------------------------------------------------------------------------
    def _rm_loss(self, mb: RankingBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rewards = sequence_scores(self.model, mb.input_ids, mb.attention_mask).float()
        loss, accuracy = pairwise_ranking_loss(rewards, mb.group_ids, mb.ranks)
        return loss, accuracy, rewards

    def train_rm(self, batch: RankingBatch) -> dict[str, float]:
        assert self.spec is not None, "this actor was loaded without an optimizer"
        losses, accuracies = [], []
        for mb in self._on_device(batch).whole_groups(self.spec.micro_batch_size):
            loss, accuracy, _ = self._rm_loss(mb)
            self._backward(loss, "reward model")
            self._step("reward model")
            losses.append(loss.item())
            accuracies.append(float(accuracy))
        return {
            "loss": fmean(losses),
            "accuracy": fmean(accuracies),
            "lr": current_lr(self.ds_model),
        }

    @torch.no_grad()
    def eval_rm(self, batch: RankingBatch) -> dict[str, float]:
        loss, accuracy, _ = self._rm_loss(self._on_device(batch))
        return {"loss": loss.item(), "accuracy": float(accuracy)}

    def set_reward_offset(self, offset: float) -> None:
        """Scores become logit − offset; saved in the checkpoint's config (``reward_offset``)."""
        assert self.model is not None
        self.model.config.reward_offset = float(offset)

    @torch.no_grad()
    def scores(self, batch: ActionBatch | TextBatch) -> torch.Tensor:
        """r(x, y) at the last real token of each row: sampled `[prompt | response]` rows, or
        demonstrations (reward normalisation)."""
        batch = self._on_device(batch)
        ids = batch.sequences if isinstance(batch, ActionBatch) else batch.input_ids
        return sequence_scores(self.model, ids, batch.attention_mask).float().cpu()

    # -- critic -------------------------------------------------------------------------------
    @torch.no_grad()
    def action_values(self, batch: ActionBatch) -> torch.Tensor:
        batch = self._on_device(batch)
        return action_values(
            self.model, batch.sequences, batch.attention_mask, batch.num_actions
        ).cpu()

    def train_critic(self, batch: CriticBatch, params: CriticLossParams) -> dict[str, float]:
        assert self.spec is not None, "this actor was loaded without an optimizer"
        rows = []
        for mb in self._on_device(batch).chunks(self.spec.micro_batch_size):
            values = action_values(self.model, mb.sequences, mb.attention_mask, mb.num_actions)
            loss, clip_frac = value_loss_clipped(
                values, mb.values, mb.returns, mb.action_mask, params.value_clip_eps
            )
            self._backward(params.value_loss_coef * loss, "PPO critic")
            self._step("PPO critic")
            rows.append((loss.item(), float(clip_frac)))
        return {
            "value_loss": fmean(r[0] for r in rows),
            "value_clip_fraction": fmean(r[1] for r in rows),
            "critic_lr": current_lr(self.ds_model),
        }
