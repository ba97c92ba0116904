"""Per-iteration cost of the PPO stage, vLLM rollout backend vs the HF-generate fallback.

    python bench/ppo_step.py [--preset tiny|smollm2] [--backend vllm|hf|both] [--iterations N]

Runs ``stages=[ppo]`` of the preset through `run_job` once per backend, in this one process
(same Ray cluster, same checkpoints), and reports per iteration: generate / score (RM, reference,
old log-probs, values) / train / sync / other, where other = the iteration's wall time (between
consecutive metrics.jsonl stamps) minus the four; medians over iterations 2..N (iteration 1 is
the warm-up). The orchestration overhead is measured directly: every actor method is timed
inside the actor, and overhead = (iteration wall − time during which at least one actor method
was running) / iteration wall. The proxy (sync + other) / wall is reported next to it. Peak RSS
per actor class / process comes from sampling psutil over this process's descendants.

Writes bench/results/ppo_step_<preset>.json (and prints it).
"""

from __future__ import annotations

import argparse
from typing import Any

from harness import (
    checkpoints,
    guarded,
    host_info,
    pooled_median,
    ppo_config,
    ratio,
    run_ppo,
    work_dir,
    write_result,
)
from rss import RSSSampler

DEFAULT_ITERATIONS = {"tiny": 8, "smollm2": 4}
COMPARED = (
    "wall",
    "time_generate",
    "time_score",
    "time_train",
    "time_sync",
    "time_other",
    "actor_busy",
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--backend", choices=["vllm", "hf", "both"], default="both")
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat the backends this many times, alternating their order",
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="extra config KEY=VALUE"
    )
    parser.add_argument("--name", default=None, help="result file name (default ppo_step_<preset>)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    iterations = args.iterations or DEFAULT_ITERATIONS[args.preset]
    if iterations < 3:
        raise SystemExit("--iterations must be >= 3 (iteration 1 is the warm-up)")
    backends = ["vllm", "hf"] if args.backend == "both" else [args.backend]
    sft, rm = checkpoints(args.preset)
    info: dict[str, Any] = {"host": host_info(), "preset": args.preset, "sft": str(sft)}
    info["rm"] = str(rm)
    sampler = RSSSampler().start()
    runs: dict[str, list[dict[str, Any]]] = {b: [] for b in backends}
    try:
        for round_ in range(args.rounds):
            order = backends if round_ % 2 == 0 else backends[::-1]
            for backend in order:
                cfg = ppo_config(
                    args.preset,
                    sft,
                    rm,
                    [f"rollout.backend={backend}", f"ppo.iterations={iterations}", *args.overrides],
                )
                run_dir = work_dir("ppo_step", f"{args.preset}-{backend}-r{round_}")
                print(f"== {args.preset} {backend} round {round_} -> {run_dir}", flush=True)
                result = guarded(run_ppo, cfg, run_dir, sampler)
                runs[backend].append({"round": round_, **result})
    finally:
        sampler.stop()
        import ray

        if ray.is_initialized():
            ray.shutdown()
    ppo = cfg.ppo
    info["ppo"] = {
        "iterations": iterations,
        "rollout_batch_size": ppo.rollout_batch_size,
        "samples_per_prompt": ppo.samples_per_prompt,
        "max_new_tokens": ppo.sampling.max_new_tokens,
        "ppo_epochs": ppo.ppo_epochs,
        "mini_batch_size": ppo.mini_batch_size,
        "micro_batch_size": ppo.micro_batch_size,
        "ptx_coef": ppo.ptx_coef,
        "overrides": args.overrides,
    }
    info["definitions"] = {
        "wall": "time between consecutive ppo rows of metrics.jsonl (one train_step + logging)",
        "time_score": "RM scores + reference log-probs + old-policy log-probs + critic values, "
        "run side by side, plus the driver's KL/GAE arithmetic",
        "time_other": "wall - (generate + score + train + sync): KL-controller update, metric "
        "assembly, logging",
        "actor_busy": "union of intervals during which any actor method was executing "
        "(measured inside the actors; excludes Ray argument/return (de)serialisation)",
        "overhead_fraction": "(wall - actor_busy) / wall: time in which no model work ran on "
        "any actor (driver work, Ray scheduling, object transfer)",
        "proxy_overhead_fraction": "(time_sync + time_other) / wall, for comparison",
    }
    result: dict[str, Any] = {"config": info, "runs": runs}
    keys = (*COMPARED, "overhead_fraction", "proxy_overhead_fraction")
    table = {b: {k: pooled_median(runs[b], k) for k in keys} for b in backends}
    result["medians_over_rounds"] = table
    if len(backends) == 2:
        result["vllm_over_hf"] = {
            k: ratio(table["vllm"][k], table["hf"][k]) for k in COMPARED if table["hf"][k]
        }
    write_result(args.name or f"ppo_step_{args.preset}", result)


if __name__ == "__main__":
    main()
