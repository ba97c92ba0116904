import subprocess
import sys

import pytest
import torch

from instructray.algorithms.advantages import (
    ADVANTAGE_ESTIMATORS,
    CRITIC_FREE,
    AdvantageInputs,
    shape_rewards,
)
from instructray.algorithms.critic_free import (
    grpo_estimator,
    reinforce_pp_estimator,
    rloo_estimator,
    sequence_rewards,
)

PAD = 99.0  # garbage at padding positions: must never leak into any output


def make_inputs(
    rewards: list[list[float]],
    mask: list[list[int]],
    group_ids: list[int],
    gamma: float = 1.0,
) -> AdvantageInputs:
    return AdvantageInputs(
        rewards=torch.tensor(rewards),
        values=None,
        action_mask=torch.tensor(mask),
        scores=torch.zeros(len(rewards)),
        group_ids=torch.tensor(group_ids, dtype=torch.long),
        gamma=gamma,
        lam=0.95,
    )


def two_groups_of_three() -> AdvantageInputs:
    """Group 7 has sample rewards {1, 2, 3}, group 3 has {0, 0, 6}; the groups are interleaved."""
    return make_inputs(
        rewards=[
            [0.5, 0.5, PAD],  # group 7, r = 1
            [0.0, -1.0, 1.0],  # group 3, r = 0
            [2.0, PAD, PAD],  # group 7, r = 2
            [0.5, -0.5, PAD],  # group 3, r = 0
            [1.0, 1.0, 1.0],  # group 7, r = 3
            [-1.0, 7.0, PAD],  # group 3, r = 6
        ],
        mask=[[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1], [1, 1, 0]],
        group_ids=[7, 3, 7, 3, 7, 3],
    )


def expected_broadcast(per_sample: list[float], mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.bool(), torch.tensor(per_sample).unsqueeze(1), 0.0)


def assert_zero_at_padding(inputs: AdvantageInputs, *outs: torch.Tensor) -> None:
    for out in outs:
        assert (out[~inputs.action_mask.bool()] == 0).all()


def test_sequence_rewards_sum_valid_tokens_only() -> None:
    inputs = two_groups_of_three()
    torch.testing.assert_close(
        sequence_rewards(inputs.rewards, inputs.action_mask),
        torch.tensor([1.0, 0.0, 2.0, 0.0, 3.0, 6.0]),
    )


