import math

import pytest
import torch
import torch.nn.functional as F

from instructray.algorithms.losses import (
    dpo_loss,
    entropy_bonus,
    pairwise_ranking_loss,
    policy_loss_clipped,
    ptx_loss,
    sft_loss,
    value_loss_clipped,
)


def neg_log_sigmoid(x: float) -> float:
    return -math.log(1 / (1 + math.exp(-x)))


# --- SFT / ptx -------------------------------------------------------------------------------


def test_sft_loss_uniform_logits_is_log_v() -> None:
    logits = torch.zeros(2, 4, 5)
    ids = torch.tensor([[0, 1, 2, 3], [4, 3, 2, 1]])
    assert math.isclose(sft_loss(logits, ids, torch.ones(2, 4)).item(), math.log(5), rel_tol=1e-6)


def test_sft_loss_equals_cross_entropy_on_selected_targets() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g)
    ids = torch.randint(0, 7, (2, 5), generator=g)
    loss_mask = torch.tensor([[1, 0, 1, 1, 0], [0, 1, 1, 1, 1]])  # [0, 0] can never be a target
    targets = [(0, 2), (0, 3), (1, 1), (1, 2), (1, 3), (1, 4)]
    expected = F.cross_entropy(
        torch.stack([logits[b, t - 1] for b, t in targets]),
        torch.stack([ids[b, t] for b, t in targets]),
    )
    torch.testing.assert_close(sft_loss(logits, ids, loss_mask), expected)


def test_sft_loss_empty_mask_is_zero() -> None:
    assert (
        sft_loss(torch.randn(1, 3, 4), torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 3)) == 0
    )


def test_ptx_loss_right_padding_is_plain_lm_loss() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 6, generator=g)
    ids = torch.randint(0, 6, (2, 5), generator=g)
    attention = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    torch.testing.assert_close(ptx_loss(logits, ids, attention), sft_loss(logits, ids, attention))


def test_ptx_loss_left_padding_skips_first_real_token() -> None:
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(1, 4, 6, generator=g)
    ids = torch.randint(0, 6, (1, 4), generator=g)
    attention = torch.tensor([[0, 1, 1, 1]])  # token 1 would be predicted from the pad at 0
    expected = F.cross_entropy(logits[0, 1:3], ids[0, 2:4])
    torch.testing.assert_close(ptx_loss(logits, ids, attention), expected)


# --- reward model ----------------------------------------------------------------------------


def test_pairwise_loss_four_way_ranking_by_hand() -> None:
    rewards = torch.tensor([3.0, 1.0, 2.0, 0.0], requires_grad=True)
    ranks = torch.tensor([0, 1, 2, 3])
    # pairs (w, l) and r_w - r_l: (0,1)=2, (0,2)=1, (0,3)=3, (1,2)=-1, (1,3)=1, (2,3)=2
    diffs = [2.0, 1.0, 3.0, -1.0, 1.0, 2.0]
    expected = sum(neg_log_sigmoid(d) for d in diffs) / 6
    loss, acc = pairwise_ranking_loss(rewards, torch.zeros(4, dtype=torch.long), ranks)
    assert math.isclose(loss.item(), expected, rel_tol=1e-6)
    assert math.isclose(acc.item(), 5 / 6, rel_tol=1e-6)
    assert not acc.requires_grad
    loss.backward()
    assert rewards.grad is not None and torch.isfinite(rewards.grad).all()


def test_pairwise_loss_averages_per_group() -> None:
    # Group 7 (K=2): rewards [1, 0], ranks [0, 1]          -> one pair, diff 1, accuracy 1
    # Group 3 (K=3): rewards [0.5, 1.5, -0.5], ranks [0,1,2] -> diffs -1, 1, 2, accuracy 2/3
    # Samples are interleaved to check that grouping does not rely on order.
    rewards = torch.tensor([0.5, 1.0, 1.5, 0.0, -0.5])
    group_ids = torch.tensor([3, 7, 3, 7, 3])
    ranks = torch.tensor([0, 0, 1, 1, 2])
    loss_7 = neg_log_sigmoid(1.0)
    loss_3 = (neg_log_sigmoid(-1.0) + neg_log_sigmoid(1.0) + neg_log_sigmoid(2.0)) / 3
    loss, acc = pairwise_ranking_loss(rewards, group_ids, ranks)
    assert math.isclose(loss.item(), (loss_7 + loss_3) / 2, rel_tol=1e-6)
    assert math.isclose(acc.item(), (1 + 2 / 3) / 2, rel_tol=1e-6)


