from collections.abc import Iterator

import pytest
import torch

from instructray.algorithms import advantages as adv
from instructray.algorithms.advantages import (
    ADVANTAGE_ESTIMATORS,
    CRITIC_FREE,
    AdvantageInputs,
    compute_gae,
    get_advantage_estimator,
    penalize_missing_eos,
    register_advantage_estimator,
    shape_rewards,
)


@pytest.fixture
def clean_registry() -> Iterator[None]:
    estimators, critic_free = dict(ADVANTAGE_ESTIMATORS), set(CRITIC_FREE)
    yield
    ADVANTAGE_ESTIMATORS.clear()
    ADVANTAGE_ESTIMATORS.update(estimators)
    CRITIC_FREE.clear()
    CRITIC_FREE.update(critic_free)


def test_shape_rewards_score_at_last_valid_token() -> None:
    scores = torch.tensor([2.0, -5.0, 1.0])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.7, 0.8, 0.9]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    out = shape_rewards(scores, kl, mask, kl_coef=0.5)
    expected = torch.tensor(
        [
            [-0.05, -0.10, -0.15 + 2.0],  # -0.5 * kl everywhere, score on the last token
            [-0.20 - 5.0, 0.0, 0.0],  # single valid token gets both
            [0.0, 0.0, 0.0],  # no valid token: nothing
        ]
    )
    torch.testing.assert_close(out, expected)


def test_shape_rewards_clips_score() -> None:
    scores = torch.tensor([2.0, -5.0])
    kl = torch.tensor([[0.1, 0.2], [0.4, float("nan")]])  # NaN in padding must not leak
    mask = torch.tensor([[1, 1], [1, 0]])
    out = shape_rewards(scores, kl, mask, kl_coef=0.5, clip_score=3.0)
    torch.testing.assert_close(out, torch.tensor([[-0.05, -0.1 + 2.0], [-0.2 - 3.0, 0.0]]))


def test_missing_eos_penalty_only_on_cut_off_responses() -> None:
    scores = torch.tensor([2.0, -5.0, 0.5])
    ended = torch.tensor([True, False, False])
    out = penalize_missing_eos(scores, ended, 1.5)
    torch.testing.assert_close(out, torch.tensor([2.0, -6.5, -1.0]))
    torch.testing.assert_close(penalize_missing_eos(scores, ended, 0.0), scores)


