"""Fixtures of the job-service tests: a real database (an SQLite file, or a fresh database of a
real PostgreSQL server for tests parametrized with `both_backends`) and a real uvicorn on
127.0.0.1 for every test; for the e2e tests also a real local Ray cluster (one for the package)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from instructray.api.app import create_app
from instructray.api.settings import Settings
from tests.api.fake_ray import FakeRayJobs
from tests.api.helpers import (  # noqa: F401  (AUTH, TOKEN: imported from here by the tests)
    AUTH,
    REPO,
    TOKEN,
    RayCluster,
    isolated_torch_extensions,
    serve_in_thread,
)
from tests.api.postgres import postgres_server, postgres_url  # noqa: F401  (fixtures)

BACKENDS = ["sqlite", "postgresql"]
# On a test or module: run it against both databases (it overrides the `backend` fixture).
both_backends = pytest.mark.parametrize("backend", BACKENDS)


@pytest.fixture
def backend() -> str:
    """The database behind `settings`: SQLite unless the test is parametrized over BACKENDS."""
    return "sqlite"


@pytest.fixture
def database_url(request: pytest.FixtureRequest, backend: str) -> str | None:
    if backend == "sqlite":
        return None  # the service's default: an SQLite file under runs_root
    assert backend == "postgresql", backend
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def settings(tmp_path: Path, database_url: str | None) -> Settings:
    (tmp_path / "data").mkdir()
    return Settings(
        runs_root=tmp_path / "runs",
        database_url=database_url,
        configs_root=REPO / "configs",
        data_roots=[tmp_path / "data"],
        token=TOKEN,
        poll_interval_s=0.05,
        ray_address="http://fake-ray:8265",
    )


@pytest.fixture
def fake_ray() -> FakeRayJobs:
    return FakeRayJobs()


@pytest.fixture
def client(settings: Settings, fake_ray: FakeRayJobs) -> Iterator[httpx.Client]:
    """The API on a real uvicorn (in a thread), against the in-memory Ray stand-in."""
    with (
        serve_in_thread(create_app(settings, ray=fake_ray)) as url,
        httpx.Client(base_url=url, timeout=15) as http,
    ):
        yield http


def db_rows(settings: Settings) -> list[tuple]:
    """Every job row, read straight from the database (not through the service)."""
    engine = create_engine(settings.db_url)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text("SELECT * FROM jobs ORDER BY id"))]
    finally:
        engine.dispose()


@pytest.fixture(scope="package")
def ray_jobs_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    """A real local Ray (dashboard + Jobs API, token auth on) for the e2e tests of this
    package."""
    base = tmp_path_factory.mktemp("ray")
    # Ray's Unix socket paths (temp dir + session name + socket) must stay under 107 bytes.
    temp = base if len(str(base)) <= 40 else Path(tempfile.mkdtemp(prefix="irray-"))
    runs = tmp_path_factory.mktemp("e2e-runs")
    env = isolated_torch_extensions(tmp_path_factory.mktemp("torch-extensions"))
    # node_a: the head's own custom resource, for roles pinned to it (test_e2e_ray's two nodes).
    cluster = RayCluster(temp, num_cpus=4, runs_root=runs, env=env, resources={"node_a": 100})
    try:
        yield cluster.start()
    finally:
        cluster.stop()
        if temp != base:
            shutil.rmtree(temp, ignore_errors=True)
