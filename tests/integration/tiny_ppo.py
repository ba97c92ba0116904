"""A PPO stage alone, from the session's tiny run (its SFT model), for the tests that study
one aspect of the PPO loop."""

from __future__ import annotations

from pathlib import Path

from instructray.config import load_config
from instructray.orchestrator.pipeline import run_job

REPO = Path(__file__).resolve().parents[2]


def run_tiny_ppo(tiny_run: Path, run_dir: Path, *overrides: str) -> None:
    """configs/tiny.yaml with ``stages=[ppo]`` from the tiny run's SFT checkpoint, no ptx and no
    TensorBoard, then ``overrides``."""
    run_job(
        load_config(
            REPO / "configs" / "tiny.yaml",
            [
                f"output.run_dir={run_dir}",
                "output.tensorboard=false",
                "stages=[ppo]",
                f"model.sft_checkpoint={tiny_run / 'checkpoints' / 'sft'}",
                "ppo.ptx_coef=0.0",
                *overrides,
            ],
        )
    )
