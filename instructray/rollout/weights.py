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
TIED_OUTPUT_KEY = "lm_head.weight"


def tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def state_bytes(state_dict: dict[str, torch.Tensor]) -> int:
    return sum(tensor_bytes(t) for t in state_dict.values())


def without_tied_output(state_dict: dict[str, torch.Tensor], tied: bool) -> dict[str, torch.Tensor]:
    """Drop ``lm_head.weight`` when it is the input embedding (HF checkpoints store it once)."""
    if not tied:
        return state_dict
    return {k: v for k, v in state_dict.items() if k != TIED_OUTPUT_KEY}


def bucketize(
    state_dict: dict[str, torch.Tensor], bucket_bytes: int = DEFAULT_BUCKET_BYTES
) -> Iterator[dict[str, torch.Tensor]]:
    """Consecutive groups of tensors of at most ``bucket_bytes`` (a larger tensor goes alone).
    A tensor sharing storage with an earlier one (tied embeddings of a plain ``state_dict()``)
    is copied: safetensors refuses aliases, and vLLM's CPU reload needs every name it expects."""
    bucket: dict[str, torch.Tensor] = {}
    size = 0
    seen: set[int] = set()
    for name, tensor in state_dict.items():
        storage = tensor.untyped_storage().data_ptr()
        if storage in seen and tensor.numel():
            tensor = tensor.clone()
        seen.add(storage)
        nbytes = tensor_bytes(tensor)
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = {}, 0
        bucket[name] = tensor.contiguous()
        size += nbytes
    if bucket:
        yield bucket


def pack(bucket: dict[str, torch.Tensor]) -> bytes:
    return save_safetensors(bucket)


def unpack(data: bytes) -> dict[str, torch.Tensor]:
    return load_safetensors(data)


def write_file(state_dict: dict[str, torch.Tensor], path: str | Path) -> int:
    """Write the weights to ``path`` (one safetensors file); returns the bytes written."""
    tensors = dict(next(bucketize(state_dict, bucket_bytes=1 << 62), {}))
    tmp = Path(f"{path}.partial")
    try:
        save_file({k: v.detach().cpu() for k, v in tensors.items()}, str(tmp))
        tmp.rename(path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write (e.g. shared memory full) leaves nothing
    return state_bytes(tensors)


def read_file(path: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors of a file written by `write_file`, one at a time (memory-mapped reads)."""
    with safe_open(str(path), framework="pt") as handle:
        for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
            yield name, handle.get_tensor(name)
