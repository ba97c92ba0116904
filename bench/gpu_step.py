"""Does the project's PPO/RM/DPO math give the same numbers on a GPU as on the CPU, and how fast
is one PPO policy step there?

    python3 bench/gpu_step.py --device cuda --out $OUT/gpu_step.json [--quick] [--layers 30]
    python3 bench/gpu_step.py --device cpu --layers 2 --quick --out /tmp/gpu_step.json  # smoke

A seeded random-init Llama shaped like SmolLM2-135M (``--layers`` shrinks it) plus a value model
on its backbone (saved to a temp dir, reloaded by ``load_value_model``). Part 1 (parity): on 8
fixed right-padded sequences (32 prompt + 32 response) the project's functions give response
log-probs, entropy, GAE, clipped PPO policy loss (perturbed old log-probs: clipping active),
clipped value loss, K=4 pairwise RM loss, DPO loss and the policy-loss grad norm, on CPU fp32
(reference), CUDA fp32 (TF32 off), CUDA TF32 and CUDA bf16 (model cast to bf16, no autocast);
|Δ| vs the reference and a tolerance verdict for each. Part 2 (speed): one PPO micro-step
(forward + backward + AdamW, seq 64) per micro-batch and dtype — median after warm-ups,
tokens/s, peak CUDA memory — one RM forward per dtype, and micro-batch 4 fp32 on this machine's
CPU as the reference. The JSON is written after part 1 (``complete: false``) and at the end.
Imports only stdlib, torch, transformers and instructray.{algorithms,models.loading}.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from statistics import median
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import transformers
from torch import Tensor
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel

from instructray import algorithms as rl  # pure torch: losses, advantages, log-probs, KL
from instructray.models import loading  # transformers + torch only (checked: no ray/pydantic)

SEED, PROMPT, RESPONSE, BATCH, K, PAD = 1234, 32, 32, 8, 4, 2
SEQ = PROMPT + RESPONSE
# (rtol, atol); a quantity passes if max|Δ| <= atol or max|Δ| / max|ref| <= rtol.
# fp32: 1e-4 — CPU and cuBLAS differ only in summation order (~1e-6 per matmul).
# tf32: 10-bit mantissa, unit roundoff 2^-11 ≈ 5e-4; a few roundoffs through the stack → 5e-3.
# bf16: 7-bit mantissa, unit roundoff 2^-8 ≈ 3.9e-3 per rounding; weights, activations and
# residual adds all round, so logits/values drift by a few u over 30 layers → rtol 2e-2; the
# absolute floor 2e-2 covers quantities near 0 (the policy loss of whitened advantages).
# Parity/speed modes: (dtype, TF32 on). bf16 = model cast to bf16 (DeepSpeed's bf16 forward).
MODES = {"fp32": (torch.float32, False), "tf32": (torch.float32, True),
         "bf16": (torch.bfloat16, False)}  # fmt: skip
TOLERANCE = {"fp32": (1e-4, 1e-4), "tf32": (5e-3, 5e-3), "bf16": (2e-2, 2e-2)}
# Counts of discrete events: one token whose clip decision flips moves them by 1/n. Reported,
# left out of the verdict.
DISCRETE = {"clip_fraction", "value_clip_fraction", "rm_accuracy"}
FORBIDDEN = ("ray", "pydantic", "deepspeed", "vllm")
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", flush=True)


def set_tf32(on: bool) -> None:
    """Legacy switches only (mixing them with torch's new fp32_precision API can raise)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.backends.cuda.matmul.allow_tf32 = on
        torch.backends.cudnn.allow_tf32 = on


def smollm2_config(layers: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
        rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=PAD,
    )  # fmt: skip


def make_batch(rows: int, gen: torch.Generator, vocab: int) -> tuple[Tensor, Tensor]:
    """Random token ids [rows, SEQ] and a right-padded attention mask (row 0 full length)."""
    ids = torch.randint(3, vocab, (rows, SEQ), generator=gen)
    lengths = PROMPT + torch.randint(RESPONSE // 2, RESPONSE + 1, (rows,), generator=gen)
    lengths[0] = SEQ
    mask = (torch.arange(SEQ) < lengths[:, None]).long()
    return torch.where(mask.bool(), ids, PAD), mask


def action_logits(model: PreTrainedModel, ids: Tensor, mask: Tensor) -> Tensor:
    """As training/forward.py's lm_logits: real-token positions, last RESPONSE+1 only, float."""
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=False,
                logits_to_keep=RESPONSE + 1)  # fmt: skip
    return out.logits.float()


def action_values(model: PreTrainedModel, ids: Tensor, mask: Tensor) -> Tensor:
    return loading.token_values(model, ids, mask).float()[:, -RESPONSE - 1 : -1]


def timed(fn: Callable[[], object], device: torch.device, warmup: int, steps: int) -> float:
    """Median wall time of ``fn`` over ``steps`` calls after ``warmup`` untimed ones."""
    times = []
    for _ in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return median(times[warmup:])


def fixed_inputs(policy: PreTrainedModel, value: PreTrainedModel, vocab: int) -> dict[str, Tensor]:
    """Seeded batch plus rollout-side tensors derived once from the CPU fp32 models, so every
    device sees identical inputs: old log-probs = π + N(0, 0.3) (clipping active), reference
    = π + N(0, 0.1), old values = V + N(0, 0.3), RM scores N(0, 1), two groups of K ranks."""
    gen = torch.Generator().manual_seed(SEED + 2)
    ids, mask = make_batch(BATCH, gen, vocab)
    am = mask[:, PROMPT:]
    with torch.no_grad():
        lp = rl.response_logprobs(action_logits(policy, ids, mask), ids, RESPONSE)
        v = action_values(value, ids, mask)

    def noisy(x: Tensor, std: float) -> Tensor:
        return torch.where(am.bool(), x + std * torch.randn(x.shape, generator=gen), 0.0)

    old, ref, old_values = noisy(lp, 0.3), noisy(lp, 0.1), noisy(v, 0.3)
    ranks = torch.cat([torch.randperm(K, generator=gen) for _ in range(BATCH // K)])
    return {
        "ids": ids, "mask": mask, "action_mask": am, "old_logprobs": old, "ref_logprobs": ref,
        "ref_seq": rl.masked_sum(ref, am, dim=1), "old_values": old_values, "ranks": ranks,
        "scores": torch.randn(BATCH, generator=gen), "group_ids": torch.arange(BATCH) // K,
    }  # fmt: skip


def parity_run(
    policy: PreTrainedModel, value: PreTrainedModel, data: dict[str, Tensor],
    device: torch.device, dtype: torch.dtype, tf32: bool,
) -> dict[str, Tensor]:  # fmt: skip
    set_tf32(tf32)
    policy = copy.deepcopy(policy).to(device=device, dtype=dtype).train()
    value = copy.deepcopy(value).to(device=device, dtype=dtype).eval()
    d = {k: t.to(device) for k, t in data.items()}
    ids, mask, am = d["ids"], d["mask"], d["action_mask"]
    logits = action_logits(policy, ids, mask)
    lp = rl.response_logprobs(logits, ids, RESPONSE)
    ent = rl.entropy_from_logits(logits[:, :-1])
    kl = rl.kl_penalty(d["old_logprobs"], d["ref_logprobs"], "k1")
    rewards = rl.shape_rewards(d["scores"], kl, am, kl_coef=0.05)
    adv, ret = rl.compute_gae(rewards, d["old_values"], am, gamma=1.0, lam=0.95)
    adv_w = rl.whiten(adv, am)
    pg, clip_frac, approx_kl = rl.policy_loss_clipped(lp, d["old_logprobs"], adv_w, am, 0.2)
    seq, ref_seq, won, lost = rl.masked_sum(lp, am, dim=1), d["ref_seq"], slice(K), slice(K, 2 * K)
    dpo, _, _ = rl.dpo_loss(seq[won], seq[lost], ref_seq[won], ref_seq[lost], beta=0.1)
    pg.backward()
    grads = [p.grad.float().square().sum() for p in policy.parameters() if p.grad is not None]
    with torch.no_grad():
        values = action_values(value, ids, mask)
        v_loss, v_clip = rl.value_loss_clipped(values, d["old_values"], ret, am, 0.2)
        raw = loading.sequence_scores(value, ids, mask)  # model dtype: bf16 under a bf16 model
        rm_loss, rm_acc = rl.pairwise_ranking_loss(raw.float(), d["group_ids"], d["ranks"])
        rm_loss_raw, _ = rl.pairwise_ranking_loss(raw, d["group_ids"], d["ranks"])
    out = {
        "logprobs": lp, "entropy_tokens": ent, "entropy": rl.entropy_bonus(ent, am),
        "seq_logprobs": seq, "advantages": adv, "returns": ret, "policy_loss": pg,
        "clip_fraction": clip_frac, "approx_kl": approx_kl, "dpo_loss": dpo,
        "grad_norm": torch.stack(grads).sum().sqrt(), "values": values, "value_loss": v_loss,
        "value_clip_fraction": v_clip, "rm_scores": raw, "rm_loss": rm_loss,
        "rm_loss_in_model_dtype": rm_loss_raw, "rm_accuracy": rm_acc,
    }  # fmt: skip
    token_level = {"logprobs", "entropy_tokens", "advantages", "returns", "values"}
    return {
        k: (torch.where(am.bool(), t, 0.0) if k in token_level else t).detach().double().cpu()
        for k, t in out.items()
    }


def summary(t: Tensor, am: Tensor) -> float:
    """Scalar shown for a quantity: token-level tensors are averaged over valid tokens."""
    return (rl.masked_mean(t, am) if t.shape == am.shape else t.mean()).item()


def compare(ref: dict[str, Tensor], got: dict[str, Tensor], kind: str, am: Tensor) -> dict:
    rtol, atol = TOLERANCE[kind]
    rows, ok = {}, True
    for name, r in ref.items():
        diff = (got[name] - r).abs().max().item()  # elementwise max for tensors
        rel = diff / max(r.abs().max().item(), 1e-30)
        passed = bool(diff <= atol or rel <= rtol)  # NaN fails both
        ok &= passed or name in DISCRETE
        rows[name] = {"value": summary(got[name], am), "max_abs_diff": diff,
                      "rel_diff": rel, "pass": passed, "discrete": name in DISCRETE}  # fmt: skip
    return {"tolerance": {"rtol": rtol, "atol": atol}, "all_pass": ok, "quantities": rows}


def time_ppo_step(
    policy: PreTrainedModel, device: torch.device, dtype: torch.dtype, tf32: bool,
    mb: int, warmup: int, steps: int,
) -> dict[str, Any]:  # fmt: skip
    """PPO policy micro-step: forward, log-probs, clipped loss, backward, AdamW step. AdamW acts
    on the model's own params (bf16 under bf16: no fp32 master copy, unlike DeepSpeed)."""
    set_tf32(tf32)
    model = copy.deepcopy(policy).to(device=device, dtype=dtype).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    gen = torch.Generator().manual_seed(SEED + mb)
    ids, mask = (t.to(device) for t in make_batch(mb, gen, policy.config.vocab_size))
    am = mask[:, PROMPT:]
    old = (-10.8 + 0.3 * torch.randn(mb, RESPONSE, generator=gen)).to(device)
    adv = torch.randn(mb, RESPONSE, generator=gen).to(device)
    losses: list[Tensor] = []

    def step() -> None:
        lp = rl.response_logprobs(action_logits(model, ids, mask), ids, RESPONSE)
        loss, _, _ = rl.policy_loss_clipped(lp, old, adv, am, 0.2)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())

    resident = 0.0
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        resident = torch.cuda.memory_allocated(device) / 2**30  # weights (+ any leftovers)
    seconds = timed(step, device, warmup, steps)
    finite = bool(torch.isfinite(torch.stack(losses)).all())
    row = {"micro_batch": mb, "steps": steps, "warmup": warmup, "median_step_s": seconds,
           "tokens_per_s": mb * SEQ / seconds, "losses_finite": finite}  # fmt: skip
    if device.type == "cuda":
        row["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        row["mem_before_step_gib"] = resident
    return row


def time_rm_forward(
    value: PreTrainedModel, device: torch.device, dtype: torch.dtype, tf32: bool, mb: int,
    warmup: int, steps: int,
) -> dict[str, Any]:  # fmt: skip
    set_tf32(tf32)
    model = copy.deepcopy(value).to(device=device, dtype=dtype).eval()
    gen = torch.Generator().manual_seed(SEED)
    ids, mask = (t.to(device) for t in make_batch(mb, gen, value.config.vocab_size))
    with torch.no_grad():
        seconds = timed(lambda: loading.sequence_scores(model, ids, mask), device, warmup, steps)
    return {"micro_batch": mb, "median_s": seconds, "sequences_per_s": mb / seconds}


def host_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(), "platform": platform.platform(),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "cuda": torch.version.cuda, "cpus": os.cpu_count(), "load_avg": os.getloadavg(),
        "torch_threads": torch.get_num_threads(),
    }  # fmt: skip
    if device.type == "cuda":
        prop = torch.cuda.get_device_properties(device)
        info.update(device_name=prop.name, capability=f"{prop.major}.{prop.minor}",
                    device_mem_gib=round(prop.total_memory / 2**30, 1),
                    cudnn=torch.backends.cudnn.version())  # fmt: skip
    return info


def write(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    log(f"wrote {path}")


def guarded(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as exc:  # an OOM or kernel error is a result, not a crash
        log(f"ERROR {type(exc).__name__}: {exc}")
        return {"error": f"{type(exc).__name__}: {exc}"[:500]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--out", type=Path, default=Path("gpu_step.json"))
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--micro-batches", default="4,16,64")
    parser.add_argument("--quick", action="store_true", help="1 warm-up + 3 timed steps")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        write(args.out, {"complete": False, "error": "--device cuda but no CUDA device"})
        sys.exit(1)
    transformers.logging.set_verbosity_error()  # no load report / progress bars in the log
    transformers.logging.disable_progress_bar()
    warmup, steps = (1, 3) if args.quick else (3, 10)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(cores or 1)
    set_tf32(False)
    result: dict[str, Any] = {"complete": False, "host": host_info(device), "seed": SEED,
                              "layers": args.layers, "quick": args.quick}  # fmt: skip
    log(f"building {args.layers}-layer SmolLM2-shaped Llama (random init, seed {SEED})")
    cfg = smollm2_config(args.layers)
    torch.manual_seed(SEED)
    policy = loading.disable_dropout(LlamaForCausalLM(cfg)).float()
    with tempfile.TemporaryDirectory() as tmp:
        policy.save_pretrained(tmp)
        torch.manual_seed(SEED + 1)
        value = loading.disable_dropout(loading.load_value_model(tmp)).float()
    params = sum(p.numel() for p in policy.parameters())
    result["model"] = {"params": params, "attn_implementation": policy.config._attn_implementation}

    log("part 1: parity — CPU fp32 reference")
    data = fixed_inputs(policy, value, cfg.vocab_size)
    ref = parity_run(policy, value, data, torch.device("cpu"), torch.float32, False)
    kinds = list(MODES) if cuda else ["bf16"]  # CPU run: fp32 vs bf16 only
    parity: dict[str, Any] = {
        "reference": "cpu_fp32", "tf32_off_for_fp32": True, "bf16_mode": "model cast to bf16",
        "cpu_fp32": {k: summary(v, data["action_mask"]) for k, v in ref.items()},
    }  # fmt: skip
    for kind in kinds:
        name = f"{args.device}_{kind}"
        log(f"part 1: parity — {name}")
        got = guarded(parity_run, policy, value, data, device, *MODES[kind])
        parity[name] = got if "error" in got else compare(ref, got, kind, data["action_mask"])
        if "all_pass" in parity[name]:
            bad = [q for q, r in parity[name]["quantities"].items() if not r["pass"]]
            log(f"  {name}: all_pass={parity[name]['all_pass']} failing={bad}")
    result["parity"] = parity
    write(args.out, result)

    mbs = [int(x) for x in args.micro_batches.split(",")]
    dtypes = list(MODES) if cuda else ["fp32", "bf16"]
    if not cuda:
        mbs = [min(mbs)]  # the CPU run is only a smoke test
    speed: dict[str, Any] = {"seq_len": SEQ, "ppo_step": {}, "rm_forward": {}}
    result["speed"] = speed
    for dname in dtypes:
        dtype, tf32 = MODES[dname]
        for mb in mbs:
            log(f"part 2: PPO step {args.device} {dname} micro-batch {mb}")
            row = guarded(time_ppo_step, policy, device, dtype, tf32, mb, warmup, steps)
            speed["ppo_step"][f"{args.device}_{dname}_mb{mb}"] = row
            log(f"  {row}")
        rm_mb = 64 if cuda else mbs[0]
        log(f"part 2: RM forward {args.device} {dname} micro-batch {rm_mb}")
        row = guarded(time_rm_forward, value, device, dtype, tf32, rm_mb, warmup, steps)
        speed["rm_forward"][f"{args.device}_{dname}_mb{rm_mb}"] = row
        write(args.out, result)  # partial: a crash in a later dtype keeps this one
    if cuda:
        log("part 2: CPU reference PPO step fp32 micro-batch 4")
        cpu_steps = 2 if args.quick else 3
        cpu = guarded(
            time_ppo_step, policy, torch.device("cpu"), torch.float32, False, 4, 1, cpu_steps
        )
        speed["ppo_step"]["cpu_fp32_mb4"] = cpu
        for dname in dtypes:
            gpu = speed["ppo_step"].get(f"cuda_{dname}_mb4", {})
            if "median_step_s" in gpu and "median_step_s" in cpu:
                speed[f"cpu_over_cuda_{dname}_mb4_step_time"] = (
                    cpu["median_step_s"] / gpu["median_step_s"]
                )
    loaded = sorted(m for m in FORBIDDEN if m in sys.modules)
    if loaded:
        # accelerate's unwrap_model (in save_pretrained) imports deepspeed if it is installed
        log(f"WARNING: {loaded} imported (by a dependency, as installed here)")
    result.update(forbidden_modules_loaded=loaded, complete=True, wall_s=time.perf_counter() - T0)
    write(args.out, result)


if __name__ == "__main__":
    main()
