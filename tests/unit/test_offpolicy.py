"""Truncated importance weights and the engine mismatch metric, against hand-computed values."""

from __future__ import annotations

import math

import torch

from instructray.algorithms import engine_mismatch, policy_loss_clipped, truncated_is_weights


def test_truncated_is_weights_by_hand() -> None:
    trainer = torch.tensor([[math.log(0.5), math.log(0.9), 0.0]])
    engine = torch.tensor([[math.log(0.25), math.log(0.9), 5.0]])
    mask = torch.tensor([[1, 1, 0]])
    w = truncated_is_weights(trainer, engine, mask, cap=1.5)
    # 0.5/0.25 = 2 is truncated to 1.5; 0.9/0.9 = 1; padding 0.
    assert torch.allclose(w, torch.tensor([[1.5, 1.0, 0.0]]))


def test_token_weights_scale_the_policy_loss() -> None:
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    old = logp.detach().clone()
    adv = torch.tensor([[1.0, -2.0]])
    mask = torch.ones(1, 2)
    plain, _, _ = policy_loss_clipped(logp, old, adv, mask, 0.2)
    weighted, _, _ = policy_loss_clipped(
        logp, old, adv, mask, 0.2, token_weights=torch.tensor([[2.0, 0.5]])
    )
    # ratio 1: per-token losses are -A = [-1, 2]; plain mean 0.5; weighted (−2 + 1)/2 = −0.5.
    assert plain.item() == 0.5 and weighted.item() == -0.5


def test_engine_mismatch_zero_when_equal_and_positive_otherwise() -> None:
    a = torch.tensor([[-1.0, -2.0, -3.0]])
    mask = torch.tensor([[1, 1, 0]])
    same = engine_mismatch(a, a.clone(), mask)
    assert same == {"engine_logprob_abs_diff": 0.0, "engine_kl": 0.0}
    other = engine_mismatch(a, a + torch.tensor([[0.1, -0.3, 9.0]]), mask)
    assert math.isclose(other["engine_logprob_abs_diff"], 0.2, rel_tol=1e-5)
    assert other["engine_kl"] > 0
