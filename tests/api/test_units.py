"""Pieces of the job service without a server: settings, the metrics reader, entry points."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from instructray.api.db import Database, JobRecord
from instructray.api.runfiles import MetricsReader
from instructray.api.settings import Settings
from instructray.api.submission import entrypoint, run_dir_of, submission_id, waiting_message


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