def test_gae_gamma1_lam095_by_hand() -> None:
    # r = [0, 0, 0, 1], V = [0.1, 0.2, 0.3, 0.4], V after the end = 0
    # d3 = 1 - 0.4 = 0.6                 A3 = 0.6
    # d2 = 0 + 0.4 - 0.3 = 0.1           A2 = 0.1 + 0.95 * 0.6    = 0.67
    # d1 = 0 + 0.3 - 0.2 = 0.1           A1 = 0.1 + 0.95 * 0.67   = 0.7365
    # d0 = 0 + 0.2 - 0.1 = 0.1           A0 = 0.1 + 0.95 * 0.7365 = 0.799675
    rewards = torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)
    values = torch.tensor([[0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)
    mask = torch.ones(1, 4, dtype=torch.bool)
    a, r = compute_gae(rewards, values, mask, gamma=1.0, lam=0.95)
    torch.testing.assert_close(
        a, torch.tensor([[0.799675, 0.7365, 0.67, 0.6]], dtype=torch.float64)
    )
    torch.testing.assert_close(
        r, torch.tensor([[0.899675, 0.9365, 0.97, 1.0]], dtype=torch.float64)
    )
    # With lam = 1 the return is the undiscounted reward-to-go, 1 everywhere.
    _, r1 = compute_gae(rewards, values, mask, gamma=1.0, lam=1.0)
    torch.testing.assert_close(r1, torch.ones(1, 4, dtype=torch.float64))


def test_gae_gamma09_lam08_with_padded_row() -> None:
    # gamma * lam = 0.72.
    # Row 0: r = [1, 0, 0, 2], V = [0.5, 1.0, 0.5, 1.0]
    #   d3 = 2 - 1.0 = 1.0                  A3 = 1.0
    #   d2 = 0 + 0.9 * 1.0 - 0.5 = 0.4      A2 = 0.4 + 0.72 * 1.0     = 1.12
    #   d1 = 0 + 0.9 * 0.5 - 1.0 = -0.55    A1 = -0.55 + 0.72 * 1.12  = 0.2564
    #   d0 = 1 + 0.9 * 1.0 - 0.5 = 1.4      A0 = 1.4 + 0.72 * 0.2564  = 1.584608
    # Row 1: 2 valid tokens, r = [0.5, 1.0 | 9, 9], V = [1.0, 2.0 | 7, 7] (padding is junk)
    #   d1 = 1.0 + 0 - 2.0 = -1.0           A1 = -1.0   (V after the last valid token is 0)
    #   d0 = 0.5 + 0.9 * 2.0 - 1.0 = 1.3    A0 = 1.3 + 0.72 * -1.0    = 0.58
    rewards = torch.tensor([[1.0, 0.0, 0.0, 2.0], [0.5, 1.0, 9.0, 9.0]], dtype=torch.float64)
    values = torch.tensor([[0.5, 1.0, 0.5, 1.0], [1.0, 2.0, 7.0, 7.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    a, r = compute_gae(rewards, values, mask, gamma=0.9, lam=0.8)
    expected_a = torch.tensor(
        [[1.584608, 0.2564, 1.12, 1.0], [0.58, -1.0, 0.0, 0.0]], dtype=torch.float64
    )
    expected_r = torch.tensor(
        [[2.084608, 1.2564, 1.62, 2.0], [1.58, 1.0, 0.0, 0.0]], dtype=torch.float64
    )
    torch.testing.assert_close(a, expected_a)
    torch.testing.assert_close(r, expected_r)


def test_gae_estimator_matches_compute_gae() -> None:
    g = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    mask = torch.arange(5)[None, :] < torch.tensor([[5], [2], [4]])
    inputs = AdvantageInputs(
        rewards=rewards,
        values=values,
        action_mask=mask,
        scores=torch.zeros(3),
        group_ids=torch.tensor([0, 0, 1]),
        gamma=0.99,
        lam=0.95,
    )
    got = get_advantage_estimator("gae")(inputs)
    want = compute_gae(rewards, values, mask, gamma=0.99, lam=0.95)
    torch.testing.assert_close(got, want)
    assert "gae" not in CRITIC_FREE


def test_gae_without_values_raises() -> None:
    inputs = AdvantageInputs(
        rewards=torch.zeros(1, 2),
        values=None,
        action_mask=torch.ones(1, 2),
        scores=torch.zeros(1),
        group_ids=torch.zeros(1, dtype=torch.long),
        gamma=1.0,
        lam=0.95,
    )
    with pytest.raises(ValueError, match="values"):
        get_advantage_estimator("gae")(inputs)


def test_inputs_are_frozen() -> None:
    inputs = AdvantageInputs(
        torch.zeros(1, 1), None, torch.ones(1, 1), torch.zeros(1), torch.zeros(1), 1.0, 1.0
    )
    with pytest.raises(AttributeError):
        inputs.gamma = 0.5  # type: ignore[misc]


def test_duplicate_registration_raises(clean_registry: None) -> None:
    with pytest.raises(ValueError, match="gae"):
        register_advantage_estimator("gae")(adv.gae_estimator)


def test_register_critic_free_and_lookup(clean_registry: None) -> None:
    @register_advantage_estimator("test_scores_only", needs_critic=False)
    def scores_only(inputs: AdvantageInputs) -> tuple[torch.Tensor, torch.Tensor]:
        a = inputs.scores[:, None] * inputs.action_mask
        return a, a

    assert get_advantage_estimator("test_scores_only") is scores_only
    assert "test_scores_only" in CRITIC_FREE


def test_unknown_name_lists_known_ones() -> None:
    with pytest.raises(KeyError, match=r"nope.*gae"):
        get_advantage_estimator("nope")
