"""Weight transport for syncing the policy into a rollout engine: buckets of safetensors bytes.

A bucket is a contiguous group of tensors serialised together, so a sync costs one RPC per
``bucket_bytes`` of weights rather than one per tensor."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

DEFAULT_BUCKET_BYTES = 256 * 1024 * 1024


def tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def bucketize(
    state_dict: dict[str, torch.Tensor], bucket_bytes: int = DEFAULT_BUCKET_BYTES
) -> Iterator[dict[str, torch.Tensor]]:
    """Consecutive groups of tensors of at most ``bucket_bytes`` (a larger tensor goes alone)."""
    bucket: dict[str, torch.Tensor] = {}
    size = 0
    for name, tensor in state_dict.items():
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
