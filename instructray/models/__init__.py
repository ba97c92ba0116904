"""Base models: building/locating them offline, and loading them for each training role."""

from instructray.models.loading import (
    atomic_dir,
    disable_dropout,
    last_token_index,
    load_causal_lm,
    load_tokenizer,
    load_value_model,
    save_hf_checkpoint,
    sequence_scores,
    token_values,
    train_top_layers,
)
from instructray.models.registry import PRESETS, default_cache_dir, resolve_base_model
from instructray.models.smollm2 import convert_smollm2
from instructray.models.tiny import (
    TinyModelSpec,
    build_tiny_model,
    default_tiny_texts,
    train_tokenizer,
)

__all__ = [
    "PRESETS",
    "TinyModelSpec",
    "atomic_dir",
    "build_tiny_model",
    "convert_smollm2",
    "default_cache_dir",
    "default_tiny_texts",
    "disable_dropout",
    "last_token_index",
    "load_causal_lm",
    "load_tokenizer",
    "load_value_model",
    "resolve_base_model",
    "save_hf_checkpoint",
    "sequence_scores",
    "token_values",
    "train_tokenizer",
    "train_top_layers",
]