def test_pairwise_loss_tied_ranks_give_no_pair() -> None:
    # Group 0: ranks [0, 0, 1] -> pairs (0,2) and (1,2) only; group 1 all tied -> ignored.
    rewards = torch.tensor([2.0, -1.0, 0.0, 5.0, -5.0])
    group_ids = torch.tensor([0, 0, 0, 1, 1])
    ranks = torch.tensor([0, 0, 1, 0, 0])
    loss, acc = pairwise_ranking_loss(rewards, group_ids, ranks)
    assert math.isclose(
        loss.item(), (neg_log_sigmoid(2.0) + neg_log_sigmoid(-1.0)) / 2, rel_tol=1e-6
    )
    assert math.isclose(acc.item(), 0.5, rel_tol=1e-6)


# --- PPO -------------------------------------------------------------------------------------

# eps = 0.2. Token: ratio, advantage -> unclipped -A*r, clipped -A*clip(r), max, clipped?
#   0: 1.2 (boundary), +1 -> -1.2, -1.2 -> -1.2, no
#   1: 1.3,            +1 -> -1.3, -1.2 -> -1.2, yes
#   2: 1.3,            -1 ->  1.3,  1.2 ->  1.3, no
#   3: 0.7,            -1 ->  0.7,  0.8 ->  0.8, yes
#   4: 0.7,            +1 -> -0.7, -0.8 -> -0.7, no
#   5: 0.8 (boundary), -1 ->  0.8,  0.8 ->  0.8, no
#   6: padding with a junk log-prob
# loss = (-1.2 - 1.2 + 1.3 + 0.8 - 0.7 + 0.8) / 6 = -0.2 / 6, clip_fraction = 2 / 6
RATIOS = [1.2, 1.3, 1.3, 0.7, 0.7, 0.8]
ADVS = [1.0, 1.0, -1.0, -1.0, 1.0, -1.0, 3.0]
CLIPPED = [False, True, False, True, False, False]


def _ppo_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    old = torch.tensor([[-1.0] * 7], dtype=torch.float64)
    logp = old.clone()
    logp[0, :6] += torch.log(torch.tensor(RATIOS, dtype=torch.float64))
    logp[0, 6] = 1000.0
    assert torch.equal((logp - old)[0, [0, 5]].exp(), torch.tensor([1.2, 0.8], dtype=torch.float64))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0]])
    return logp, old, torch.tensor([ADVS], dtype=torch.float64), mask


def test_policy_loss_clip_boundaries_by_hand() -> None:
    logp, old, advantages, mask = _ppo_inputs()
    loss, clip_frac, approx_kl = policy_loss_clipped(logp, old, advantages, mask, clip_eps=0.2)
    assert math.isclose(loss.item(), -0.2 / 6, rel_tol=1e-9)
    assert math.isclose(clip_frac.item(), 2 / 6, rel_tol=1e-6)
    expected_kl = sum(0.5 * math.log(r) ** 2 for r in RATIOS) / 6
    assert math.isclose(approx_kl.item(), expected_kl, rel_tol=1e-9)
    assert not approx_kl.requires_grad and not clip_frac.requires_grad


def test_policy_loss_just_beyond_boundary_is_clipped() -> None:
    old = torch.zeros(1, 2, dtype=torch.float64)
    logp = torch.log(torch.tensor([[1.2, 0.8]], dtype=torch.float64)) + torch.tensor(
        [[1e-6, -1e-6]]
    )
    _, clip_frac, _ = policy_loss_clipped(
        logp, old, torch.tensor([[1.0, -1.0]]), torch.ones(1, 2), 0.2
    )
    assert clip_frac.item() == 1.0


def test_policy_loss_gradient_zero_where_clipped() -> None:
    logp, old, advantages, mask = _ppo_inputs()
    logp.requires_grad_(True)
    loss, _, _ = policy_loss_clipped(logp, old, advantages, mask, clip_eps=0.2)
    loss.backward()
    assert logp.grad is not None
    n = 6
    expected = [0.0 if c else -a * r / n for r, a, c in zip(RATIOS, ADVS, CLIPPED, strict=False)]
    torch.testing.assert_close(logp.grad[0, :6], torch.tensor(expected, dtype=torch.float64))
    assert logp.grad[0, 6].item() == 0.0


