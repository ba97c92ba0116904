"""A NaN or inf stops the step before the optimizer applies it, and says where."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from instructray.actors.policy import CausalLMActor
from instructray.config import OptimConfig
from instructray.training.batches import TextBatch
from instructray.training.deepspeed_model import DeepSpeedSpec
from instructray.training.guard import NonFiniteError, check_finite, check_gradients


def test_check_finite_names_the_tensor_and_counts_its_bad_values() -> None:
    check_finite({"scores": torch.tensor([1.0, -2.0])}, "PPO iteration 3")
    bad = torch.tensor([0.0, float("nan"), float("inf"), float("nan"), 1.0])
    with pytest.raises(NonFiniteError) as err:
        check_finite({"scores": torch.ones(2), "advantages": bad}, "PPO iteration 3")
    assert str(err.value).startswith(
        "PPO iteration 3: advantages has 3 non-finite of 5 values (2 NaN); the update was not applied"
    )


def test_check_gradients_names_the_parameter() -> None:
    layer = torch.nn.Linear(2, 2)
    layer(torch.ones(1, 2)).sum().backward()
    check_gradients(layer.named_parameters(), "here")
    layer.bias.grad[1] = float("inf")
    with pytest.raises(NonFiniteError, match=r"here: the gradient of bias has 1 non-finite of 2"):
        check_gradients(layer.named_parameters(), "here")


def _policy(tiny_dir: Path) -> CausalLMActor:
    actor = CausalLMActor(rank=0, world_size=1, seed=0)
    spec = DeepSpeedSpec(2, 1, 0, "float32", OptimConfig(lr=1e-3), dropout=False)
    actor.load(str(tiny_dir), "float32", spec)
    return actor


def _batch(actor: CausalLMActor) -> TextBatch:
    ids = actor.tokenizer([" a fine film", " dull"], return_tensors="pt", padding=True)
    return TextBatch(
        input_ids=ids["input_ids"],
        attention_mask=ids["attention_mask"],
        loss_mask=ids["attention_mask"],
    )


def _weights(actor: CausalLMActor) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in actor.model.state_dict().items()}


def test_a_nan_loss_is_refused_before_backward(tiny_dir: Path, process_group: None) -> None:
    actor = _policy(tiny_dir)
    batch = _batch(actor)
    actor.train_lm(batch)  # one good step
    with torch.no_grad():
        actor.model.model.norm.weight[0] = float("nan")
    before = _weights(actor)
    with pytest.raises(NonFiniteError) as err:
        actor.train_lm(batch)
    assert str(err.value).startswith(
        "language model (rank 0), optimizer step 2: loss has 1 non-finite of 1 values (1 NaN)"
    )
    assert actor.ds_model.global_steps == 1
    torch.testing.assert_close(_weights(actor), before, rtol=0, atol=0, equal_nan=True)


def test_a_nan_gradient_is_refused_before_the_optimizer_step(
    tiny_dir: Path, process_group: None
) -> None:
    actor = _policy(tiny_dir)
    target = actor.model.model.layers[1].mlp.down_proj.weight
    target.register_hook(lambda grad: torch.full_like(grad, float("nan")))
    before = _weights(actor)
    with pytest.raises(NonFiniteError) as err:
        actor.train_lm(_batch(actor))
    message = str(err.value)
    assert message.startswith("language model (rank 0), optimizer step 1: the gradient of ")
    assert "layers.1.mlp.down_proj.weight has" in message
    assert actor.ds_model.global_steps == 0
    torch.testing.assert_close(_weights(actor), before, rtol=0, atol=0)  # nothing applied
