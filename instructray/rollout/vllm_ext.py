"""A vLLM worker extension: receives new weights and reloads the model in place.

vLLM mixes this class into its workers (``LLM(worker_extension_cls=...)``) and the rollout
actor calls its methods with ``collective_rpc``. vLLM's in-place reload re-initialises every layer
in one pass, so buckets are collected and handed to ``reload_weights`` together on the last one
(on CPU the model's own ``load_weights`` fails on repacked weights; ``reload_weights`` works)."""

from __future__ import annotations

import logging
import time

import torch

from instructray.rollout.weights import read_file, unpack

RELOAD_LOGGER = "vllm.model_executor.model_loader.reload.layerwise"


class RotaryReloadNote(logging.Filter):
    """Drops vLLM's "RotaryEmbedding: Failed to load weights" warning of every in-place reload.

    A rotary embedding holds a cos/sin table computed at start, no weights; vLLM puts the table
    back and the model is exact after the sync (the exact-sync tests compare log-probs). Read as
    written, the warning says the sync failed. Other layers' warnings pass.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        layer, _, rest = message.partition(": ")
        return not (rest == "Failed to load weights" and layer.endswith("RotaryEmbedding"))


def quiet_rotary_reload_note() -> None:
    logger = logging.getLogger(RELOAD_LOGGER)
    if not any(isinstance(f, RotaryReloadNote) for f in logger.filters):
        logger.addFilter(RotaryReloadNote())


class WeightSyncExtension:
    _pending: list[tuple[str, torch.Tensor]]

    def receive_weight_bucket(self, data: bytes, last: bool) -> int:
        """Add one bucket; on the last one reload everything received. Returns tensors held."""
        quiet_rotary_reload_note()
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
        quiet_rotary_reload_note()
        start = time.perf_counter()
        self.model_runner.reload_weights(weights_iterator=read_file(path))  # type: ignore[attr-defined]
        return time.perf_counter() - start
