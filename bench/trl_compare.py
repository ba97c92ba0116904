"""instructray (vLLM backend, HF backend) vs TRL's PPO trainer, time per PPO iteration.

    python bench/trl_compare.py [--preset tiny|smollm2] [--iterations N] [--prompts B]
                                [--new-tokens T] [--ppo-epochs E] [--micro M] [--rounds R]

One iteration = one rollout batch (B prompts, 1 sample each, up to T new tokens, stop at EOS)
+ scoring (reward model, reference, values) + E PPO epochs over the batch as ONE mini-batch
(micro-batches of M, gradient accumulation to B) for the policy and the value model. Both sides
load the same SFT checkpoint (policy and reference) and the same RM checkpoint (reward model,
and value model initialised from it), and draw the same B×N prompt token ids (instructray's
prompt stream; TRL shuffles them within the run). Iteration time = difference of consecutive
step-end stamps (instructray: metrics.jsonl; TRL: a TrainerCallback.on_step_end), median over
iterations 2..N; TRL's generation is timed by wrapping its `batch_generation`.

Needs trl==1.12.0 (the last release with trl.experimental.ppo). Writes
bench/results/trl_compare_<preset>.json.
"""

from __future__ import annotations

import argparse
import os
import time
from itertools import islice, pairwise
from pathlib import Path
from statistics import fmean
from typing import Any

from harness import (
    checkpoints,
    guarded,
    host_info,
    med,
    pooled_median,
    ppo_config,
    ratio,
    run_ppo,
    work_dir,
    write_result,
)
from rss import RSSSampler

DEFAULTS = {
    "tiny": {"iterations": 6, "prompts": 32, "new_tokens": 24, "ppo_epochs": 2, "micro": 16},
    "smollm2": {"iterations": 4, "prompts": 8, "new_tokens": 32, "ppo_epochs": 1, "micro": 4},
}
LR = 1e-5
KL_COEF = 0.05


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=list(DEFAULTS), default="tiny")
    for key in ("iterations", "prompts", "new_tokens", "ppo_epochs", "micro"):
        parser.add_argument(f"--{key.replace('_', '-')}", dest=key, type=int, default=None)
    parser.add_argument("--rounds", type=int, default=1, help="alternate the order each round")
    parser.add_argument(
        "--systems", default="instructray-vllm,instructray-hf,trl", help="comma-separated"
    )
    args = parser.parse_args()
    for key, value in DEFAULTS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.iterations < 3 or args.prompts % args.micro:
        raise SystemExit("need --iterations >= 3 and --prompts a multiple of --micro")
    return args


def instructray_overrides(args: argparse.Namespace, backend: str) -> list[str]:
    # Like TRL, which takes π_old from the generation logits, the vLLM run takes it from the
    # engine (exact here: float32 on both sides); the HF engine returns no log-probs.
    old_logprobs = "engine" if backend == "vllm" else "recompute"
    return [
        f"rollout.backend={backend}",
        f"ppo.old_logprobs={old_logprobs}",
        f"ppo.iterations={args.iterations}",
        f"ppo.rollout_batch_size={args.prompts}",
        "ppo.samples_per_prompt=1",
        f"ppo.mini_batch_size={args.prompts}",
        f"ppo.micro_batch_size={args.micro}",
        f"ppo.ppo_epochs={args.ppo_epochs}",
        f"ppo.sampling.max_new_tokens={args.new_tokens}",
        "ppo.sampling.temperature=1.0",
        "ppo.sampling.top_p=1.0",
        "ppo.ptx_coef=0.0",
        "ppo.entropy_coef=0.0",
        "ppo.kl.estimator=k1",
        f"ppo.kl.init_coef={KL_COEF}",
        "ppo.kl.adaptive=false",
        "ppo.value_loss_coef=1.0",
        f"ppo.policy_optim.lr={LR}",
        f"ppo.critic_optim.lr={LR}",
    ]


