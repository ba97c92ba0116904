"""Bad input fails a job early and clearly, before any actor starts, and is recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from instructray import cli
from instructray.config import ConfigError, load_config
from instructray.data import DataFormatError
from instructray.orchestrator.pipeline import STAGES, run_job

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """These jobs must fail before the pipeline starts Ray."""

    def refuse(_cfg: object) -> None:
        raise AssertionError("Ray was started before the job's inputs were checked")

    monkeypatch.setattr("instructray.orchestrator.pipeline.init_ray", refuse)


@pytest.mark.usefixtures("no_ray")
def test_malformed_user_data_fails_before_ray_starts(tmp_path: Path) -> None:
    sft = tmp_path / "sft.jsonl"
    sft.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c"}\n')
    cfg = load_config(
        REPO / "configs" / "tiny.yaml",
        [
            "stages=[sft]",
            "data.task=null",
            f"data.sft={sft}",
            f"output.run_dir={tmp_path / 'run'}",
            "output.tensorboard=false",
            f"output.cache_dir={tmp_path / 'cache'}",
        ],
    )
    with pytest.raises(DataFormatError) as err:
        run_job(cfg)
    assert err.value.line == 2 and "response" in str(err.value) and str(sft) in str(err.value)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and "line 2" in summary["error"]


@pytest.mark.usefixtures("no_ray")
def test_more_trainable_layers_than_the_model_has_fails_before_ray_starts(tmp_path: Path) -> None:
    cfg = load_config(
        REPO / "configs" / "tiny.yaml",
        [
            "stages=[rm]",
            "rm.trainable_layers=99",
            f"output.run_dir={tmp_path / 'run'}",
            "output.tensorboard=false",
            f"output.cache_dir={tmp_path / 'cache'}",
        ],
    )
    with pytest.raises(
        ConfigError, match=r"rm.trainable_layers is 99, .* has 4 transformer blocks"
    ):
        run_job(cfg)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and "choose 1..4" in summary["error"]


def test_a_failed_stage_is_named_in_the_summary_without_terminal_colours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def dies(_ctx: object) -> Path:
        raise RuntimeError("\x1b[36m(CausalLMActor pid=7)\x1b[0m policy rank 0 died")

    monkeypatch.setattr("instructray.orchestrator.pipeline.init_ray", lambda _cfg: None)
    monkeypatch.setitem(STAGES, "sft", dies)
    cfg = load_config(
        REPO / "configs" / "tiny.yaml",
        [
            "stages=[sft]",
            f"output.run_dir={tmp_path / 'run'}",
            "output.tensorboard=false",
            f"output.cache_dir={tmp_path / 'cache'}",
        ],
    )
    with pytest.raises(RuntimeError):
        run_job(cfg)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert (
        summary["error"]
        == "sft stage failed: RuntimeError: (CausalLMActor pid=7) policy rank 0 died"
    )


@pytest.mark.usefixtures("no_ray")
def test_a_folder_that_holds_a_run_is_not_written_over(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    summary = {"status": "succeeded", "error": None, "stages": {"sft": {}, "rm": {}}}
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "metrics.jsonl").write_text('{"stage": "sft", "step": 1, "loss": 2.5}\n')
    before = {p.name: p.read_bytes() for p in run.iterdir()}

    code = cli.main(["run", str(REPO / "configs" / "tiny.yaml"), "--out", str(run)])

    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {run} already holds a succeeded run of stages sft, rm;")
    assert f"`instructray eval {run}`" in err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # nothing touched


@pytest.mark.usefixtures("no_ray")
def test_a_missing_checkpoint_fails_before_ray_starts(tmp_path: Path) -> None:
    cfg = load_config(
        REPO / "configs" / "tiny.yaml",
        [
            "stages=[ppo]",
            f"model.sft_checkpoint={tmp_path}",  # a folder, but no model in it
            f"model.reward_checkpoint={tmp_path / 'nope'}",
            f"output.run_dir={tmp_path / 'run'}",
            "output.tensorboard=false",
            f"output.cache_dir={tmp_path / 'cache'}",
        ],
    )
    with pytest.raises(ConfigError, match=rf"^model.sft_checkpoint: {tmp_path} has no config.json"):
        run_job(cfg)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and "model.sft_checkpoint" in summary["error"]


@pytest.mark.usefixtures("no_ray")
@pytest.mark.parametrize("field", ["model.base", "rm.labeler.fluency_model"])
def test_a_missing_model_folder_fails_before_ray_starts(tmp_path: Path, field: str) -> None:
    """Every model path the config marks (not only the checkpoints) is checked up front: the
    CLI says which field, instead of a traceback from the model loader."""
    missing = tmp_path / "no-model"
    cfg = load_config(
        REPO / "configs" / "tiny.yaml",
        [
            "stages=[sft]",
            f"{field}={missing}",
            f"output.run_dir={tmp_path / 'run'}",
            "output.tensorboard=false",
            f"output.cache_dir={tmp_path / 'cache'}",
        ],
    )
    with pytest.raises(ConfigError) as err:
        run_job(cfg)
    assert str(err.value) == (
        f"{field}: {missing} does not exist; give a preset (tiny, smollm2) or a local Hugging "
        "Face model folder"
    )
    assert not (tmp_path / "cache").exists()  # refused before any base model was built