def test_sequence_reward_is_score_minus_kl_penalty() -> None:
    kl = torch.tensor([[0.2, 0.4, 5.0], [1.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    rewards = shape_rewards(torch.tensor([3.0, -1.0]), kl, mask, kl_coef=0.5)
    # 3 - 0.5 * (0.2 + 0.4) = 2.7 ; -1 - 0.5 * 1.0 = -1.5 (KL at padding ignored)
    torch.testing.assert_close(sequence_rewards(rewards, mask), torch.tensor([2.7, -1.5]))


def test_grpo_two_groups_of_three() -> None:
    inputs = two_groups_of_three()
    advantages, returns = grpo_estimator(inputs)
    # group 7 {1,2,3}: mean 2, population var (1+0+1)/3 = 2/3, std = 0.8164966
    #   -> (1-2)/0.8164966 = -1.2247449, 0, +1.2247449
    # group 3 {0,0,6}: mean 2, population var (4+4+16)/3 = 8, std = 2.8284271
    #   -> -2/2.8284271 = -0.7071068 (twice), 4/2.8284271 = 1.4142136
    per_sample = [-1.2247449, -0.7071068, 0.0, -0.7071068, 1.2247449, 1.4142136]
    expected = expected_broadcast(per_sample, inputs.action_mask)
    torch.testing.assert_close(advantages, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(returns, expected, rtol=0, atol=1e-5)
    assert_zero_at_padding(inputs, advantages, returns)


def test_rloo_two_groups_of_three() -> None:
    inputs = two_groups_of_three()
    advantages, returns = rloo_estimator(inputs)
    # group 7 {1,2,3}: baselines (2+3)/2=2.5, (1+3)/2=2, (1+2)/2=1.5 -> -1.5, 0, 1.5
    # group 3 {0,0,6}: baselines (0+6)/2=3, (0+6)/2=3, (0+0)/2=0 -> -3, -3, 6
    per_sample = [-1.5, -3.0, 0.0, -3.0, 1.5, 6.0]
    expected = expected_broadcast(per_sample, inputs.action_mask)
    torch.testing.assert_close(advantages, expected)
    torch.testing.assert_close(returns, expected)
    assert_zero_at_padding(inputs, advantages, returns)


def test_group_of_size_one_gets_zero() -> None:
    inputs = make_inputs(
        rewards=[[1.0, PAD], [3.0, PAD], [2.0, 3.0]],
        mask=[[1, 0], [1, 0], [1, 1]],
        group_ids=[0, 0, 1],  # rewards 1, 3 in group 0; a lone sample (r = 5) in group 1
    )
    grpo, _ = grpo_estimator(inputs)
    rloo, _ = rloo_estimator(inputs)
    # grpo group 0: mean 2, population std 1 -> -1, +1 ; rloo group 0: 1-3 = -2, 3-1 = +2
    torch.testing.assert_close(
        grpo, torch.tensor([[-1.0, 0.0], [1.0, 0.0], [0.0, 0.0]]), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(rloo, torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 0.0]]))
    assert (grpo[2] == 0).all() and (rloo[2] == 0).all()


def test_identical_rewards_in_group_give_zero() -> None:
    inputs = make_inputs(
        rewards=[[0.25, 0.5], [0.75, 0.0]], mask=[[1, 1], [1, 1]], group_ids=[4, 4]
    )
    for estimator in (grpo_estimator, rloo_estimator):
        advantages, _ = estimator(inputs)
        assert (advantages == 0).all()


@pytest.mark.parametrize("estimator", [grpo_estimator, rloo_estimator, reinforce_pp_estimator])
def test_fully_padded_row_is_all_zero(estimator) -> None:
    inputs = make_inputs(
        rewards=[[1.0, 2.0], [PAD, PAD], [4.0, PAD]],
        mask=[[1, 1], [0, 0], [1, 0]],
        group_ids=[0, 0, 0],
    )
    advantages, returns = estimator(inputs)
    assert (advantages[1] == 0).all() and (returns[1] == 0).all()
    assert_zero_at_padding(inputs, advantages, returns)
    assert torch.isfinite(advantages).all() and torch.isfinite(returns).all()


@pytest.mark.parametrize(
    ("gamma", "expected"),
    [
        # G3 = 4, G2 = 3+4 = 7, G1 = -2+7 = 5, G0 = 1+5 = 6 ; row 2: G1 = 5, G0 = 2+5 = 7
        (1.0, [[6.0, 5.0, 7.0, 4.0], [7.0, 5.0, 0.0, 0.0]]),
        # G3 = 4, G2 = 3+0.5*4 = 5, G1 = -2+0.5*5 = 0.5, G0 = 1+0.5*0.5 = 1.25
        # row 2: G1 = 5, G0 = 2+0.5*5 = 4.5
        (0.5, [[1.25, 0.5, 5.0, 4.0], [4.5, 5.0, 0.0, 0.0]]),
    ],
)
def test_reinforce_pp_discounted_returns(gamma: float, expected: list[list[float]]) -> None:
    inputs = make_inputs(
        rewards=[[1.0, -2.0, 3.0, 4.0], [2.0, 5.0, PAD, PAD]],
        mask=[[1, 1, 1, 1], [1, 1, 0, 0]],
        group_ids=[0, 0],
        gamma=gamma,
    )
    advantages, returns = reinforce_pp_estimator(inputs)
    torch.testing.assert_close(advantages, torch.tensor(expected))
    torch.testing.assert_close(returns, torch.tensor(expected))
    assert_zero_at_padding(inputs, advantages, returns)


def test_registered_as_critic_free() -> None:
    assert {"grpo", "rloo", "reinforce_pp"} <= CRITIC_FREE
    assert {"grpo", "rloo", "reinforce_pp"} <= set(ADVANTAGE_ESTIMATORS)
    assert "gae" not in CRITIC_FREE


def test_package_import_registers_them() -> None:
    code = (
        "import instructray.algorithms as a\n"
        "assert a.get_advantage_estimator('grpo') is not None\n"
        "assert {'grpo', 'rloo', 'reinforce_pp'} <= a.CRITIC_FREE\n"
        "assert 'gae' not in a.CRITIC_FREE\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
