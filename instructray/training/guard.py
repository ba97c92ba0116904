"""Stop a diverged step before the optimizer applies it.

A NaN or inf in a loss, a gradient, a reward or an advantage poisons every weight it touches;
a job that kept going would end `succeeded` with a checkpoint of NaNs. These checks raise
instead, naming where it happened, so the job fails and the checkpoints already written stay
the last good ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

HINT = (
    "the update was not applied and no checkpoint of this stage was written; lower the "
    "learning rate, raise the warm-up or the gradient clipping, or check the inputs"
)


class NonFiniteError(FloatingPointError):
    """A tensor that feeds an optimizer step holds NaN or inf."""


def _describe(name: str, tensor: torch.Tensor) -> str | None:
    bad = ~torch.isfinite(tensor.detach())
    if not bool(bad.any()):
        return None
    nans = int(torch.isnan(tensor.detach()).sum())
    return f"{name} has {int(bad.sum())} non-finite of {tensor.numel()} values ({nans} NaN)"


def check_finite(tensors: Mapping[str, torch.Tensor], where: str) -> None:
    """Raise `NonFiniteError` naming ``where`` and the first tensor holding NaN or inf."""
    for name, tensor in tensors.items():
        problem = _describe(name, tensor)
        if problem:
            raise NonFiniteError(f"{where}: {problem}; {HINT}")


def check_gradients(named_params: Iterable[tuple[str, torch.nn.Parameter]], where: str) -> None:
    """The gradients about to be applied (those held in ``param.grad``) are all finite.

    A sum per tensor is one cheap pass, and NaN or inf anywhere in a tensor makes its sum
    non-finite. Under ZeRO-1/2/3 DeepSpeed keeps gradients in its own partitioned buffers, not
    in ``.grad``; the loss check still covers those stages.
    """
    for name, param in named_params:
        if param.grad is not None and not bool(torch.isfinite(param.grad.sum())):
            raise NonFiniteError(
                f"{where}: {_describe(f'the gradient of {name}', param.grad)}; {HINT}"
            )
