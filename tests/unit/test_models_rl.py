"""Model-level pieces of RL correctness: tempered log-probs, no dropout, the RM's reward offset,
chunked held-out evaluations, training only the top layers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from instructray.models import (
    load_causal_lm,
    load_tokenizer,
    load_value_model,
    save_hf_checkpoint,
    sequence_scores,
)
from tests.unit.model_helpers import TEXTS, _assert_same_outputs, _batch


def test_action_logprobs_are_those_of_the_tempered_distribution(perturbed_causal: Path) -> None:
    """π_old, π_θ and the reference must describe the distribution the engine sampled from:
    at T=0.5 the log-probs are log_softmax(logits / 0.5), not the T=1 ones."""
    from instructray.training.forward import action_logprobs, lm_logits

    model = load_causal_lm(perturbed_causal, torch.float32).eval()
    sequences = torch.randint(3, 2000, (2, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(sequences)
    with torch.no_grad():
        logps, action_logits = action_logprobs(model, sequences, mask, 4, temperature=0.5)
        plain, _ = action_logprobs(model, sequences, mask, 4)
        full = lm_logits(model, sequences, mask)[:, -5:-1] / 0.5
    expected = torch.log_softmax(full, -1).gather(-1, sequences[:, -4:, None]).squeeze(-1)
    torch.testing.assert_close(logps, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(action_logits, full, atol=1e-5, rtol=0)
    assert (logps - plain).abs().max() > 0.1


def test_disable_dropout_makes_training_mode_deterministic(tiny_dir: Path) -> None:
    from instructray.models import disable_dropout
    from instructray.training.forward import action_logprobs

    model = load_causal_lm(tiny_dir, torch.float32)
    model.config.attention_dropout = 0.5
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.5
    model.train()
    sequences = torch.randint(3, 2000, (2, 12), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(sequences)
    with torch.no_grad():
        noisy = [action_logprobs(model, sequences, mask, 5)[0] for _ in range(2)]
        assert not torch.equal(noisy[0], noisy[1])  # dropout really was on
        disable_dropout(model)
        quiet = [action_logprobs(model, sequences, mask, 5)[0] for _ in range(2)]
    assert model.training and model.config.attention_dropout == 0.0
    assert torch.equal(quiet[0], quiet[1])
    with torch.no_grad():
        model.eval()
        torch.testing.assert_close(action_logprobs(model, sequences, mask, 5)[0], quiet[0])


def test_sequence_scores_subtract_the_reward_offset(tiny_dir: Path, tmp_path: Path) -> None:
    """The RM normalisation (demonstrations average 0) lives in the config as reward_offset
    and survives a save/reload; plain transformers gives the raw logit."""
    tok = load_tokenizer(tiny_dir)
    model = load_value_model(tiny_dir, torch.float32).eval()
    ids, mask = _batch(tok, TEXTS, "right")
    with torch.no_grad():
        raw = sequence_scores(model, ids, mask)
        model.config.reward_offset = float(raw.mean())
        shifted = sequence_scores(model, ids, mask)
    torch.testing.assert_close(shifted, raw - raw.mean(), atol=1e-6, rtol=0)
    assert abs(shifted.mean().item()) < 1e-6
    out = save_hf_checkpoint(model, tok, tmp_path / "rm")
    reloaded = load_value_model(out, torch.float32).eval()
    plain = AutoModelForSequenceClassification.from_pretrained(out).eval()
    with torch.no_grad():
        _assert_same_outputs(sequence_scores(reloaded, ids, mask), shifted)
        logits = plain(input_ids=ids, attention_mask=mask).logits.squeeze(-1)
    _assert_same_outputs(logits - plain.config.reward_offset, shifted)


def test_held_out_losses_are_computed_in_chunks_and_agree(tiny_dir: Path) -> None:
    """eval_lm and pair_logps work a few rows at a time (a whole held-out set's logits are
    gigabytes on SmolLM2) and give what one pass over everything gives."""
    from instructray.actors.policy import EVAL_CHUNK, CausalLMActor
    from instructray.algorithms import sft_loss
    from instructray.training.batches import PairBatch, TextBatch
    from instructray.training.forward import lm_logits

    actor = CausalLMActor(rank=0, world_size=1, seed=0)
    actor.load(str(tiny_dir), "float32", spec=None)
    tok = actor.tokenizer
    texts = [f"{t} {i}" for i, t in enumerate(TEXTS * 15)]  # 45 rows: 3 chunks, the last short
    assert len(texts) > 2 * EVAL_CHUNK
    ids, mask = _batch(tok, texts, "right")
    loss_mask = mask.clone()
    loss_mask[::2, :3] = 0  # rows with different numbers of target tokens
    batch = TextBatch(input_ids=ids, attention_mask=mask, loss_mask=loss_mask)
    with torch.no_grad():
        whole = sft_loss(lm_logits(actor.model, ids, mask), ids, loss_mask).item()
    assert actor.eval_lm(batch)["loss"] == pytest.approx(whole, rel=1e-5)
    chosen, rejected = actor.pair_logps(PairBatch(chosen=batch, rejected=batch))
    assert chosen.shape == (len(texts),) and torch.equal(chosen, rejected)
    with torch.no_grad():
        first = actor._sequence_logps(batch.rows(slice(0, 1)))
    torch.testing.assert_close(chosen[:1], first, atol=1e-5, rtol=0)


def test_train_top_layers_freezes_everything_below(tiny_dir: Path) -> None:
    from instructray.models import train_top_layers

    model = load_value_model(tiny_dir, torch.float32)
    trainable = train_top_layers(model, 1)
    named = dict(model.named_parameters())
    grads = {n for n, p in named.items() if p.requires_grad}
    top = len(model.model.layers) - 1
    assert grads and all(
        n.startswith((f"model.layers.{top}.", "model.norm.", "score.")) for n in grads
    )
    assert trainable == sum(named[n].numel() for n in grads)
    ids = torch.randint(3, 2000, (2, 8))
    sequence_scores(model, ids, torch.ones_like(ids)).sum().backward()
    assert named["model.embed_tokens.weight"].grad is None
    assert named["model.layers.0.self_attn.q_proj.weight"].grad is None
    assert named["score.weight"].grad is not None
    with pytest.raises(ValueError, match=r"trainable layers must be in 1\.\.4, got 5"):
        train_top_layers(model, 5)
