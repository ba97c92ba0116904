"""The jobs database on SQLite and on a real PostgreSQL server: create_all makes the same schema on
both and is harmless to repeat (also by two services starting at once); concurrent writers, in
one service or in two sharing the database, lose no job record; a cancel racing the reconciler
leaves every row consistent with Ray."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, inspect, select
from sqlalchemy.engine import Engine

from instructray.api.app import create_app
from instructray.api.db import Base, Database, JobRecord
from instructray.api.jobs import JobService
from instructray.api.schemas import JobCreate
from instructray.api.settings import Settings
from tests.api.conftest import AUTH, both_backends, db_rows
from tests.api.fake_ray import FakeRayJobs
from tests.api.helpers import TINY_SFT, serve_in_thread, submit, wait_status

Schema = dict[str, dict[str, Any]]


# ---- helpers ---------------------------------------------------------------------------
def reflected_schema(engine: Engine) -> Schema:
    """Tables → columns (nullable, Python type, length), indexes and primary key, as the
    database itself reports them."""
    insp = inspect(engine)
    schema: Schema = {}
    for table in sorted(insp.get_table_names()):
        columns = {
            c["name"]: (c["nullable"], c["type"].python_type, getattr(c["type"], "length", None))
            for c in insp.get_columns(table)
        }
        indexes = {i["name"]: tuple(i["column_names"]) for i in insp.get_indexes(table)}
        pk = tuple(insp.get_pk_constraint(table)["constrained_columns"])
        schema[table] = {"columns": columns, "indexes": indexes, "pk": pk}
    return schema


def model_schema() -> Schema:
    """What the SQLAlchemy models declare, in the shape of `reflected_schema`."""
    schema: Schema = {}
    for table in Base.metadata.sorted_tables:
        types = {c.name: getattr(c.type, "impl_instance", c.type) for c in table.columns}
        columns = {
            c.name: (c.nullable, types[c.name].python_type, getattr(types[c.name], "length", None))
            for c in table.columns
        }
        indexes = {i.name: tuple(c.name for c in i.columns) for i in table.indexes}
        pk = tuple(c.name for c in table.primary_key.columns)
        schema[table.name] = {"columns": columns, "indexes": indexes, "pk": pk}
    return schema


def schema_of(url: str) -> Schema:
    engine = create_engine(url)
    try:
        return reflected_schema(engine)
    finally:
        engine.dispose()


def in_threads(n: int, work: Callable[[int], None]) -> list[BaseException]:
    """Run work(0..n-1) in n threads released together; the exceptions they raised."""
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            work(i)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a writer thread hung"
    return errors


class AtomicRay(FakeRayJobs):
    """The stand-in with stop() and finish() atomic, as Ray's own state changes are: a job Ray
    finished stays finished, one it stopped stays stopped."""

    def stop(self, submission_id: str) -> None:
        with self._lock:
            super().stop(submission_id)

    def finish(self, submission_id: str) -> None:
        with self._lock:
            if self.jobs[submission_id].status in ("PENDING", "RUNNING"):
                self.set(submission_id, "SUCCEEDED", "Job finished successfully.")


@pytest.fixture
def fake_ray() -> AtomicRay:
    return AtomicRay()


@pytest.fixture
def services(settings: Settings) -> Iterator[list[JobService]]:
    """Two job services (own engine and pool each, as two processes would have) on one database,
    without reconcilers: they only write records."""
    dbs = [Database(settings.db_url) for _ in range(2)]
    for db in dbs:
        db.create_all()
    yield [JobService(settings, db, FakeRayJobs()) for db in dbs]
    for db in dbs:
        db.dispose()


# ---- schema ----------------------------------------------------------------------------
def test_create_all_makes_the_same_schema_on_sqlite_and_postgresql(
    tmp_path: Path, postgres_url: str
) -> None:
    sqlite_url = f"sqlite:///{tmp_path}/jobs.sqlite3"
    for url in (sqlite_url, postgres_url):
        db = Database(url)
        db.create_all()
        db.dispose()
    on_sqlite, on_postgres = schema_of(sqlite_url), schema_of(postgres_url)
    assert on_sqlite == on_postgres == model_schema()
    jobs = on_postgres["jobs"]
    assert jobs["pk"] == ("id",)
    assert jobs["indexes"] == {"ix_jobs_status_created": ("status", "created_at")}
    assert [name for name, col in jobs["columns"].items() if col[0]] == [
        "message",
        "error",
        "started_at",
        "finished_at",
    ]


@both_backends
def test_create_all_is_idempotent_and_keeps_the_rows(settings: Settings) -> None:
    first = Database(settings.db_url)
    first.create_all()
    first.create_all()
    with first.session() as s:
        s.add(JobRecord(id="j1", name="kept", config={"a": [1, 2]}, run_dir="/r"))
    first.dispose()
    again = Database(settings.db_url)
    again.create_all()
    with again.session() as s:
        rec = s.get(JobRecord, "j1")
        assert (rec.name, rec.config, rec.status) == ("kept", {"a": [1, 2]}, "queued")
    again.dispose()
    assert schema_of(settings.db_url) == model_schema()
    assert len(db_rows(settings)) == 1


@both_backends
def test_services_starting_at_once_on_an_empty_database(
    settings: Settings, fake_ray: FakeRayJobs
) -> None:
    dbs = [Database(settings.db_url) for _ in range(4)]
    assert in_threads(4, lambda i: dbs[i].create_all()) == []  # what each one's start does
    for db in dbs:
        db.dispose()
    assert schema_of(settings.db_url) == model_schema()
    with ExitStack() as stack:
        urls = [
            stack.enter_context(serve_in_thread(create_app(settings, ray=fake_ray)))
            for _ in range(2)
        ]
        clients = [stack.enter_context(httpx.Client(base_url=u, timeout=15)) for u in urls]
        job_id = submit(clients[0])
        assert clients[1].get(f"/jobs/{job_id}").json()["name"] == TINY_SFT["name"]
    assert len(db_rows(settings)) == 1


# ---- concurrent writers ----------------------------------------------------------------
@both_backends
def test_concurrent_creates_in_two_services_lose_no_record(
    services: list[JobService], settings: Settings
) -> None:
    threads, per_thread = 6, 15
    expected = {f"w{t}-{i}" for t in range(threads) for i in range(per_thread)}

    def write(t: int) -> None:
        service = services[t % 2]
        for i in range(per_thread):
            service.create(JobCreate(name=f"w{t}-{i}", preset="tiny"))

    assert in_threads(threads, write) == []
    with services[0].db.session() as s:
        rows = s.execute(select(JobRecord.id, JobRecord.name, JobRecord.status)).all()
    assert len(rows) == threads * per_thread == 90
    assert len({r.id for r in rows}) == 90
    assert {r.name for r in rows} == expected
    assert {r.status for r in rows} == {"queued"}
    assert services[1].counts()["queued"] == 90
    assert len(db_rows(settings)) == 90
    run_dirs = sorted(p.name for p in settings.runs_root.glob("ir-*"))
    assert run_dirs == sorted(r.id for r in rows)


@both_backends
def test_concurrent_posts_to_two_services_on_one_database(
    settings: Settings, fake_ray: FakeRayJobs
) -> None:
    threads, per_thread = 4, 10
    with ExitStack() as stack:
        urls = [
            stack.enter_context(serve_in_thread(create_app(settings, ray=fake_ray)))
            for _ in range(2)
        ]
        ids: list[str] = []

        def post(t: int) -> None:
            with httpx.Client(base_url=urls[t % 2], timeout=30) as http:
                for i in range(per_thread):
                    ids.append(submit(http, {**TINY_SFT, "name": f"h{t}-{i}"}))

        assert in_threads(threads, post) == []
        with httpx.Client(base_url=urls[1], timeout=30) as http:
            for job_id in ids:
                wait_status(http, job_id, "pending", timeout=30)
            listing = http.get("/jobs", params={"limit": 100}).json()
    assert len(ids) == len(set(ids)) == 40
    assert listing["total"] == 40
    assert {j["name"] for j in listing["items"]} == {
        f"h{t}-{i}" for t in range(threads) for i in range(per_thread)
    }
    assert sorted(fake_ray.jobs) == sorted(ids)  # each submitted to Ray, once by id
    assert len(fake_ray.submissions) == 40
    assert len(db_rows(settings)) == 40


@both_backends
def test_cancel_racing_the_reconciler_leaves_rows_consistent_with_ray(
    client: httpx.Client, fake_ray: AtomicRay, settings: Settings
) -> None:
    jobs = [submit(client, {**TINY_SFT, "name": f"race-{i}"}) for i in range(16)]
    for job_id in jobs:
        wait_status(client, job_id, "pending")
        fake_ray.set(job_id, "RUNNING")
    for job_id in jobs:
        wait_status(client, job_id, "running")
    answers: dict[str, int] = {}

    def race(t: int) -> None:
        if t == 0:  # Ray finishes the even jobs while every job is being cancelled
            for job_id in jobs[::2]:
                fake_ray.finish(job_id)
        else:
            for job_id in jobs:
                answers[job_id] = client.post(f"/jobs/{job_id}/cancel", headers=AUTH).status_code

    assert in_threads(2, race) == []
    done = {j: wait_status(client, j, "succeeded", "cancelled", timeout=30) for j in jobs}
    from_ray = {"SUCCEEDED": "succeeded", "STOPPED": "cancelled"}
    assert {j: d["status"] for j, d in done.items()} == {
        j: from_ray[fake_ray.jobs[j].status] for j in jobs
    }
    assert all(done[j]["status"] == "cancelled" for j in jobs[1::2])
    assert all(answers[j] == 202 for j in jobs[1::2])
    for job_id, answer in answers.items():
        assert answer in (202, 409)
        assert done[job_id]["cancel_requested"] is (answer == 202)
    cancelled = {j for j in jobs if done[j]["status"] == "cancelled"}
    assert cancelled <= set(fake_ray.stops) <= {j for j in jobs if answers[j] == 202}
    for job_id, job in done.items():
        assert job["name"] == f"race-{jobs.index(job_id)}"
        assert job["config"]["stages"] == ["sft"]
        assert job["started_at"] and job["finished_at"]
    assert len(db_rows(settings)) == 16


# ---- what PostgreSQL would hand back differently ----------------------------------------
@both_backends
def test_timestamps_are_utc_whatever_the_database_session_zone(
    client: httpx.Client,
) -> None:
    job_id = submit(client)
    wait_status(client, job_id, "pending")
    job = client.get(f"/jobs/{job_id}").json()
    listed = client.get("/jobs").json()["items"][0]
    for stamp in (job["created_at"], job["updated_at"], listed["created_at"]):
        assert stamp.endswith("Z"), stamp  # UTC, as on SQLite, not the server's zone
        age = datetime.now(UTC) - datetime.fromisoformat(stamp)
        assert timedelta(0) <= age < timedelta(minutes=1)


@both_backends
def test_a_config_name_longer_than_the_column_is_cut_to_fit(client: httpx.Client) -> None:
    long_name = "n" * 300
    r = client.post(
        "/jobs", json={"preset": "tiny", "overrides": {"name": long_name}}, headers=AUTH
    )
    assert r.status_code == 202, r.text
    job = client.get(f"/jobs/{r.json()['id']}").json()
    assert job["name"] == long_name[:200]
    assert job["config"]["name"] == long_name


@both_backends
def test_nul_characters_in_a_name_or_a_ray_message_are_stored_on_both(
    client: httpx.Client, fake_ray: FakeRayJobs
) -> None:
    job_id = submit(client, {**TINY_SFT, "name": "a\x00b"})
    assert client.get(f"/jobs/{job_id}").json()["name"] == "a\ufffdb"
    wait_status(client, job_id, "pending")
    fake_ray.set(job_id, "FAILED", "boom\x00")
    failed = wait_status(client, job_id, "failed")
    assert (failed["message"], failed["error"]) == ("boom\ufffd", "boom\ufffd")
    later = submit(client, {**TINY_SFT, "overrides": {"name": "c\x00d"}})
    assert wait_status(client, later, "pending")["config"]["name"] == "c\x00d"  # JSON keeps it
