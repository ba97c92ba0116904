import math

import torch

from instructray.algorithms.masked import masked_mean, masked_sum, masked_var, whiten

X = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])


def test_masked_sum_all_and_per_row() -> None:
    assert masked_sum(X, MASK).item() == 7.0  # 1 + 2 + 4
    torch.testing.assert_close(masked_sum(X, MASK, dim=1), torch.tensor([3.0, 4.0]))


def test_masked_mean_all_and_per_row() -> None:
    assert math.isclose(masked_mean(X, MASK).item(), 7.0 / 3.0, rel_tol=1e-6)
    torch.testing.assert_close(masked_mean(X, MASK, dim=1), torch.tensor([1.5, 4.0]))


def test_masked_mean_empty_mask_is_zero_not_nan() -> None:
    empty = torch.zeros_like(MASK)
    assert masked_mean(X, empty).item() == 0.0
    torch.testing.assert_close(masked_mean(X, empty, dim=1), torch.zeros(2))
    torch.testing.assert_close(
        masked_mean(X, MASK * torch.tensor([[1], [0]]), dim=1), torch.tensor([1.5, 0.0])
    )


def test_padding_nan_and_inf_are_ignored() -> None:
    x = X.clone()
    x[0, 2] = float("nan")
    x[1, 1] = float("inf")
    assert math.isclose(masked_mean(x, MASK.bool()).item(), 7.0 / 3.0, rel_tol=1e-6)


def test_masked_var_by_hand() -> None:
    # Entries 1, 2, 4: mean 7/3, squared deviations 16/9 + 1/9 + 25/9 = 42/9.
    assert math.isclose(masked_var(X, MASK, unbiased=False).item(), 42 / 9 / 3, rel_tol=1e-6)
    assert math.isclose(masked_var(X, MASK).item(), 42 / 9 / 2, rel_tol=1e-6)


def test_masked_var_single_entry_is_zero() -> None:
    one = torch.tensor([[1, 0, 0], [0, 0, 0]])
    assert masked_var(X, one).item() == 0.0


def test_whiten_by_hand_and_moments() -> None:
    out = whiten(X, MASK)
    std = math.sqrt(7.0 / 3.0)  # unbiased variance of 1, 2, 4
    expected = torch.tensor(
        [[(1 - 7 / 3) / std, (2 - 7 / 3) / std, 0.0], [(4 - 7 / 3) / std, 0.0, 0.0]]
    )
    torch.testing.assert_close(out, expected)
    assert abs(masked_mean(out, MASK).item()) < 1e-6
    assert math.isclose(masked_var(out, MASK).item(), 1.0, rel_tol=1e-5)


def test_whiten_random_moments_and_zero_padding() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 9, generator=g) * 3 + 5
    lengths = torch.tensor([9, 5, 1, 3])
    mask = torch.arange(9)[None, :] < lengths[:, None]
    out = whiten(x, mask)
    assert abs(masked_mean(out, mask).item()) < 1e-5
    assert math.isclose(masked_var(out, mask).item(), 1.0, rel_tol=1e-4)
    assert torch.all(out[~mask] == 0)


def test_whiten_without_shift_keeps_mean() -> None:
    out = whiten(X, MASK, shift_mean=False)
    assert math.isclose(masked_mean(out, MASK).item(), 7.0 / 3.0, rel_tol=1e-5)
    assert out[0, 2].item() == 0.0 and out[1, 1].item() == 0.0
