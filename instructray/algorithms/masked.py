"""Reductions and normalisation restricted to the entries selected by a 0/1 mask."""

from __future__ import annotations

import torch
from torch import Tensor


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of `x` over entries where `mask` is nonzero, over `dim` or over everything.

    Masked-out entries are selected away, not multiplied by 0, so NaN/inf in padding is ignored.
    """
    masked = torch.where(mask.bool(), x, 0.0)
    return masked.sum() if dim is None else masked.sum(dim=dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `x` over entries where `mask` is nonzero; 0 (not NaN) where the mask is empty."""
    count = mask.float().sum() if dim is None else mask.float().sum(dim=dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1.0)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of `x` over all masked entries (Bessel-corrected when `unbiased`).

    Fewer than two masked entries give 0 rather than NaN/inf, so callers never crash mid-run.
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        # Tensor arithmetic instead of a Python `if` on the count: no host-device sync.
        count = mask.float().sum()
        var = var * count / (count - 1).clamp(min=1.0)
    return var


def whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Normalise `x` to unit variance (and zero mean if `shift_mean`) over masked entries only.

    Masked-out entries are returned as 0.
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(mask.bool(), out, 0.0)
