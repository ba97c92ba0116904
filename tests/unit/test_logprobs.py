import math

import pytest
import torch

from instructray.algorithms.logprobs import (
    entropy_from_logits,
    logprobs_from_logits,
    response_logprobs,
)


def test_logprobs_from_logits_by_hand() -> None:
    # softmax(log [1, 2, 1]) = [1/4, 1/2, 1/4]
    logits = torch.log(torch.tensor([[[1.0, 2.0, 1.0], [1.0, 2.0, 1.0]]]))
    labels = torch.tensor([[1, 2]])
    expected = torch.tensor([[math.log(0.5), math.log(0.25)]])
    torch.testing.assert_close(logprobs_from_logits(logits, labels), expected)


def test_logprobs_match_log_softmax_gather() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g) * 4
    labels = torch.randint(0, 11, (3, 5), generator=g)
    expected = torch.log_softmax(logits, -1).gather(-1, labels[..., None]).squeeze(-1)
    torch.testing.assert_close(logprobs_from_logits(logits, labels), expected)


def test_logprobs_half_precision_upcasts() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 7, generator=g).to(torch.bfloat16)
    labels = torch.randint(0, 7, (2, 4), generator=g)
    out = logprobs_from_logits(logits, labels)
    assert out.dtype == torch.float32
    expected = torch.log_softmax(logits.float(), -1).gather(-1, labels[..., None]).squeeze(-1)
    torch.testing.assert_close(out, expected)


def test_response_logprobs_by_hand() -> None:
    # Sequence of length 4, last 2 tokens are the response: token 2 is predicted by logits at
    # position 1, token 3 by logits at position 2; position 3's logits are never used.
    logits = torch.tensor(
        [
            [
                [0.0, 0.0, 0.0],
                [0.0, math.log(2.0), 0.0],  # probs [1/4, 1/2, 1/4]
                [math.log(3.0), 0.0, 0.0],  # probs [3/5, 1/5, 1/5]
                [float("nan")] * 3,
            ]
        ]
    )
    sequences = torch.tensor([[2, 0, 1, 0]])
    out = response_logprobs(logits, sequences, num_actions=2)
    torch.testing.assert_close(out, torch.tensor([[math.log(0.5), math.log(0.6)]]))


def test_response_logprobs_rejects_bad_num_actions() -> None:
    logits = torch.zeros(1, 3, 2)
    sequences = torch.zeros(1, 3, dtype=torch.long)
    for bad in (0, 3):
        with pytest.raises(ValueError, match="num_actions"):
            response_logprobs(logits, sequences, bad)


def test_entropy_uniform_is_log_v() -> None:
    for v in (2, 7, 50_000):
        out = entropy_from_logits(torch.full((2, v), 3.0))
        torch.testing.assert_close(out, torch.full((2,), math.log(v)))


def test_entropy_by_hand() -> None:
    # p = [1/2, 1/4, 1/4]: H = 1/2 ln 2 + 2 * 1/4 ln 4 = 1.5 ln 2
    logits = torch.log(torch.tensor([2.0, 1.0, 1.0]))
    assert math.isclose(entropy_from_logits(logits).item(), 1.5 * math.log(2), rel_tol=1e-6)


def test_entropy_stable_for_large_and_neg_inf_logits() -> None:
    big = torch.tensor([1e4, 1e4, -1e4])
    torch.testing.assert_close(entropy_from_logits(big), torch.tensor(math.log(2)))
    masked = torch.tensor([0.0, 0.0, float("-inf")], requires_grad=True)
    out = entropy_from_logits(masked)
    out.backward()
    torch.testing.assert_close(out.detach(), torch.tensor(math.log(2)))
    assert torch.isfinite(masked.grad).all()


def test_entropy_matches_categorical() -> None:
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 6, 9, generator=g)
    expected = torch.distributions.Categorical(logits=logits).entropy()
    torch.testing.assert_close(entropy_from_logits(logits), expected)
