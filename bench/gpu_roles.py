"""instructray's roles on one CUDA GPU, without Ray: a PPO iteration as the coordinator runs it.

    python bench/gpu_roles.py --model-dir DIR [--dtypes float32 bfloat16] [--zero 0 2]
        [--iterations 3] [--rollout-batch 16] [--cpu-reference] --out FILE

The GPU machine this was written for has torch and transformers but no Ray or vLLM, so the
project's own role classes are used as plain objects (Ray only hosts them in a job): the policy
(`CausalLMActor` in a DeepSpeed engine, a process group of one over NCCL), the frozen
reference, the reward model and the critic (`ValueModelActor`) and the HF-generate rollout
backend (`HFRolloutActor`), all on the one GPU. The model is SmolLM2-135M-Instruct's
architecture and tokenizer (config and tokenizer files from DIR) with random weights: the
weights do not change the cost, and they do not travel to that machine (538 MB).

Each iteration: generate → π_old, reference, RM score, values → shaped reward, GAE, whitening
→ policy and critic updates on mini-batches → weight sync into the rollout model through a
safetensors file in /dev/shm. After each sync, the rollout model's log-probs of the batch must
equal the policy's (``sync_exact``: max |Δ| = 0, since both are the same weights on the same
kernels). Seconds per phase are the median over iterations 2..N.

``--cpu-reference`` reruns the first configuration in a subprocess with CUDA hidden (gloo, the
CPU path CI runs) for the GPU/CPU ratio on the same machine. Writes FILE as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]


def random_model_dir(model_dir: Path, out: Path) -> Path:
    """A causal-LM checkpoint with ``model_dir``'s config and tokenizer and seeded weights."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    return out


def prompts(tokenizer: Any, batch: int) -> list[list[int]]:
    openings = ["This movie", "The acting in this film", "A story about", "I expected"]
    return [tokenizer.encode(openings[i % len(openings)] + f" {i}") for i in range(batch)]


