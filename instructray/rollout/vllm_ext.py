"""A vLLM worker extension: receives new weights and reloads the model in place.

vLLM mixes this class into its workers (``LLM(worker_extension_cls=...)``) and the rollout
actor calls its methods with ``collective_rpc``. vLLM's in-place reload re-initialises every layer
in one pass, so buckets are collected and handed to ``reload_weights`` together on the last one
(on CPU the model's own ``load_weights`` fails on repacked weights; ``reload_weights`` works)."""

from __future__ import annotations

import time

import torch

from instructray.rollout.weights import read_file, unpack


class WeightSyncExtension:
    _pending: list[tuple[str, torch.Tensor]]

    def receive_weight_bucket(self, data: bytes, last: bool) -> int:
        """Add one bucket; on the last one reload everything received. Returns tensors held."""
        if not hasattr(self, "_pending"):
            self._pending = []
        self._pending.extend(unpack(data).items())
        count = len(self._pending)
        if last:
            weights, self._pending = self._pending, []
            self.model_runner.reload_weights(weights_iterator=iter(weights))  # type: ignore[attr-defined]
        return count

    def reload_weights_file(self, path: str) -> float:
        """Reload from a safetensors file in shared memory, tensor by tensor; returns seconds."""
        start = time.perf_counter()
        self.model_runner.reload_weights(weights_iterator=read_file(path))  # type: ignore[attr-defined]
        return time.perf_counter() - start
