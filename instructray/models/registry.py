"""Resolve a base-model name from a config (a preset or a local folder) to a local HF folder."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

from filelock import FileLock

from instructray.config.paths import MODEL_PRESETS
from instructray.models.loading import is_complete
from instructray.models.smollm2 import CONVERTED_MARKER, convert_smollm2
from instructray.models.tiny import TinyModelSpec, build_tiny_model, default_tiny_texts

PRESETS = MODEL_PRESETS  # the config knows them too: model.base names them, not paths
SMOLLM2_DIRNAME = "smollm2-135m-instruct"
# Bump when build_tiny_model changes what it writes, so stale cache entries are not reused.
TINY_BUILD_VERSION = 1


def default_cache_dir() -> Path:
    """`$INSTRUCTRAY_CACHE`, else `~/.cache/instructray`."""
    env = os.environ.get("INSTRUCTRAY_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "instructray"


def tiny_cache_name(spec: TinyModelSpec | None = None) -> str:
    spec = spec or TinyModelSpec()
    payload = json.dumps(
        {"spec": dataclasses.asdict(spec), "version": TINY_BUILD_VERSION}, sort_keys=True
    )
    return f"tiny-{hashlib.sha256(payload.encode()).hexdigest()[:10]}"


def _lock(cache_dir: Path, name: str) -> FileLock:
    cache_dir.mkdir(parents=True, exist_ok=True)
    return FileLock(str(cache_dir / f".{name}.lock"))


def resolve_base_model(preset_or_path: str, cache_dir: Path) -> Path:
    """Presets `tiny` / `smollm2` → a folder under `cache_dir`, built on first use; anything
    else → a local Hugging Face model folder, which must contain config.json."""
    cache_dir = Path(cache_dir).expanduser().resolve()
    if preset_or_path == "tiny":
        spec = TinyModelSpec()
        name = tiny_cache_name(spec)
        out = cache_dir / name
        if not is_complete(out):
            with _lock(cache_dir, name):
                if not is_complete(out):  # another process may have built it meanwhile
                    build_tiny_model(out, default_tiny_texts(), spec)
        return out
    if preset_or_path == "smollm2":
        out = cache_dir / SMOLLM2_DIRNAME
        if not is_complete(out, CONVERTED_MARKER):
            with _lock(cache_dir, SMOLLM2_DIRNAME):
                convert_smollm2(out)  # returns at once if built while we waited
        return out

    path = Path(preset_or_path).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"base model {preset_or_path!r} is not a preset ({', '.join(PRESETS)}) and "
            f"{path.resolve() / 'config.json'} does not exist; give a preset name or a local "
            "Hugging Face model folder (models are never downloaded)"
        )
    return path.resolve()