def same_prompts(cfg: Any, tokenizer: Any, count: int) -> list[list[int]]:
    """The first ``count`` prompts instructray's coordinator draws, as token ids."""
    from instructray.orchestrator.batching import cycle, prompt_ids
    from instructray.orchestrator.context import JobData

    prompts = JobData(cfg).rl_prompts(cfg.rm.labeler.num_prompts)
    drawn = list(islice(cycle(prompts, cfg.seed), count))
    return prompt_ids(tokenizer, drawn, cfg.model.max_prompt_tokens)


def run_trl(
    args: argparse.Namespace, sft: Path, rm: Path, prompt_ids: list[list[int]], out: Path
) -> dict[str, Any]:
    """TRL's PPOTrainer in this process on the same checkpoints and prompt ids."""
    import torch
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as trl_ppo

    from instructray.models import load_causal_lm, load_tokenizer, load_value_model

    stamps: list[float] = []
    gen: list[dict[str, float]] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, *_: Any, **__: Any) -> None:
            stamps.append(time.time())

    original = trl_ppo.batch_generation

    def timed_generation(model: Any, queries: Any, *rest: Any, **kw: Any) -> Any:
        start = time.perf_counter()
        query_responses, logits = original(model, queries, *rest, **kw)
        responses = query_responses[:, queries.shape[1] :]
        is_eos = responses == tokenizer.eos_token_id
        first_eos = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, responses.shape[1])
        gen.append(
            {
                "seconds": time.perf_counter() - start,
                "width": responses.shape[1],
                "response_length": first_eos.float().mean().item(),
            }
        )
        return query_responses, logits

    trl_ppo.batch_generation = timed_generation
    tokenizer = load_tokenizer(sft)
    started = time.time()
    config = PPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=args.micro,
        gradient_accumulation_steps=args.prompts // args.micro,
        num_mini_batches=1,
        num_ppo_epochs=args.ppo_epochs,
        total_episodes=args.prompts * args.iterations,
        local_rollout_forward_batch_size=args.prompts,
        response_length=args.new_tokens,
        stop_token="eos",
        temperature=1.0,
        kl_coef=KL_COEF,
        kl_estimator="k1",
        vf_coef=1.0,
        cliprange=0.2,
        cliprange_value=0.2,
        gamma=1.0,
        lam=0.95,
        whiten_rewards=False,
        missing_eos_penalty=None,
        learning_rate=LR,
        num_sample_generations=0,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
    )
    dataset = Dataset.from_dict({"input_ids": prompt_ids})
    trainer = PPOTrainer(
        args=config,
        processing_class=tokenizer,
        model=load_causal_lm(sft),
        ref_model=load_causal_lm(sft),
        reward_model=load_value_model(rm),
        value_model=load_value_model(rm),
        train_dataset=dataset,
        eval_dataset=dataset.select(range(min(len(dataset), args.prompts))),
        callbacks=[StepClock()],
    )
    setup = time.time() - started
    load_start = os.getloadavg()[0]
    train_start = time.time()
    try:
        trainer.train()
    finally:
        trl_ppo.batch_generation = original
    walls = [b - a for a, b in pairwise(stamps)]
    per_iter = [
        {"step": i + 2, "wall": w, "time_generate": g["seconds"]}
        | {"width": g["width"], "response_length": g["response_length"]}
        for i, (w, g) in enumerate(zip(walls, gen[1:], strict=False))
    ]
    return {
        "trl_version": trl.__version__,
        "setup_s": round(setup, 2),
        "load_avg_1m": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "job_wall_s": round(time.time() - started, 2),
        "iteration_1_s": round(stamps[0] - train_start, 3) if stamps else None,
        "iteration_1_generate_s": round(gen[0]["seconds"], 3) if gen else None,
        "summary": {
            "iterations_used": [r["step"] for r in per_iter],
            "median_wall": med(walls),
            "median_time_generate": med([g["seconds"] for g in gen[1:]]),
            "mean_response_length": round(fmean(g["response_length"] for g in gen), 2),
            "generated_widths": [g["width"] for g in gen],
        },
        "optimizer": str(config.optim),
        "torch_threads": torch.get_num_threads(),
        "per_iteration": per_iter,
    }


