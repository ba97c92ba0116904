"""Pieces of the job service without a server: settings, the metrics reader, entry points,
the confinement of a config's paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from instructray.api.configs import (
    SERVICE_SET,
    InvalidConfig,
    PathNotAllowed,
    apply_overrides,
    confine_paths,
    list_presets,
    load_preset,
    validate,
)
from instructray.api.db import Database, JobRecord
from instructray.api.runfiles import MetricsReader
from instructray.api.settings import Settings
from instructray.api.submission import entrypoint, run_dir_of, submission_id, waiting_message
from instructray.config import JobConfig, path_fields


def test_settings_from_environment(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    env = {
        "INSTRUCTRAY_API_PORT": "9001",
        "INSTRUCTRAY_API_RUNS_ROOT": "rel/runs",
        "INSTRUCTRAY_API_DATA_ROOTS": f"{tmp_path}/a,{tmp_path}/b",
        "INSTRUCTRAY_API_JOB_ENV": "NCCL_DEBUG=INFO,HF_HOME=/cache",
        "INSTRUCTRAY_API_TOKEN_FILE": str(token_file),
        "INSTRUCTRAY_API_MAX_BODY_BYTES": "2048",
    }
    s = Settings.from_env(env)
    assert s.port == 9001 and s.max_body_bytes == 2048
    assert s.runs_root.is_absolute() and s.runs_root.parts[-2:] == ("rel", "runs")
    assert s.allowed_data_roots == [tmp_path / "a", tmp_path / "b", s.runs_root]
    assert s.job_env == {"NCCL_DEBUG": "INFO", "HF_HOME": "/cache"}
    assert s.resolve_token() == ("from-file", False)
    assert s.db_url == f"sqlite:///{s.runs_root}/.api/jobs.sqlite3"
    token, generated = Settings.from_env({}).resolve_token()
    assert generated and len(token) >= 24
    with pytest.raises(ValueError, match="port"):
        Settings.from_env({"INSTRUCTRAY_API_PORT": "http"})


def test_any_sqlalchemy_url_by_setting(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/elsewhere/jobs.db"
    db = Database(Settings(database_url=url, runs_root=tmp_path).db_url)
    db.create_all()
    with db.session() as s:
        s.add(JobRecord(id="j1", name="n", config={"a": 1}, run_dir="/r"))
    with db.session() as s:
        assert s.get(JobRecord, "j1").config == {"a": 1}
    assert (tmp_path / "elsewhere" / "jobs.db").is_file()


def test_metrics_reader_is_incremental_and_survives_a_rewrite(tmp_path: Path) -> None:
    reader = MetricsReader()
    path = tmp_path / "metrics.jsonl"
    assert reader.read(tmp_path) == ([], 0) and reader.tail(tmp_path) == (0, None)
    path.write_text("".join(json.dumps({"step": i}) + "\n" for i in range(5)))
    assert reader.read(tmp_path, since=3) == ([{"step": 3}, {"step": 4}], 5)
    assert reader.tail(tmp_path) == (5, {"step": 4})
    with path.open("a") as f:
        f.write('{"step": 5}\n{"ste')
    assert reader.read(tmp_path, since=5) == ([{"step": 5}], 6)
    replacement = tmp_path / "new.jsonl"  # a new run in the same folder: a new file
    replacement.write_text('{"step": 100}\n')
    replacement.replace(path)
    assert reader.read(tmp_path) == ([{"step": 100}], 1)


@pytest.mark.parametrize(
    ("entrypoint", "run_dir"),
    [
        ("instructray run /runs/a/config.yaml --out /runs/a", "/runs/a"),
        ("instructray run c.yaml --set stages=[sft] --out '/runs/with space'", "/runs/with space"),
        ("/opt/venv/bin/instructray run c.yaml --out /runs/b", "/runs/b"),
        ("instructray check c.yaml --out /runs/a", None),
        ("instructray run c.yaml", None),
        ("python train.py --out /runs/a", None),
        ("instructray run 'unterminated", None),
        ("instructray run --resume /runs/a", None),  # a resume: an attempt, not a job to adopt
    ],
)
def test_run_dir_of_entry_points(entrypoint: str, run_dir: str | None) -> None:
    expected = Path(run_dir) if run_dir else None
    assert run_dir_of(entrypoint, "instructray") == expected


def test_each_attempt_has_its_own_submission_id_and_entry_point() -> None:
    folder = Path("/runs/with space")
    assert [submission_id("ir-1", n) for n in (0, 1, 12)] == [
        "ir-1",
        "ir-1-resume1",
        "ir-1-resume12",
    ]
    first = entrypoint("instructray", folder, 0)
    assert first == "instructray run '/runs/with space/config.yaml' --out '/runs/with space'"
    assert run_dir_of(first, "instructray") == folder
    assert entrypoint("/opt/bin/instructray", folder, 2) == (
        "/opt/bin/instructray run --resume '/runs/with space'"
    )


def test_waiting_message_names_the_limit_and_the_place_in_line() -> None:
    places = [
        waiting_message(2, 2, n).rsplit(", ", 1)[1] for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 23)
    ]
    assert places == [
        "1st in line", "2nd in line", "3rd in line", "4th in line", "11th in line",
        "12th in line", "13th in line", "21st in line", "22nd in line", "23rd in line",
    ]  # fmt: skip
    assert waiting_message(1, 1, 1) == "waiting: 1 job running (max_running_jobs=1), 1st in line"


def test_max_running_jobs_from_the_environment() -> None:
    def limit(raw: str) -> int | None:
        return Settings.from_env({"INSTRUCTRAY_API_MAX_RUNNING_JOBS": raw}).max_running_jobs

    assert Settings.from_env({}).max_running_jobs is None
    assert (limit("3"), limit("0"), limit("")) == (3, 0, None)
    with pytest.raises(ValueError, match="max_running_jobs"):
        limit("-1")


# ---- path confinement (api/configs.py) -------------------------------------------------
@pytest.fixture
def roots(tmp_path: Path) -> tuple[list[Path], list[Path]]:
    """(data roots, shared-memory roots: one of the test's, and /dev/shm for the default
    rollout.shm_dir) and a file outside all of them: tmp_path/outside.jsonl."""
    for name in ("data", "shm"):
        (tmp_path / name).mkdir()
    (tmp_path / "outside.jsonl").write_text('{"prompt": "p"}\n')
    return [tmp_path / "data"], [tmp_path / "shm", Path("/dev/shm").resolve()]


def _confined(roots: tuple[list[Path], list[Path]], overrides: dict) -> JobConfig:
    return confine_paths(validate(apply_overrides({}, overrides)), *roots)


def _refused(roots: tuple[list[Path], list[Path]], overrides: dict) -> PathNotAllowed:
    with pytest.raises(PathNotAllowed) as info:
        _confined(roots, overrides)
    return info.value


@pytest.mark.parametrize(
    "name", sorted(f.name for f in path_fields(JobConfig) if f.name not in SERVICE_SET)
)
def test_every_path_field_is_confined(roots, tmp_path: Path, name: str) -> None:
    """Each field the config marks is confined, with no list of fields here to fall behind."""
    for value in ("/etc", str(tmp_path / "outside.jsonl"), "../outside.jsonl"):
        err = _refused(roots, {name: value})
        assert err.field == name and "outside the allowed roots" in str(err), value


def test_shm_dir_is_confined_to_the_shared_memory_roots(roots, tmp_path: Path) -> None:
    data, shm = roots
    assert _refused(roots, {"rollout.shm_dir": "/etc"}).field == "rollout.shm_dir"
    assert _refused(roots, {"rollout.shm_dir": str(data[0])}).field == "rollout.shm_dir"
    cfg = _confined(roots, {"rollout.shm_dir": f"{shm[0]}/sub/../ir"})
    assert cfg.rollout.shm_dir == str(shm[0] / "ir")  # resolved; need not exist yet
    (shm[0] / "link").symlink_to("/etc")
    assert _refused(roots, {"rollout.shm_dir": str(shm[0] / "link")}).field == "rollout.shm_dir"


def test_the_default_shm_dir_is_accepted_by_the_default_settings(roots) -> None:
    settings = Settings()
    assert settings.shm_roots == [Path("/dev/shm").resolve()]
    cfg = confine_paths(JobConfig(), roots[0], settings.shm_roots)
    assert cfg.rollout.shm_dir == str(Path("/dev/shm").resolve())
    cfg = _confined((roots[0], settings.shm_roots), {"rollout.shm_dir": "/dev/shm/instructray"})
    assert cfg.rollout.shm_dir == str(Path("/dev/shm").resolve() / "instructray")


def test_shm_roots_from_the_environment(tmp_path: Path) -> None:
    s = Settings.from_env({"INSTRUCTRAY_API_SHM_ROOTS": f"{tmp_path}/a,{tmp_path}/b"})
    assert s.shm_roots == [tmp_path / "a", tmp_path / "b"]
    assert Settings.from_env({"INSTRUCTRAY_API_SHM_ROOTS": ""}).shm_roots == []


def test_eval_prompts_are_an_input_that_is_confined_and_must_exist(roots, tmp_path: Path) -> None:
    data = roots[0][0]
    err = _refused(roots, {"data.eval_prompts": str(tmp_path / "outside.jsonl")})
    assert err.field == "data.eval_prompts"
    with pytest.raises(InvalidConfig) as info:
        _confined(roots, {"data.eval_prompts": "eval.jsonl"})
    assert [(e.field, e.message) for e in info.value.errors] == [
        ("data.eval_prompts", f"'eval.jsonl' does not exist ({data / 'eval.jsonl'})")
    ]
    (data / "eval.jsonl").write_text('{"prompt": "p"}\n')
    assert _confined(roots, {"data.eval_prompts": "eval.jsonl"}).data.eval_prompts == (
        data / "eval.jsonl"
    )


def test_a_symlink_in_a_data_root_leading_out_is_refused(roots, tmp_path: Path) -> None:
    data = roots[0][0]
    (data / "prompts.jsonl").symlink_to(tmp_path / "outside.jsonl")
    (data / "folder").symlink_to(tmp_path, target_is_directory=True)
    assert _refused(roots, {"data.prompts": "prompts.jsonl"}).field == "data.prompts"
    assert _refused(roots, {"data.sft": "folder/outside.jsonl"}).field == "data.sft"
    (data / "inside.jsonl").symlink_to(data / "real.jsonl")  # a link within the root is fine
    (data / "real.jsonl").write_text('{"prompt": "p"}\n')
    cfg = _confined(roots, {"data.prompts": "inside.jsonl"})
    assert cfg.data.prompts == data / "real.jsonl"


def test_model_paths_must_be_model_folders_unless_presets(roots) -> None:
    data = roots[0][0]
    (data / "ckpt").mkdir()
    cfg = _confined(roots, {"rm.labeler.fluency_model": "smollm2", "model.base": "tiny"})
    assert (cfg.model.base, cfg.rm.labeler.fluency_model) == ("tiny", "smollm2")
    with pytest.raises(InvalidConfig) as info:
        _confined(roots, {"model.sft_checkpoint": "ckpt", "rm.labeler.fluency_model": "lm"})
    assert [(e.field, e.message) for e in info.value.errors] == [
        ("model.sft_checkpoint", f"no model folder (with config.json) at {data / 'ckpt'}"),
        (
            "rm.labeler.fluency_model",
            f"not a preset (tiny, smollm2) and no model folder (with config.json) at {data / 'lm'}",
        ),
    ]
    (data / "ckpt" / "config.json").write_text("{}")
    assert _confined(roots, {"model.sft_checkpoint": "ckpt"}).model.sft_checkpoint == str(
        data / "ckpt"
    )


def test_run_dir_is_left_to_the_service(roots) -> None:
    """JobService.create puts the run in runs_root/<job id> whatever the request says."""
    assert _confined(roots, {"output.run_dir": "/etc"}).output.run_dir == Path("/etc")
    assert _refused(roots, {"output.cache_dir": "/etc"}).field == "output.cache_dir"


def test_a_preset_linking_out_of_the_configs_root_is_refused_and_not_listed(
    tmp_path: Path,
) -> None:
    root = tmp_path / "configs"
    root.mkdir()
    (root / "good.yaml").write_text("name: good\n")
    (tmp_path / "secret.yaml").write_text("name: secret\n")
    (root / "evil.yaml").symlink_to(tmp_path / "secret.yaml")
    (root / "dangling.yaml").symlink_to(tmp_path / "missing.yaml")
    (root / "alias.yaml").symlink_to(root / "good.yaml")  # a link within the folder is fine
    assert list_presets(root) == ["alias", "good"]
    for name in ("evil", "dangling"):
        with pytest.raises(PathNotAllowed) as info:
            load_preset(root, name)
        assert info.value.field == "preset"
        assert str(info.value) == (
            f"preset: {name!r} is a link leading outside the presets folder ({root})"
        )
    assert load_preset(root, "alias") == {"name": "good"}
    with pytest.raises(InvalidConfig, match="no preset 'nope' \\(available: alias, good\\)"):
        load_preset(root, "nope")
