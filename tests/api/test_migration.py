"""A jobs database made by an older version (no `attempt` column) is migrated in place at
start-up, on SQLite and PostgreSQL: its rows are kept, the schema ends as the models declare it,
and services starting at once on it do not trip over each other's ALTER TABLE."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
from sqlalchemy import JSON, Boolean, Column, DateTime, Index, MetaData, String, Table, Text

from instructray.api.app import create_app
from instructray.api.db import Database
from instructray.api.settings import Settings
from tests.api.conftest import AUTH, both_backends, db_rows
from tests.api.fake_ray import FakeRayJobs
from tests.api.helpers import serve_in_thread, wait_for
from tests.api.test_database import in_threads, model_schema, schema_of


def old_jobs_table() -> Table:
    """The jobs table as the versions before `attempt` made it, written out here by hand."""
    return Table(
        "jobs",
        MetaData(),
        Column("id", String(64), primary_key=True),
        Column("name", String(200), nullable=False),
        Column("status", String(16), nullable=False),
        Column("source", String(16), nullable=False),
        Column("config", JSON, nullable=False),
        Column("run_dir", String(1024), nullable=False),
        Column("message", Text),
        Column("error", Text),
        Column("cancel_requested", Boolean, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("updated_at", DateTime(timezone=True), nullable=False),
        Column("started_at", DateTime(timezone=True)),
        Column("finished_at", DateTime(timezone=True)),
        Index("ix_jobs_status_created", "status", "created_at"),
    )


@both_backends
def test_a_database_of_the_old_schema_is_migrated_in_place_and_keeps_its_rows(
    settings: Settings, fake_ray: FakeRayJobs
) -> None:
    run_dir = settings.runs_root / "ir-old"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("name: old\n")
    t = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    old, table = Database(settings.db_url), old_jobs_table()
    table.metadata.create_all(old.engine)
    row = dict(
        source="api", config={"stages": ["sft"]}, message=None, cancel_requested=False,
        created_at=t, updated_at=t, started_at=t, finished_at=t,
    )  # fmt: skip
    with old.engine.begin() as conn:
        conn.execute(
            table.insert(),
            [
                {**row, "id": "ir-old", "name": "old", "status": "failed", "run_dir": str(run_dir),
                 "error": "node lost"},
                {**row, "id": "ir-done", "name": "done", "status": "succeeded", "run_dir": "/r",
                 "error": None},
            ],
        )  # fmt: skip
    old.dispose()
    assert "attempt" not in schema_of(settings.db_url)["jobs"]["columns"]

    dbs = [Database(settings.db_url) for _ in range(3)]  # three services starting at once
    assert in_threads(3, lambda i: dbs[i].create_all()) == []
    dbs[0].create_all()  # and once more: nothing left to do
    for db in dbs:
        db.dispose()
    assert schema_of(settings.db_url) == model_schema()
    with (
        serve_in_thread(create_app(settings, ray=fake_ray)) as url,
        httpx.Client(base_url=url, timeout=15) as c,
    ):
        kept = {j["id"]: j for j in c.get("/jobs").json()["items"]}
        assert {k: (j["name"], j["status"], j["error"], j["attempt"]) for k, j in kept.items()} == {
            "ir-old": ("old", "failed", "node lost", 0),
            "ir-done": ("done", "succeeded", None, 0),
        }
        assert kept["ir-old"]["created_at"] == "2024-05-01T12:00:00Z"
        assert c.post("/jobs/ir-old/resume", headers=AUTH).json()["attempt"] == 1
        wait_for(lambda: fake_ray.submissions, 10, "the resume's submission", 0.05)
    assert [s[:2] for s in fake_ray.submissions] == [
        ("ir-old-resume1", f"instructray run --resume {run_dir}")
    ]
    assert len(db_rows(settings)) == 2