def main() -> None:
    args = parse_args()
    import ray

    from instructray.models import load_tokenizer

    systems = args.systems.split(",")
    sft, rm = checkpoints(args.preset)
    base_cfg = ppo_config(args.preset, sft, rm, instructray_overrides(args, "hf"))
    prompt_ids = same_prompts(base_cfg, load_tokenizer(sft), args.prompts * args.iterations)
    sampler = RSSSampler().start()
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}

    def one(system: str, out: Path) -> dict[str, Any]:
        if system == "trl":
            sampler.reset()
            result = run_trl(args, sft, rm, prompt_ids, out)
            sampler.sample()
            result["memory"] = {"peak_mib_process": sampler.peak_driver // 2**20}
            return result
        backend = system.removeprefix("instructray-")
        cfg = ppo_config(args.preset, sft, rm, instructray_overrides(args, backend))
        result = run_ppo(cfg, out, sampler)
        rows = result["per_iteration"]
        result["summary"]["mean_response_length"] = round(
            fmean(r["response_length"] or 0 for r in rows), 2
        )
        return result

    try:
        for round_ in range(args.rounds):
            for system in systems if round_ % 2 == 0 else systems[::-1]:
                out = work_dir("trl_compare", f"{args.preset}-{system}-r{round_}")
                print(f"== {args.preset} {system} round {round_}", flush=True)
                runs[system].append({"round": round_, **guarded(one, system, out)})
    finally:
        sampler.stop()
        if ray.is_initialized():
            ray.shutdown()

    medians = {s: pooled_median(runs[s], "wall") for s in systems}
    result: dict[str, Any] = {"preset": args.preset, "median_iteration_s": medians}
    result["median_generate_s"] = {s: pooled_median(runs[s], "time_generate") for s in systems}
    if "trl" in systems:
        result["trl_over_instructray"] = {
            s: ratio(medians["trl"], medians[s]) for s in systems if s != "trl"
        }
        result["goal"] = "trl_over_instructray >= 2 at the SmolLM2 size (issue #3)"
    result["mean_response_length"] = {
        s: [r.get("summary", {}).get("mean_response_length") for r in runs[s]] for s in systems
    }
    result |= {
        "host": host_info(),
        "held_equal": {
            "sft_checkpoint (policy, reference)": str(sft),
            "rm_checkpoint (reward model, value-model init)": str(rm),
            "prompts_per_iteration": args.prompts,
            "samples_per_prompt": 1,
            "max_new_tokens (stop at EOS)": args.new_tokens,
            "ppo_epochs": args.ppo_epochs,
            "mini_batches_per_epoch": 1,
            "micro_batch": args.micro,
            "iterations": args.iterations,
            "sampling": "temperature 1, top_p 1, top_k 0",
            "kl": f"k1, coef {KL_COEF}, fixed",
            "lr": LR,
            "dtype": "float32",
            "prompt_token_ids": "instructray's first prompts*iterations draws",
        },
        "differs": [
            "instructray: 5 Ray actor processes (policy and critic each a 1-rank DeepSpeed "
            "engine, reference, reward, rollout engine) sharing the 2 cores; TRL: one "
            "process with all four models (torch threads = cores)",
            "old log-probs: instructray-vllm takes the engine's (ppo.old_logprobs=engine), "
            "TRL the generation logits (output_scores); instructray-hf recomputes them with a "
            "policy forward pass",
            "instructray runs policy and critic updates in two actors side by side; TRL "
            "updates them together (one loss, one AdamW, no grad clipping)",
            "instructray syncs the weights into the rollout engine every iteration; TRL "
            "generates with the training policy itself",
            "instructray scores with RM/reference/policy/critic actors in parallel; TRL "
            "runs them one after another in one process",
            "response lengths differ with sampling (see mean_response_length)",
        ],
        "runs": runs,
    }
    write_result(f"trl_compare_{args.preset}", result)


if __name__ == "__main__":
    main()
