"""The shipped tiny preset, end to end on a real local Ray cluster with real DeepSpeed:
pretrain → SFT → RM (simulated labeler) → PPO-ptx → DPO, then checks on what it produced."""

from __future__ import annotations

import html
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


def _ppo_rows(run_dir: Path) -> list[dict]:
    """PPO iterations (the monitor's baseline row, step 0, is not one)."""
    return [r for r in read_metrics(run_dir, "ppo") if r["step"] > 0]


def test_job_succeeds_with_every_stage(tiny_run: Path) -> None:
    summary = _summary(tiny_run)
    assert summary["status"] == "succeeded", summary["error"]
    assert list(summary["stages"]) == ["pretrain", "sft", "rm", "ppo", "dpo", "eval"]
    for name, stage in summary["stages"].items():
        assert stage["wall_time_s"] > 0
        assert Path(stage["checkpoint"]).exists()
        assert stage["steps"] > 0 or name == "eval"


def test_pretraining_and_sft_losses_fall(tiny_run: Path) -> None:
    stages = _summary(tiny_run)["stages"]
    pre, sft = stages["pretrain"]["eval"], stages["sft"]["eval"]
    assert pre["eval_loss"] < pre["eval_loss_before"] - 1.0  # from ln(2048) ≈ 7.6
    assert sft["eval_loss"] < sft["eval_loss_before"] - 0.05
    losses = [r["loss"] for r in read_metrics(tiny_run, "sft")]
    assert fmean(losses[-10:]) < fmean(losses[:10])


def test_reward_model_beats_70_percent_on_heldout_rankings(tiny_run: Path) -> None:
    rm = _summary(tiny_run)["stages"]["rm"]["eval"]
    assert rm["heldout_accuracy_before"] < 0.65  # a fresh head is near chance
    # 0.79 before answers were scored as sampled: a cut-off answer no longer gets the EOS that
    # PPO's cut-off rollouts never have (0.72 now, held out by prompt).
    assert rm["heldout_accuracy"] > 0.70


def test_ppo_raises_reward_and_keeps_kl_bounded(tiny_run: Path) -> None:
    rows = _ppo_rows(tiny_run)
    rewards = [r["reward_mean"] for r in rows]
    third = len(rows) // 3
    assert fmean(rewards[-third:]) > fmean(rewards[:third]) + 0.2
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-4)  # first rollouts: policy == reference
    # β·KL keeps the policy near the SFT model: at most 12 nats per ~22-token response
    # (9.1 measured; it was 5.5 when PPO learned to stop early to dodge the RM's penalty on
    # cut-off answers, shorter responses carrying less KL).
    assert max(r["kl"] for r in rows) < 12.0
    assert max(r["kl"] / r["response_length"] for r in rows) < 0.5
    for key in ("entropy", "value_loss", "clip_fraction", "ptx_loss", "tokens_per_s"):
        assert all(key in r for r in rows), key


def test_dpo_raises_the_chosen_vs_rejected_margin(tiny_run: Path) -> None:
    dpo = _summary(tiny_run)["stages"]["dpo"]["eval"]
    assert dpo["heldout_margin_before"] == pytest.approx(0.0, abs=1e-4)  # policy == reference
    # Held-out pairs come from prompts DPO never trained on (0.03 now; 0.23 when they shared
    # prompts and answers with training pairs). What DPO learned shows in eval.json: the
    # labeler's judge prefers its samples over SFT's on held-out prompts.
    assert dpo["heldout_margin"] > 0.01
    win = json.loads((tiny_run / "eval.json").read_text())["checkpoints"]["dpo"]["win_rate"]
    assert win["labeler"]["low"] > 0.5
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
    assert by_stage == {"pretrain", "sft", "rm", "ppo", "dpo"}  # eval writes eval.json
    assert all({"stage", "step", "time"} <= r.keys() for r in rows)
    assert all("accuracy" in r for r in read_metrics(tiny_run, "rm"))
    assert (tiny_run / "config.yaml").exists()
    assert any((tiny_run / "tensorboard").iterdir())


