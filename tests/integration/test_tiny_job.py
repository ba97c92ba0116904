"""The shipped tiny preset, end to end on a real local Ray cluster with real DeepSpeed:
pretrain → SFT → RM (simulated labeler) → PPO-ptx → DPO, then checks on what it produced."""

from __future__ import annotations

import json
from pathlib import Path
from statistics import fmean

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from instructray.run_log import read_metrics

pytestmark = pytest.mark.e2e


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_job_succeeds_with_every_stage(tiny_run: Path) -> None:
    summary = _summary(tiny_run)
    assert summary["status"] == "succeeded", summary["error"]
    assert list(summary["stages"]) == ["pretrain", "sft", "rm", "ppo", "dpo"]
    for stage in summary["stages"].values():
        assert stage["wall_time_s"] > 0 and stage["steps"] > 0
        assert Path(stage["checkpoint"]).is_dir()


def test_pretraining_and_sft_losses_fall(tiny_run: Path) -> None:
    stages = _summary(tiny_run)["stages"]
    pre, sft = stages["pretrain"]["eval"], stages["sft"]["eval"]
    assert pre["eval_loss"] < pre["eval_loss_before"] - 1.0  # from ln(2048) ≈ 7.6
    assert sft["eval_loss"] < sft["eval_loss_before"] - 0.05
    losses = [r["loss"] for r in read_metrics(tiny_run, "sft")]
    assert fmean(losses[-10:]) < fmean(losses[:10])


def test_reward_model_beats_75_percent_on_heldout_rankings(tiny_run: Path) -> None:
    rm = _summary(tiny_run)["stages"]["rm"]["eval"]
    assert rm["heldout_accuracy_before"] < 0.65  # a fresh head is near chance
    assert rm["heldout_accuracy"] > 0.75


def test_ppo_raises_reward_and_keeps_kl_bounded(tiny_run: Path) -> None:
    rows = read_metrics(tiny_run, "ppo")
    rewards = [r["reward_mean"] for r in rows]
    third = len(rows) // 3
    assert fmean(rewards[-third:]) > fmean(rewards[:third]) + 0.2
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-4)  # first rollouts: policy == reference
    # β·KL keeps the policy near the SFT model: at most 8 nats per ~20-token response.
    assert max(r["kl"] for r in rows) < 8.0
    assert max(r["kl"] / r["response_length"] for r in rows) < 0.4
    for key in ("entropy", "value_loss", "clip_fraction", "ptx_loss", "tokens_per_s"):
        assert all(key in r for r in rows), key


def test_dpo_raises_the_chosen_vs_rejected_margin(tiny_run: Path) -> None:
    dpo = _summary(tiny_run)["stages"]["dpo"]["eval"]
    assert dpo["heldout_margin_before"] == pytest.approx(0.0, abs=1e-4)  # policy == reference
    assert dpo["heldout_margin"] > 0.05
    assert dpo["heldout_accuracy"] > 0.55
    rows = read_metrics(tiny_run, "dpo")
    third = len(rows) // 3
    assert fmean(r["reward_margin"] for r in rows[-third:]) > fmean(
        r["reward_margin"] for r in rows[:third]
    )


def test_checkpoints_load_in_plain_transformers(tiny_run: Path) -> None:
    ckpt = tiny_run / "checkpoints"
    tok = AutoTokenizer.from_pretrained(ckpt / "ppo")
    prompt = tok("This movie is", return_tensors="pt")
    for stage in ("pretrain", "sft", "ppo", "dpo"):
        model = AutoModelForCausalLM.from_pretrained(ckpt / stage)
        out = model.generate(**prompt, max_new_tokens=5, do_sample=False)
        assert out.shape[1] > prompt["input_ids"].shape[1]
    rm = AutoModelForSequenceClassification.from_pretrained(ckpt / "rm")
    assert rm.config.num_labels == 1
    with torch.no_grad():
        scores = rm(
            **tok(
                ["A great, moving film.", "Dull and lifeless."], return_tensors="pt", padding=True
            )
        ).logits
    assert scores.shape == (2, 1) and torch.isfinite(scores).all()
    critic = AutoModelForSequenceClassification.from_pretrained(ckpt / "ppo_critic")
    assert critic.config.num_labels == 1


def test_metrics_jsonl_has_what_a_user_watches(tiny_run: Path) -> None:
    rows = read_metrics(tiny_run)
    by_stage = {r["stage"] for r in rows}
    assert by_stage == {"pretrain", "sft", "rm", "ppo", "dpo"}
    assert all({"stage", "step", "time"} <= r.keys() for r in rows)
    assert all("accuracy" in r for r in read_metrics(tiny_run, "rm"))
    assert (tiny_run / "config.yaml").exists()
    assert any((tiny_run / "tensorboard").iterdir())
