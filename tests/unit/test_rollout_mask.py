"""Tests for instructray.actors.hf_rollout.response_mask: which response tokens are actions."""

from __future__ import annotations

import torch

from instructray.actors.hf_rollout import response_mask

EOS, PAD = 2, 0


def _mask(rows: list[list[int]], eos: int, pad: int) -> list[list[int]]:
    out = response_mask(torch.tensor(rows), eos, pad)
    assert out.dtype == torch.bool
    return out.long().tolist()


def test_eos_differs_from_pad():
    rows = [
        [5, 6, EOS, PAD, PAD],
        [5, EOS, 7, 8, PAD],  # tokens after the first EOS are not actions
        [EOS, PAD, PAD, PAD, PAD],
        [5, 6, 7, 8, 9],
    ]
    assert _mask(rows, EOS, PAD) == [
        [1, 1, 1, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 0, 0, 0, 0],
        [1, 1, 1, 1, 1],
    ]


def test_pads_are_excluded_even_without_eos():
    assert _mask([[5, 6, PAD, PAD]], EOS, PAD) == [[1, 1, 0, 0]]


def test_pad_sampled_mid_response_is_an_action():
    # The mask must be a prefix: a sampled pad id followed by more tokens is not padding.
    rows = [[5, PAD, 7, EOS, PAD], [PAD, PAD, 6, 7, 8], [5, PAD, 7, PAD, PAD]]
    assert _mask(rows, EOS, PAD) == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    for row in response_mask(torch.tensor(rows), EOS, PAD).long():
        assert torch.equal(row, torch.sort(row, descending=True).values)


def test_pad_equals_eos_keeps_first_eos():
    # SmolLM2: pad == eos, so the stop token and the padding look alike.
    eos = 2
    rows = [
        [5, 6, eos, eos, eos],
        [eos, eos, eos, eos, eos],
        [5, 6, 7, 8, eos],
        [5, 6, 7, 8, 9],
    ]
    assert _mask(rows, eos, eos) == [
        [1, 1, 1, 0, 0],
        [1, 0, 0, 0, 0],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
    ]


def test_no_eos_is_all_valid():
    rows = torch.randint(3, 50, (3, 6))
    assert response_mask(rows, EOS, PAD).all()
    assert response_mask(rows, EOS, EOS).all()


def test_shape_is_kept():
    rows = torch.full((4, 7), 9)
    assert response_mask(rows, EOS, PAD).shape == (4, 7)
