"""A NaN or inf stops the step before the optimizer applies it, and says where."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from instructray.actors.policy import CausalLMActor
from instructray.config import OptimConfig
from instructray.training.deepspeed_model import DeepSpeedSpec, init_distributed
from instructray.training.guard import NonFiniteError, check_finite, check_gradients

DIST_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


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


@pytest.fixture(scope="module")
def process_group() -> Iterator[None]:
    """A gloo group of one in this process, as a policy rank joins; env and group undone after."""
    saved = {k: os.environ.get(k) for k in DIST_ENV}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    init_distributed(0, 1, "127.0.0.1", port)
    yield
    torch.distributed.destroy_process_group()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _policy(tiny_dir: Path) -> CausalLMActor:
    actor = CausalLMActor(rank=0, world_size=1, seed=0)
    spec = DeepSpeedSpec(2, 1, 0, "float32", OptimConfig(lr=1e-3), dropout=False)
    actor.load(str(tiny_dir), "float32", spec)
    return actor


def _batch(actor: CausalLMActor) -> dict[str, torch.Tensor]:
    ids = actor.tokenizer([" a fine film", " dull"], return_tensors="pt", padding=True)
    return {
        "input_ids": ids["input_ids"],
        "attention_mask": ids["attention_mask"],
        "loss_mask": ids["attention_mask"],
    }


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
