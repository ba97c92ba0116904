"""``instructray export RUN_DIR --stage ppo --to DIR``: one trained model as a folder to ship.

A stage's checkpoint is already a Hugging Face folder; the export copies it (weights, config,
tokenizer, generation config) without the run's bookkeeping, and adds a model card (README.md)
that says where it came from and what the run's evaluation measured for it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from instructray.config import ConfigError
from instructray.models.loading import atomic_dir, is_complete

LOADS_AS = {
    "pretrain": "AutoModelForCausalLM",
    "sft": "AutoModelForCausalLM",
    "ppo": "AutoModelForCausalLM",
    "dpo": "AutoModelForCausalLM",
    "rm": "AutoModelForSequenceClassification",
    "ppo_critic": "AutoModelForSequenceClassification",
}
KEPT = (
    "config.json",
    "generation_config.json",
    "chat_template.jinja",
    "tokenizer.json",
    "tokenizer_config.json",
)
KEPT_GLOBS = ("*.safetensors", "*.safetensors.index.json")


def _eval_lines(run_dir: Path, stage: str) -> list[str]:
    path = run_dir / "eval.json"
    if not path.is_file():
        return ["No evaluation in the run folder (`instructray eval RUN_DIR` makes one)."]
    result: dict[str, Any] = json.loads(path.read_text())
    entry = result.get("checkpoints", {}).get(stage)
    if entry is None or stage == result.get("baseline"):
        return [f"The run's evaluation compares other checkpoints with {result.get('baseline')}."]
    lines = [
        f"Win-rate against `{result['baseline']}` on {entry['n']} held-out prompts "
        f"({round(100 * entry['confidence'])}% bootstrap CIs), KL {entry['kl_per_sequence']:.2f}"
        " nats per sequence:",
        "",
        "| judge | win-rate |",
        "|---|---|",
    ]
    for judge, rate in entry["win_rate"].items():
        lines.append(f"| {judge} | {rate['estimate']:.2f} ({rate['low']:.2f}–{rate['high']:.2f}) |")
    verdict = result.get("verdicts", {}).get(stage, {}).get("message")
    return [*lines, "", f"Verdict: {verdict}"] if verdict else lines


def model_card(run_dir: Path, stage: str) -> str:
    config = run_dir / "config.yaml"
    lines = [
        f"# {run_dir.name}: the `{stage}` model",
        "",
        f"Trained by instructray (stage `{stage}` of the run in `{run_dir}`). Load it with "
        f"`transformers.{LOADS_AS[stage]}.from_pretrained(this_folder)`"
        + (
            " or serve it with `vllm serve this_folder`." if LOADS_AS[stage].endswith("LM") else "."
        ),
        "",
        "## Evaluation",
        "",
        *_eval_lines(run_dir, stage),
    ]
    if config.is_file():
        lines += ["", "## The run's config", "", "```yaml", config.read_text().rstrip(), "```"]
    return "\n".join(lines) + "\n"


def export_checkpoint(run_dir: Path, stage: str, out: Path) -> Path:
    """Copy ``run_dir``'s ``stage`` checkpoint to ``out`` with a model card; refuses to write
    into an existing folder."""
    if stage not in LOADS_AS:
        raise ConfigError(f"unknown stage {stage!r}: choose one of {', '.join(LOADS_AS)}")
    source = run_dir / "checkpoints" / stage
    if not is_complete(source):
        found = sorted(p.name for p in (run_dir / "checkpoints").glob("*") if is_complete(p))
        raise ConfigError(
            f"{source} is not a complete checkpoint; this run has: {', '.join(found) or 'none'}"
        )
    if out.exists():
        raise ConfigError(f"{out} already exists: choose a new folder to export into")
    with atomic_dir(out) as tmp:
        names = [n for n in KEPT if (source / n).is_file()]
        names += [p.name for pattern in KEPT_GLOBS for p in source.glob(pattern)]
        for name in names:
            shutil.copyfile(source / name, tmp / name)  # default modes, not the run's
        (tmp / "README.md").write_text(model_card(run_dir, stage))
    return out
