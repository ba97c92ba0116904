"""Shared fixtures: one real local Ray cluster per test session, isolated caches."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """A real local Ray cluster (not a mock), shared by every test that trains on actors."""
    import ray

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    ray.init(
        num_cpus=4,
        include_dashboard=False,
        log_to_driver=True,
        runtime_env={
            "env_vars": {
                "DS_ACCELERATOR": "cpu",
                "TRANSFORMERS_VERBOSITY": "error",
                "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            }
        },
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def tiny_run(ray_cluster, artifacts_dir) -> Path:
    """The shipped configs/tiny.yaml, every stage, run once per session (≈5 min on 2 cores)."""
    import shutil

    from instructray.config import load_config
    from instructray.orchestrator.pipeline import run_job

    run_dir = artifacts_dir / "tiny-run"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_job(load_config(REPO / "configs" / "tiny.yaml", [f"output.run_dir={run_dir}"]))
    return run_dir
