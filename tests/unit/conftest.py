"""Fixtures of the model tests: the tiny base model, built once per session in a temporary
cache, and a perturbed copy of it."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from deepspeed.utils import groups as deepspeed_groups

from instructray.models import (
    load_causal_lm,
    load_tokenizer,
    resolve_base_model,
    save_hf_checkpoint,
)
from instructray.training.deepspeed_model import init_distributed

DIST_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="session")
def tiny(cache_dir: Path) -> tuple[Path, float]:
    start = time.perf_counter()
    path = resolve_base_model("tiny", cache_dir)
    return path, time.perf_counter() - start


@pytest.fixture(scope="session")
def tiny_dir(tiny: tuple[Path, float]) -> Path:
    return tiny[0]


@pytest.fixture(scope="session")
def perturbed_causal(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint with shifted weights, so matching it cannot happen by a random init."""
    tok = load_tokenizer(tiny_dir)
    model = load_causal_lm(tiny_dir, torch.float32)
    gen = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return save_hf_checkpoint(model, tok, tmp_path_factory.mktemp("perturbed") / "ckpt")


@pytest.fixture(scope="module")
def process_group() -> Iterator[None]:
    """A gloo group of one in this process, as a policy rank joins; env and group undone after."""
    saved = {k: os.environ.get(k) for k in DIST_ENV}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    init_distributed(0, 1, "127.0.0.1", port)
    yield
    torch.distributed.destroy_process_group()
    # DeepSpeed caches the world group it first saw; the next module's group is a new one.
    deepspeed_groups._WORLD_GROUP = None
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
