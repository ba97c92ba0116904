"""Tests for instructray.cli.main: `check` output, config errors, `run` wiring (no Ray)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import yaml

from instructray import cli
from instructray.config import JobConfig, load_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


@pytest.fixture
def fake_run_job(monkeypatch):
    """Stand in for the pipeline so `run` never starts Ray; records the config it got."""
    seen: list[JobConfig] = []

    def run_job(cfg: JobConfig):
        seen.append(cfg)
        return types.SimpleNamespace(run_dir=cfg.output.run_dir)

    def run_eval(cfg: JobConfig, run_dir: Path):
        seen.append(cfg)
        return types.SimpleNamespace(run_dir=run_dir)

    def resume_job(cfg: JobConfig, run_dir: Path):
        seen.append(cfg)
        return types.SimpleNamespace(run_dir=run_dir)

    module = types.ModuleType("instructray.orchestrator.pipeline")
    module.run_job = run_job
    module.run_eval = run_eval
    module.resume_job = resume_job
    monkeypatch.setitem(sys.modules, "instructray.orchestrator.pipeline", module)
    return seen


def test_check_prints_resolved_yaml(capsys):
    assert cli.main(["check", "configs/tiny.yaml"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    printed = yaml.safe_load(out)
    assert printed == load_config("configs/tiny.yaml").model_dump(mode="json")
    assert printed["name"] == "tiny"
    assert printed["ppo"]["clip_eps"] == 0.2
    assert JobConfig.model_validate(printed) == load_config("configs/tiny.yaml")


def test_check_applies_overrides(capsys):
    argv = ["check", "configs/tiny.yaml", "--set", "ppo.iterations=3", "--set", "seed=9"]
    assert cli.main(argv) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["ppo"]["iterations"] == 3
    assert printed["seed"] == 9


def test_check_invalid_value(capsys):
    assert cli.main(["check", "configs/tiny.yaml", "--set", "ppo.clip_eps=-1"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("error: invalid configuration (1 problem(s)):")
    assert "configs/tiny.yaml: ppo.clip_eps: Input should be greater than 0 (got -1)" in err


def test_check_bad_set_syntax(capsys):
    assert cli.main(["check", "configs/tiny.yaml", "--set", "foo"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --set 'foo': expected KEY=VALUE, e.g. --set ppo.iterations=5\n"


def test_check_missing_file(capsys, tmp_path):
    missing = tmp_path / "nope.yaml"
    assert cli.main(["check", str(missing)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"error: config file not found: {missing}\n"


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([])
    assert info.value.code == 2
    assert "usage: instructray" in capsys.readouterr().err


def test_run_invalid_config_never_starts_the_job(capsys, fake_run_job):
    assert cli.main(["run", "configs/tiny.yaml", "--set", "stages=[ppo]"]) == 2
    assert fake_run_job == []
    assert "stage 'ppo' needs a reward" in capsys.readouterr().err


def test_run_out_sets_run_dir(capsys, fake_run_job, tmp_path):
    out_dir = tmp_path / "run1"
    argv = ["run", "configs/tiny.yaml", "--out", str(out_dir), "--set", "ppo.iterations=2"]
    assert cli.main(argv) == 0
    (cfg,) = fake_run_job
    assert cfg.output.run_dir == out_dir
    assert cfg.ppo.iterations == 2
    assert capsys.readouterr().out == f"done: {out_dir}/summary.json\n"


@pytest.mark.parametrize("name", ["exp #1", "lr: 1e-4"])
def test_run_out_is_taken_literally(fake_run_job, tmp_path, name):
    out_dir = tmp_path / name
    assert cli.main(["run", "configs/tiny.yaml", "--out", str(out_dir)]) == 0
    (cfg,) = fake_run_job
    assert cfg.output.run_dir == out_dir


def test_eval_reads_the_run_config_and_chooses_checkpoints(capsys, fake_run_job, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text((REPO / "configs" / "tiny.yaml").read_text())
    argv = ["eval", str(run), "--checkpoints", "sft", "ppo", "--set", "eval.num_prompts=50"]
    assert cli.main(argv) == 0
    [cfg] = fake_run_job
    assert cfg.eval.checkpoints == ["sft", "ppo"] and cfg.eval.num_prompts == 50
    assert cfg.output.run_dir == run
    assert capsys.readouterr().out.strip() == f"done: {run}/eval.json"


def test_eval_of_a_folder_without_a_run(capsys, fake_run_job, tmp_path):
    assert cli.main(["eval", str(tmp_path)]) == 2
    assert fake_run_job == []
    assert f"{tmp_path} is not a run folder" in capsys.readouterr().err


def test_resume_reads_the_run_folders_config(fake_run_job, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("name: was-run\nseed: 3\n")
    assert cli.main(["run", "--resume", str(run_dir), "--set", "ppo.iterations=7"]) == 0
    (cfg,) = fake_run_job
    assert (cfg.name, cfg.seed, cfg.ppo.iterations) == ("was-run", 3, 7)
    assert cfg.output.run_dir == run_dir
    assert capsys.readouterr().out.strip() == f"done: {run_dir}/summary.json"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run"], "give a job config"),
        (["run", "configs/tiny.yaml", "--resume", "runs/x"], "takes its config and run folder"),
        (["run", "--resume", "no/such/run"], "no/such/run is not a run folder"),
    ],
)
def test_resume_misuse_is_refused(fake_run_job, capsys, argv, message):
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err
    assert fake_run_job == []