def timed(fn: Any, *args: Any) -> tuple[Any, float]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def run_config(path: Path, dtype: str, zero: int, args: argparse.Namespace) -> dict[str, Any]:
    from instructray.actors.hf_rollout import HFRolloutActor
    from instructray.actors.policy import CausalLMActor
    from instructray.actors.value import ValueModelActor
    from instructray.algorithms import get_advantage_estimator
    from instructray.config import OptimConfig, PPOStageConfig, SamplingConfig
    from instructray.config.rank import CriticLossParams, PolicyLossParams
    from instructray.orchestrator.experience import assemble_experience
    from instructray.training.batches import PolicyShard
    from instructray.training.deepspeed_model import DeepSpeedSpec
    from instructray.training.forward import action_logprobs

    mini, micro = args.mini_batch, args.micro_batch
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=32)
    cfg = PPOStageConfig(
        rollout_batch_size=args.rollout_batch,
        mini_batch_size=mini,
        micro_batch_size=micro,
        ppo_epochs=1,
        sampling=sampling,
    )

    def spec(lr: float) -> DeepSpeedSpec:
        return DeepSpeedSpec(micro, mini // micro, zero, dtype, OptimConfig(lr=lr), dropout=False)

    loaded, load_s = {}, time.perf_counter()
    for name, cls, engine in [
        ("policy", CausalLMActor, spec(5e-5)),
        ("reference", CausalLMActor, None),
        ("reward", ValueModelActor, None),
        ("critic", ValueModelActor, spec(2e-5)),
    ]:
        actor = cls(rank=0, world_size=1, seed=0)
        actor.load(str(path), dtype, engine)
        loaded[name] = actor
    rollout = HFRolloutActor(rank=0, world_size=1, seed=0)
    rollout.load(str(path), dtype)
    load_s = time.perf_counter() - load_s
    policy, reference, reward, critic = (
        loaded[k] for k in ("policy", "reference", "reward", "critic")
    )
    device = policy.device
    tok = rollout.tokenizer
    estimator = get_advantage_estimator(cfg.advantage_estimator)
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    weights_file = shm / f"instructray_gpu_roles_{os.getpid()}.safetensors"
    rows: list[dict[str, Any]] = []
    generator = torch.Generator().manual_seed(0)
    try:
        for it in range(args.iterations):
            sampled, t_gen = timed(
                rollout.generate, prompts(tok, args.rollout_batch), sampling, 1, it
            )
            batch = sampled.action_batch()
            start = time.perf_counter()
            logprobs = policy.action_logprobs(batch)
            ref_logprobs = reference.action_logprobs(batch)
            scores = reward.scores(batch)
            values = critic.action_values(batch)
            t_score = time.perf_counter() - start
            mask = sampled.action_mask
            exp = assemble_experience(
                sampled,
                torch.arange(len(scores)),
                logprobs,
                ref_logprobs,
                scores,
                values,
                tok.eos_token_id,
                cfg,
                cfg.kl.init_coef,
                estimator,
            )
            start, train = time.perf_counter(), []
            for mb in exp.minibatches(mini, generator):
                shard = PolicyShard(mb.policy_batch(), None)
                train.append(policy.train_ppo(shard, PolicyLossParams.of(cfg)))
                train[-1] |= critic.train_critic(mb.critic_batch(), CriticLossParams.of(cfg))
            if device.type == "cuda":
                torch.cuda.synchronize()
            t_train = time.perf_counter() - start
            start = time.perf_counter()
            policy.write_weights(str(weights_file))
            rollout.load_weights_file(str(weights_file))
            t_sync = time.perf_counter() - start
            check = rollout._batch(batch)
            with torch.no_grad():
                synced, _ = action_logprobs(
                    rollout.model,
                    check["sequences"],
                    check["attention_mask"],
                    mask.shape[1],
                    sampling.temperature,
                )
            after = policy.action_logprobs(batch)
            diff = ((synced.cpu() - after).abs() * mask).max().item()
            finite = all(torch.isfinite(torch.tensor(r["policy_loss"])) for r in train)
            rows.append(
                {
                    "iteration": it + 1,
                    "generate_s": t_gen,
                    "score_s": t_score,
                    "train_s": t_train,
                    "sync_s": t_sync,
                    "response_tokens": int(mask.sum()),
                    "policy_loss": train[-1]["policy_loss"],
                    "value_loss": train[-1]["value_loss"],
                    "approx_kl": train[-1]["approx_kl"],
                    "losses_finite": bool(finite),
                    "sync_max_abs_logprob_diff": diff,
                }
            )
            print(f"  [{dtype} zero={zero}] iteration {it + 1}: {rows[-1]}", flush=True)
    finally:
        weights_file.unlink(missing_ok=True)
    later = rows[1:] or rows
    phases = {
        k: round(median(r[k] for r in later), 4)
        for k in ("generate_s", "score_s", "train_s", "sync_s")
    }
    iteration_s = sum(phases.values())
    return {
        "dtype": dtype,
        "zero_stage": zero,
        "device": str(device),
        "load_s": round(load_s, 2),
        "median_seconds": phases,
        "iteration_s": round(iteration_s, 4),
        "response_tokens_per_s": round(
            median(r["response_tokens"] for r in later) / iteration_s, 1
        ),
        "sync_exact": all(r["sync_max_abs_logprob_diff"] == 0.0 for r in rows),
        "losses_finite": all(r["losses_finite"] for r in rows),
        "peak_cuda_gib": (
            round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None
        ),
        "iterations": rows,
    }


def host() -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="config + tokenizer files")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--zero", nargs="+", type=int, default=[0])
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--rollout-batch", type=int, default=16)
    parser.add_argument("--mini-batch", type=int, default=8)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--cpu-reference", action="store_true")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from instructray.training.deepspeed_model import init_distributed

    init_distributed(0, 1, "127.0.0.1", 29517 + (0 if torch.cuda.is_available() else 1))
    result: dict[str, Any] = {
        "host": host(),
        "sizes": {
            "rollout_batch": args.rollout_batch,
            "mini_batch": args.mini_batch,
            "micro_batch": args.micro_batch,
            "max_new_tokens": 32,
        },
        "runs": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = random_model_dir(args.model_dir, Path(tmp) / "model")
        for dtype in args.dtypes:
            for zero in args.zero:
                print(f"== {dtype}, ZeRO-{zero}", flush=True)
                try:
                    result["runs"].append(run_config(path, dtype, zero, args))
                except Exception as exc:  # one failed configuration is a result, not the end
                    result["runs"].append({"dtype": dtype, "zero_stage": zero, "error": repr(exc)})
                args.out.write_text(json.dumps(result, indent=1))
    if args.cpu_reference and torch.cuda.is_available():
        cpu_out = args.out.with_name(args.out.stem + "_cpu.json")
        cmd = [
            sys.executable,
            __file__,
            "--model-dir",
            str(args.model_dir),
            "--dtypes",
            args.dtypes[0],
            "--zero",
            str(args.zero[0]),
            "--iterations",
            "2",
            "--rollout-batch",
            str(args.rollout_batch),
            "--mini-batch",
            str(args.mini_batch),
            "--micro-batch",
            str(args.micro_batch),
            "--out",
            str(cpu_out),
        ]
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "DS_ACCELERATOR": "cpu"}
        print("== CPU reference:", " ".join(cmd), flush=True)
        subprocess.run(cmd, env=env, check=False)
        if cpu_out.exists():
            cpu = json.loads(cpu_out.read_text())
            result["cpu_reference"] = cpu
            gpu_first, cpu_first = result["runs"][0], cpu["runs"][0]
            if "iteration_s" in gpu_first and "iteration_s" in cpu_first:
                result["iteration_s_cpu_over_gpu"] = round(
                    cpu_first["iteration_s"] / gpu_first["iteration_s"], 2
                )
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "cpu_reference"}, indent=1)[:6000])


if __name__ == "__main__":
    main()
