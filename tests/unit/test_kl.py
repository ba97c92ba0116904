import math

import pytest
import torch

from instructray.algorithms.kl import (
    AdaptiveKLController,
    FixedKLController,
    KLController,
    kl_penalty,
)

LOGP = torch.tensor([[-1.0, -2.0]])
REF = torch.tensor([[-1.5, -1.0]])


def test_k1_k2_by_hand() -> None:
    # log-ratios: -1 - (-1.5) = 0.5 and -2 - (-1) = -1
    torch.testing.assert_close(kl_penalty(LOGP, REF, "k1"), torch.tensor([[0.5, -1.0]]))
    torch.testing.assert_close(kl_penalty(LOGP, REF, "k2"), torch.tensor([[0.125, 0.5]]))


def test_k3_by_hand() -> None:
    # r = log pi_ref - log pi = -0.5 and 1.0; k3 = e^r - 1 - r
    expected = torch.tensor([[math.exp(-0.5) - 1 + 0.5, math.exp(1.0) - 1 - 1.0]])
    torch.testing.assert_close(kl_penalty(LOGP, REF, "k3"), expected)


def test_k3_nonnegative_on_random_and_zero_when_equal() -> None:
    g = torch.Generator().manual_seed(0)
    logp = torch.randn(64, 128, generator=g) * 5
    ref = torch.randn(64, 128, generator=g) * 5
    assert (kl_penalty(logp, ref, "k3") >= 0).all()
    small = logp + torch.randn(64, 128, generator=g) * 1e-4
    assert (kl_penalty(logp, small, "k3") >= 0).all()
    assert (kl_penalty(logp, logp, "k3") == 0).all()


def test_k3_log_ratio_clamped_to_20() -> None:
    out = kl_penalty(torch.tensor([0.0, -100.0]), torch.tensor([-100.0, 0.0]), "k3")
    # r = -100 -> clamped to -20: e^-20 - 1 + 20;  r = 100 -> clamped to 20: e^20 - 1 - 20
    expected = torch.tensor([math.exp(-20) - 1 + 20, math.exp(20) - 1 - 20])
    torch.testing.assert_close(out, expected)
    assert torch.isfinite(out).all()


def test_unknown_estimator_raises() -> None:
    with pytest.raises(ValueError, match="k4"):
        kl_penalty(LOGP, REF, "k4")  # type: ignore[arg-type]


def test_fixed_controller_never_changes() -> None:
    ctl = FixedKLController(0.05)
    ctl.update(current_kl=100.0, n_steps=1000)
    assert ctl.value == 0.05
    assert isinstance(ctl, KLController)


def test_adaptive_controller_one_update_by_hand() -> None:
    ctl = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10_000)
    assert isinstance(ctl, KLController)
    # error = 6.6 / 6 - 1 = 0.1 (inside the clip); mult = 1 + 0.1 * 256 / 10000 = 1.00256
    ctl.update(current_kl=6.6, n_steps=256)
    assert math.isclose(ctl.value, 0.1 * 1.00256, rel_tol=1e-12)


@pytest.mark.parametrize(
    ("current_kl", "mult"),
    [
        (12.0, 1 + 0.2 * 256 / 10_000),  # error 1.0 clipped to +0.2
        (0.0, 1 - 0.2 * 256 / 10_000),  # error -1.0 clipped to -0.2
        (6.0, 1.0),  # on target: unchanged
    ],
)
def test_adaptive_controller_clips_error(current_kl: float, mult: float) -> None:
    ctl = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10_000)
    ctl.update(current_kl=current_kl, n_steps=256)
    assert math.isclose(ctl.value, 0.1 * mult, rel_tol=1e-12)


def test_adaptive_controller_rejects_bad_config() -> None:
    with pytest.raises(ValueError):
        AdaptiveKLController(0.1, target=0.0, horizon=10)
