"""One update of each trainer role, in this process (no Ray), from the typed batches the driver
sends: on the first pass the new model equals the old one, so every loss has a value computable
by hand from a forward pass taken before the step."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from instructray.actors.policy import CausalLMActor
from instructray.actors.value import ValueModelActor
from instructray.algorithms import (
    entropy_from_logits,
    masked_mean,
    pairwise_ranking_loss,
    ptx_loss,
)
from instructray.config import OptimConfig
from instructray.config.rank import CriticLossParams, DPOLossParams, PolicyLossParams
from instructray.models import sequence_scores
from instructray.training.batches import (
    ActionBatch,
    CriticBatch,
    PairBatch,
    PolicyBatch,
    PolicyShard,
    RankingBatch,
    TextBatch,
)
from instructray.training.deepspeed_model import DeepSpeedSpec
from instructray.training.forward import action_logprobs, lm_logits
from tests.unit.model_helpers import _batch

TEXTS = [" a gorgeous, heartfelt film", "dull.", " the plot twists keep coming", " fine"]
R = 3  # response tokens: the last three of each left-padded row


def _spec(rows: int) -> DeepSpeedSpec:
    return DeepSpeedSpec(rows, 1, 0, "float32", OptimConfig(lr=1e-3), dropout=False)


def _load(cls: type, tiny_dir: Path, rows: int) -> CausalLMActor | ValueModelActor:
    actor = cls(rank=0, world_size=1, seed=0)
    actor.load(str(tiny_dir), "float32", _spec(rows))
    return actor


def _actions(tok) -> ActionBatch:
    ids, mask = _batch(tok, TEXTS, "left")
    action_mask = torch.ones(len(TEXTS), R, dtype=torch.bool)
    action_mask[1, -1] = False  # a response that ended one token early
    return ActionBatch(sequences=ids, attention_mask=mask, action_mask=action_mask)


def _texts(tok) -> TextBatch:
    ids, mask = _batch(tok, TEXTS[:2], "right")
    return TextBatch(input_ids=ids, attention_mask=mask, loss_mask=mask)


def test_a_ppo_policy_update(tiny_dir: Path, process_group: None) -> None:
    actor = _load(CausalLMActor, tiny_dir, len(TEXTS))
    actions, ptx = _actions(actor.tokenizer), _texts(actor.tokenizer)
    old = actor.action_logprobs(actions)
    with torch.no_grad():
        _, logits = action_logprobs(
            actor.model, actions.sequences, actions.attention_mask, R, temperature=1.0
        )
        entropy = masked_mean(entropy_from_logits(logits), actions.action_mask).item()
        ptx_logits = lm_logits(actor.model, ptx.input_ids, ptx.attention_mask)
        lm = ptx_loss(ptx_logits, ptx.input_ids, ptx.attention_mask).item()
    advantages = torch.tensor([[1.0, -2.0, 0.5], [3.0, 1.0, 99.0], [0.0, 0.0, -1.0], [2, 2, 2]])
    batch = PolicyBatch(
        sequences=actions.sequences,
        attention_mask=actions.attention_mask,
        action_mask=actions.action_mask,
        logprobs=old,
        advantages=advantages,
    )
    params = PolicyLossParams(temperature=1.0, clip_eps=0.2, entropy_coef=0.01, ptx_coef=0.5)
    metrics = actor.train_ppo(PolicyShard(rollout=batch, ptx=ptx), params)
    # ratio 1 everywhere: the surrogate is −(mean advantage over the 11 valid tokens)
    assert metrics["policy_loss"] == pytest.approx(-(-0.5 + 4.0 - 1.0 + 6.0) / 11, abs=1e-6)
    assert metrics["clip_fraction"] == 0.0
    assert metrics["approx_kl"] == pytest.approx(0.0, abs=1e-10)
    assert metrics["logprob_drift"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["entropy"] == pytest.approx(entropy, rel=1e-5)
    assert metrics["ptx_loss"] == pytest.approx(lm, rel=1e-5)
    assert metrics["policy_lr"] == pytest.approx(1e-3)
    assert actor.ds_model.global_steps == 1
    assert (actor.action_logprobs(actions) - old).abs().max() > 1e-4  # the step moved π


def test_a_critic_update(tiny_dir: Path, process_group: None) -> None:
    actor = _load(ValueModelActor, tiny_dir, len(TEXTS))
    actions = _actions(actor.tokenizer)
    old = actor.action_values(actions)
    delta = torch.tensor([[1.0, 2.0, 0.0], [0.5, 0.5, 50.0], [1.0, 1.0, 1.0], [0.0, 2.0, 1.0]])
    batch = CriticBatch(
        sequences=actions.sequences,
        attention_mask=actions.attention_mask,
        action_mask=actions.action_mask,
        values=old,
        returns=old + delta,
    )
    metrics = actor.train_critic(batch, CriticLossParams(value_clip_eps=0.2, value_loss_coef=1.0))
    squares = 1 + 4 + 0 + 0.25 + 0.25 + 1 + 1 + 1 + 0 + 4 + 1  # the masked 50 left out
    assert metrics["value_loss"] == pytest.approx(0.5 * squares / 11, rel=1e-5)
    assert metrics["value_clip_fraction"] == 0.0
    assert not torch.allclose(actor.action_values(actions), old)


def test_a_reward_model_update_keeps_rankings_whole(tiny_dir: Path, process_group: None) -> None:
    actor = _load(ValueModelActor, tiny_dir, 2)  # two rankings per micro-batch
    ids, mask = _batch(actor.tokenizer, TEXTS[:3] + TEXTS[:2], "right")
    batch = RankingBatch(
        input_ids=ids,
        attention_mask=mask,
        group_ids=torch.tensor([0, 0, 0, 1, 1]),
        ranks=torch.tensor([0, 1, 2, 1, 0]),
    )
    with torch.no_grad():
        scores = sequence_scores(actor.model, ids, mask).float()
    expected, accuracy = pairwise_ranking_loss(scores, batch.group_ids, batch.ranks)
    metrics = actor.train_rm(batch)
    assert metrics["loss"] == pytest.approx(expected.item(), rel=1e-5)
    assert metrics["accuracy"] == pytest.approx(float(accuracy))
    assert actor.ds_model.global_steps == 1  # one micro-batch: both rankings together


def test_a_dpo_update_against_itself_starts_at_log_2(tiny_dir: Path, process_group: None) -> None:
    actor = _load(CausalLMActor, tiny_dir, 2)
    tok = actor.tokenizer
    ids, mask = _batch(tok, TEXTS[2:], "right")
    pair = PairBatch(chosen=_texts(tok), rejected=TextBatch(ids, mask, loss_mask=mask))
    with pytest.raises(ValueError, match="need the reference's log-probs"):
        actor.train_dpo(pair, DPOLossParams(beta=0.1, loss_type="sigmoid", label_smoothing=0.0))
    pair = pair.with_reference(*actor.pair_logps(pair))  # the policy is its own reference
    params = DPOLossParams(beta=0.1, loss_type="sigmoid", label_smoothing=0.0)
    metrics = actor.train_dpo(pair, params)
    assert metrics["loss"] == pytest.approx(math.log(2), abs=1e-6)  # −log σ(0)
    assert metrics["reward_margin"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["reward_accuracy"] == 0.0
    after = actor.eval_dpo(pair, params)
    assert after["reward_margin"] > 0 and after["loss"] < math.log(2)  # the step helped