def test_policy_loss_asymmetric_clip_high() -> None:
    # ratio 1.3 with A = +1: inside [0.8, 1.4] with clip_eps_high = 0.4, so unclipped: -1.3.
    old = torch.zeros(1, 1, dtype=torch.float64)
    logp = torch.log(torch.tensor([[1.3]], dtype=torch.float64))
    loss, clip_frac, _ = policy_loss_clipped(
        logp, old, torch.ones(1, 1), torch.ones(1, 1), clip_eps=0.2, clip_eps_high=0.4
    )
    assert math.isclose(loss.item(), -1.3, rel_tol=1e-9)
    assert clip_frac.item() == 0.0


def test_value_loss_clipped_by_hand() -> None:
    # eps = 0.2, old = 1.0 everywhere.
    #   0: V 1.5, R 2.0: V_clip 1.2; (V-R)^2 = 0.25, (V_clip-R)^2 = 0.64 -> 0.64 (clipped)
    #   1: V 0.9, R 1.0: V_clip 0.9; 0.01 and 0.01                       -> 0.01
    #   2: V 1.5, R 0.0: V_clip 1.2; 2.25 and 1.44                       -> 2.25
    #   3: padding (junk)
    values = torch.tensor([[1.5, 0.9, 1.5, 50.0]], dtype=torch.float64)
    old = torch.tensor([[1.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    returns = torch.tensor([[2.0, 1.0, 0.0, -50.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, clip_frac = value_loss_clipped(values, old, returns, mask, clip_eps=0.2)
    assert math.isclose(loss.item(), 0.5 * (0.64 + 0.01 + 2.25) / 3, rel_tol=1e-9)
    assert math.isclose(clip_frac.item(), 1 / 3, rel_tol=1e-6)
    loss, clip_frac = value_loss_clipped(values, old, returns, mask, clip_eps=None)
    assert math.isclose(loss.item(), 0.5 * (0.25 + 0.01 + 2.25) / 3, rel_tol=1e-9)
    assert clip_frac.item() == 0.0


def test_entropy_bonus_is_masked_mean() -> None:
    entropy = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert math.isclose(entropy_bonus(entropy, mask).item(), 7 / 3, rel_tol=1e-6)


# --- DPO -------------------------------------------------------------------------------------

# h = (pi_c - pi_r) - (ref_c - ref_r)
# Sample 0: pi_c -10, pi_r -12, ref_c -11, ref_r -11.5 -> h = 2 - 0.5 = 1.5
# Sample 1: pi_c -5,  pi_r -4,  ref_c -5,  ref_r -5    -> h = -1 - 0 = -1
PC = torch.tensor([-10.0, -5.0], dtype=torch.float64, requires_grad=True)
PR = torch.tensor([-12.0, -4.0], dtype=torch.float64)
RC = torch.tensor([-11.0, -5.0], dtype=torch.float64)
RR = torch.tensor([-11.5, -5.0], dtype=torch.float64)
H = [1.5, -1.0]


def test_dpo_sigmoid_by_hand() -> None:
    beta = 0.1
    loss, chosen, rejected = dpo_loss(PC, PR, RC, RR, beta=beta)
    expected = (neg_log_sigmoid(beta * H[0]) + neg_log_sigmoid(beta * H[1])) / 2
    assert math.isclose(loss.item(), expected, rel_tol=1e-12)
    # rewards: beta * (pi - ref): chosen 0.1 * 1 and 0.1 * 0; rejected 0.1 * -0.5 and 0.1 * 1
    torch.testing.assert_close(chosen, torch.tensor([0.1, 0.0], dtype=torch.float64))
    torch.testing.assert_close(rejected, torch.tensor([-0.05, 0.1], dtype=torch.float64))
    assert not chosen.requires_grad and not rejected.requires_grad
    assert loss.requires_grad


def test_dpo_label_smoothing_by_hand() -> None:
    beta, ls = 0.5, 0.1
    loss, _, _ = dpo_loss(PC, PR, RC, RR, beta=beta, label_smoothing=ls)
    per = [(1 - ls) * neg_log_sigmoid(beta * h) + ls * neg_log_sigmoid(-beta * h) for h in H]
    assert math.isclose(loss.item(), sum(per) / 2, rel_tol=1e-12)


def test_ipo_by_hand() -> None:
    # 1 / (2 beta) = 5: (1.5 - 5)^2 = 12.25, (-1 - 5)^2 = 36
    loss, _, _ = dpo_loss(PC, PR, RC, RR, beta=0.1, loss_type="ipo")
    assert math.isclose(loss.item(), (12.25 + 36.0) / 2, rel_tol=1e-12)


def test_dpo_unknown_loss_type_raises() -> None:
    with pytest.raises(ValueError, match="hinge"):
        dpo_loss(PC, PR, RC, RR, beta=0.1, loss_type="hinge")  # type: ignore[arg-type]
