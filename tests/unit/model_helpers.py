"""Helpers shared by the model tests."""

from __future__ import annotations

import torch


def _batch(tok, texts: list[str], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    tok.padding_side = side
    enc = tok(texts, return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name, tensor in sa.items():
        assert torch.equal(tensor, sb[name]), name


def _assert_same_outputs(got: torch.Tensor, expected: torch.Tensor) -> None:
    # Bit-identical weights can still differ by an ulp in outputs: CPU kernels pick their
    # vectorised path by buffer alignment, which differs between mmap-loaded and fresh tensors.
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


TEXTS = [" a gorgeous, heartfelt film", "dull.", " the plot twists keep coming and coming"]