def test_reward_model_is_normalised_on_demonstrations(tiny_run: Path) -> None:
    """InstructGPT's RM step before RL: SFT demonstrations score 0 on average, in plain
    transformers too (logit − config.reward_offset)."""
    from instructray.config import load_config
    from instructray.orchestrator.batching import lm_batch
    from instructray.orchestrator.context import JobData

    cfg = load_config(tiny_run / "config.yaml")
    demos = JobData(cfg).sft_examples[: cfg.rm.normalize_samples]
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_run / "checkpoints" / "rm")
    tok = AutoTokenizer.from_pretrained(tiny_run / "checkpoints" / "rm")
    batch = lm_batch(tok, demos, cfg.model.max_prompt_tokens, cfg.model.max_seq_len)
    with torch.no_grad():
        logits = rm(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    offset = rm.config.reward_offset
    assert offset == pytest.approx(_summary(tiny_run)["stages"]["rm"]["eval"]["reward_offset"])
    assert abs(offset) > 1e-3  # there was something to normalise
    assert float((logits.squeeze(-1) - offset).mean()) == pytest.approx(0.0, abs=1e-4)


def test_ppo_monitor_observes_proxy_and_gold_judges(tiny_run: Path) -> None:
    rows = {r["step"]: r for r in read_metrics(tiny_run, "ppo")}
    monitored = sorted(s for s, r in rows.items() if "monitor_proxy" in r)
    assert monitored == [0, 5, 10, 15, 20]
    for step in monitored:
        row = rows[step]
        for judge in ("labeler", "judge_heldout", "vader"):
            assert f"monitor_gold_{judge}" in row
        assert row["hacking_warning"] in (0.0, 1.0)
    assert rows[0]["monitor_kl"] == pytest.approx(0.0, abs=1e-4)  # step 0: policy == reference
    assert rows[20]["monitor_kl"] > 0.1
    warnings = _summary(tiny_run)["warnings"]
    flagged = {s for s in monitored if rows[s]["hacking_warning"] == 1.0}
    assert {w["step"] for w in warnings} <= flagged  # every warning comes from a flagged step


def test_eval_reports_win_rates_with_intervals_truthfully(tiny_run: Path) -> None:
    result = json.loads((tiny_run / "eval.json").read_text())
    assert result["baseline"] == "sft" and result["proxy"] == "rm"
    assert result["gold"] == ["labeler", "judge_heldout", "vader"]
    assert list(result["checkpoints"]) == ["sft", "pretrain", "ppo", "dpo"]
    assert result["num_prompts"] == 400
    sft = result["checkpoints"]["sft"]
    assert sft["win_rate"] == {} and sft["kl_per_sequence"] == pytest.approx(0.0, abs=1e-5)
    for name in ("pretrain", "ppo", "dpo"):
        entry = result["checkpoints"][name]
        assert set(entry["win_rate"]) == {"rm", "labeler", "judge_heldout", "vader"}
        for w in entry["win_rate"].values():
            assert 0 <= w["low"] <= w["estimate"] <= w["high"] <= 1 and w["n"] == 400
        assert entry["lm_loss"] > 0
        verdict = result["verdicts"][name]
        better = {j for j in result["gold"] if entry["win_rate"][j]["low"] > 0.5}
        assert verdict["aligned"] == (better == set(result["gold"]))
        assert name in verdict["message"]
    ppo = result["checkpoints"]["ppo"]
    assert ppo["scores"]["rm"] > sft["scores"]["rm"]  # PPO optimised the proxy...
    assert ppo["kl_per_sequence"] > 0.1  # ... and moved away from the reference
    report = tiny_run / "report" / "index.html"
    assert report.is_file()
    assert html.escape(result["verdicts"]["ppo"]["message"]) in report.read_text()
    assert any(p.suffix == ".png" for p in report.parent.iterdir())


def words_per_response(prompts: list[str], responses: list[str]) -> list[float]:
    """A user-supplied judge for the eval test: longer answers are better."""
    return [float(len(r.split())) for r in responses]


def test_instructray_eval_on_a_finished_run(tiny_run: Path, tmp_path: Path) -> None:
    """`instructray eval RUN_DIR` re-evaluates chosen checkpoints of a finished run, with a
    user-supplied judge next to the task's, and keeps what the run recorded."""
    import shutil

    from instructray.cli import main

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("tensorboard"))
    before = _summary(run)
    judge = f"{__name__}:words_per_response"
    argv = ["eval", str(run), "--checkpoints", "ppo", "--set", "eval.num_prompts=48"]
    assert main([*argv, "--set", f"eval.judges=[{judge}]"]) == 0
    result = json.loads((run / "eval.json").read_text())
    assert list(result["checkpoints"]) == ["sft", "ppo"] and result["num_prompts"] == 48
    assert result["gold"] == ["labeler", "judge_heldout", "vader", judge]
    ppo = result["checkpoints"]["ppo"]
    assert judge in ppo["win_rate"]
    for sample in ppo["samples"]:  # the user's judge scored each response it was given
        assert sample["scores"][judge] == len(sample["response"].split())
    after = _summary(run)
    assert after["status"] == "succeeded"
    assert after["stages"]["ppo"] == before["stages"]["ppo"]  # the run's record is kept
    assert (
        after["stages"]["eval"]["eval"]["ppo_win_rate_rm"]
        == (result["checkpoints"]["ppo"]["win_rate"]["rm"]["estimate"])
    )
