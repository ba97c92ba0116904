"""Weight transport for syncing the policy into a rollout engine.

Two carriers: buckets of safetensors bytes (sent through Ray's object store and RPC, works
across nodes), or one safetensors file in shared memory (``/dev/shm``) that the engine maps and
copies from (same node only, no serialisation). A bucket is a contiguous group of tensors
serialised together, so a sync costs one RPC per ``bucket_bytes`` of weights rather than one per
tensor."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from safetensors.torch import save_file

DEFAULT_BUCKET_BYTES = 256 * 1024 * 1024


def tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def state_bytes(state_dict: dict[str, torch.Tensor]) -> int:
    return sum(tensor_bytes(t) for t in state_dict.values())


def unaliased(state_dict: dict[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
    """Every (name, contiguous tensor); one sharing storage with an earlier one (tied embeddings
    of a plain ``state_dict()``) is copied: safetensors refuses aliases, and vLLM's in-place
    reload on CPU needs every name it expects (a tied ``lm_head`` left out leaves stale output
    logits: greedy tokens right, log-probs off by up to 0.24)."""
    seen: set[int] = set()
    for name, tensor in state_dict.items():
        storage = tensor.untyped_storage().data_ptr()
        if storage in seen and tensor.numel():
            tensor = tensor.clone()
        seen.add(storage)
        yield name, tensor.contiguous()


def bucketize(
    state_dict: dict[str, torch.Tensor], bucket_bytes: int = DEFAULT_BUCKET_BYTES
) -> Iterator[dict[str, torch.Tensor]]:
    """Consecutive groups of `unaliased` tensors of at most ``bucket_bytes`` (a larger tensor
    goes alone)."""
    bucket: dict[str, torch.Tensor] = {}
    size = 0
    for name, tensor in unaliased(state_dict):
        nbytes = tensor_bytes(tensor)
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = {}, 0
        bucket[name] = tensor
        size += nbytes
    if bucket:
        yield bucket


def pack(bucket: dict[str, torch.Tensor]) -> bytes:
    return save_safetensors(bucket)


def unpack(data: bytes) -> dict[str, torch.Tensor]:
    return load_safetensors(data)


def write_file(state_dict: dict[str, torch.Tensor], path: str | Path) -> int:
    """Write the weights to ``path`` (one safetensors file); returns the bytes written."""
    tensors = {name: t.detach().cpu() for name, t in unaliased(state_dict)}
    tmp = Path(f"{path}.partial")
    try:
        save_file(tensors, str(tmp))
        tmp.rename(path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write (e.g. shared memory full) leaves nothing
    return state_bytes(tensors)


def read_file(path: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors of a file written by `write_file`, one at a time (memory-mapped reads)."""
    with safe_open(str(path), framework="pt") as handle:
        for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
            yield name, handle.get_tensor(name)
