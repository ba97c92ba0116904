"""Weight-sync throughput into the rollout engine vs raw copies of the same bytes on this host.

    python bench/weight_sync.py [--preset tiny|smollm2] [--repeats N]

The policy's state dict (the preset's SFT model, as a policy actor's ``state_dict()`` returns
it: one CPU copy per tensor, tied ``lm_head`` included) goes into a rollout actor started with
`start_rollout` — the vLLM engine, and the HF fallback for reference — by both transports of
`orchestrator.weight_sync`: ``shm`` (one safetensors file written to /dev/shm, reloaded from
there by the engine's workers, removed) and ``object_store`` (put once; ``load_weights(ref)``:
fetch, buckets, RPC into vLLM's worker, ``reload_weights``). Two times per call: end-to-end as
the driver sees it (for shm the file write included) and the actor's own ``sync_seconds``.
In-process references on the same host, same bytes: one tensor clone (allocation included), a
copy into a preallocated tensor, a per-tensor state-dict clone, safetensors save+load, and a Ray
put+get. Reports GB/s (1e9 bytes/s) for each and the ratios. Writes
bench/results/weight_sync_<preset>.json.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path
from statistics import median
from typing import Any

from harness import checkpoints, host_info, ppo_config, write_result


def timed(fn: Callable[[], Any], repeats: int) -> list[float]:
    """Seconds of each call after one warm-up call."""
    fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def rate(nbytes: int, seconds: list[float]) -> dict[str, float]:
    s = median(seconds)
    return {"median_s": round(s, 5), "GB_per_s": round(nbytes / s / 1e9, 3)}


def engine_sync(
    cfg: Any, path: str, state: dict[str, Any], state_ref: Any, repeats: int
) -> dict[str, Any]:
    """Both transports into one engine: ``shm`` (write one safetensors file to /dev/shm, the
    engine reloads from it, the file is removed — as `orchestrator.weight_sync` does) and
    ``object_store`` (``load_weights(ref)``: fetch, bucket, RPC, reload)."""

    from instructray.orchestrator.roles import start_rollout
    from instructray.rollout.weights import write_file

    started = time.perf_counter()
    group = start_rollout(cfg, path)
    startup = time.perf_counter() - started
    shm_file = Path("/dev/shm") / f"instructray-bench-{os.getpid()}.safetensors"

    def through_shm() -> dict[str, Any]:
        try:
            write_file(state, shm_file)
            return group.call_rank0(lambda a: a.load_weights_file, str(shm_file))
        finally:
            shm_file.unlink(missing_ok=True)

    calls = {
        "shm": through_shm,
        "object_store": lambda: group.call_rank0(lambda a: a.load_weights, state_ref),
    }
    result: dict[str, Any] = {"engine_startup_s": round(startup, 2)}
    try:
        for transport, call in calls.items():
            driver_s, actor_s, info = [], [], {}
            for i in range(repeats + 1):
                start = time.perf_counter()
                info = call()
                if i:  # the first call is the warm-up
                    driver_s.append(time.perf_counter() - start)
                    actor_s.append(info["sync_seconds"])
            nbytes = int(info["sync_bytes"])
            result[transport] = {
                "sync_bytes": nbytes,
                "sync_buckets": info.get("sync_buckets"),
                "end_to_end": rate(nbytes, driver_s),
                "inside_actor": rate(nbytes, actor_s),
                "samples_end_to_end_s": [round(x, 4) for x in driver_s],
                "samples_inside_actor_s": [round(x, 4) for x in actor_s],
            }
            if "sync_reload_seconds" in info:
                result[transport]["reload_in_worker_s"] = round(info["sync_reload_seconds"], 4)
    finally:
        group.shutdown()
    return result


def raw_copies(state: dict[str, Any], nbytes: int, repeats: int) -> dict[str, Any]:
    import ray
    import torch

    from instructray.rollout.weights import pack, unpack

    flat = torch.empty(nbytes, dtype=torch.uint8).fill_(1)
    dest = torch.empty_like(flat).fill_(0)
    return {
        "torch_clone_flat": rate(nbytes, timed(flat.clone, repeats)),
        "torch_copy_preallocated": rate(nbytes, timed(lambda: dest.copy_(flat), repeats)),
        "state_dict_clone": rate(
            nbytes, timed(lambda: {k: v.clone() for k, v in state.items()}, repeats)
        ),
        "safetensors_save_load": rate(nbytes, timed(lambda: unpack(pack(state)), repeats)),
        "ray_put_get_in_process": rate(nbytes, timed(lambda: ray.get(ray.put(state)), repeats)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import ray
    import torch

    from instructray.models import load_causal_lm
    from instructray.orchestrator.roles import init_ray
    from instructray.rollout.weights import tensor_bytes

    sft, rm = checkpoints(args.preset)
    model = load_causal_lm(sft)
    # As the policy's DeepSpeed engine hands it over (training.deepspeed_model.full_state_dict): one
    # CPU copy per tensor, so the tied embeddings are two separate tensors.
    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    del model
    nbytes = sum(tensor_bytes(t) for t in state.values())
    unique = {t.untyped_storage().data_ptr(): tensor_bytes(t) for t in state.values()}
    result: dict[str, Any] = {
        "host": host_info(),
        "preset": args.preset,
        "model": str(sft),
        "tensors": len(state),
        "state_dict_bytes": nbytes,
        "unique_storage_bytes": sum(unique.values()),
        "repeats": args.repeats,
    }
    cfg = ppo_config(args.preset, sft, rm, [])
    init_ray(cfg)
    try:
        state_ref = ray.put(state)
        result["raw_in_process"] = raw_copies(state, nbytes, args.repeats)
        for backend in ("vllm", "hf"):
            backend_cfg = ppo_config(args.preset, sft, rm, [f"rollout.backend={backend}"])
            print(f"== {backend} engine", flush=True)
            result[backend] = engine_sync(backend_cfg, str(sft), state, state_ref, args.repeats)
    finally:
        ray.shutdown()
    raw = result["raw_in_process"]
    result["ratios"] = {
        f"{backend}_{transport}_{how}_over_{ref}": round(
            result[backend][transport][how]["GB_per_s"] / raw[ref]["GB_per_s"], 4
        )
        for backend in ("vllm", "hf")
        for transport in ("shm", "object_store")
        for how in ("end_to_end", "inside_actor")
        for ref in ("torch_copy_preallocated", "safetensors_save_load")
    }
    result["vllm_shm_speedup_end_to_end"] = round(
        result["vllm"]["object_store"]["end_to_end"]["median_s"]
        / result["vllm"]["shm"]["end_to_end"]["median_s"],
        2,
    )
    result["torch_threads"] = torch.get_num_threads()
    result["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    write_result(f"weight_sync_{args.preset}", result)


if __name__ == "__main__":
    main()
