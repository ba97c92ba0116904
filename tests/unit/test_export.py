"""`instructray export`: one stage's model out of a run folder, loadable by plain transformers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from instructray import cli

EVAL = {
    "baseline": "sft",
    "checkpoints": {
        "sft": {"n": 200, "confidence": 0.95},
        "ppo": {
            "n": 200,
            "confidence": 0.95,
            "kl_per_sequence": 14.04,
            "win_rate": {
                "labeler": {"estimate": 0.93, "low": 0.9, "high": 0.96},
                "vader": {"estimate": 0.755, "low": 0.7, "high": 0.81},
            },
        },
    },
    "verdicts": {"ppo": {"message": "ppo vs sft: preferred by labeler"}},
}


@pytest.fixture
def run_dir(tiny_dir: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(tiny_dir, run / "checkpoints" / "ppo")
    (run / "checkpoints" / "sft").mkdir()  # no .complete marker: an unfinished checkpoint
    (run / "eval.json").write_text(json.dumps(EVAL))
    (run / "config.yaml").write_text("name: tiny\nseed: 0\n")
    return run


def test_export_copies_the_model_and_writes_a_model_card(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "shipped"
    assert cli.main(["export", str(run_dir), "--stage", "ppo", "--to", str(out)]) == 0

    card = (out / "README.md").read_text()
    assert "| labeler | 0.93 (0.90–0.96) |" in card and "| vader | 0.76 (0.70–0.81) |" in card
    assert "KL 14.04 nats per sequence" in card and "Verdict: ppo vs sft" in card
    assert "AutoModelForCausalLM" in card and "name: tiny" in card
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    source = AutoModelForCausalLM.from_pretrained(run_dir / "checkpoints" / "ppo")
    shipped = AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(shipped(ids).logits, source(ids).logits, rtol=0, atol=0)
    assert AutoTokenizer.from_pretrained(out).encode(
        " a fine film"
    ) == AutoTokenizer.from_pretrained(run_dir / "checkpoints" / "ppo").encode(" a fine film")


def test_export_refuses_what_it_cannot_do(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def export(stage: str, out: Path) -> str:
        assert cli.main(["export", str(run_dir), "--stage", stage, "--to", str(out)]) == 2
        return capsys.readouterr().err

    assert "is not a complete checkpoint; this run has: ppo" in export("sft", tmp_path / "a")
    assert "unknown stage 'policy'" in export("policy", tmp_path / "b")
    taken = tmp_path / "taken"
    taken.mkdir()
    assert "already exists" in export("ppo", taken)
    assert list(taken.iterdir()) == []
