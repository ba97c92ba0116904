"""A real PostgreSQL server for the API tests: Debian's `postgresql` package, one throw-away
cluster per test session on 127.0.0.1 (a free port, its Unix socket in its own temp dir), and a
fresh database per test.

Set INSTRUCTRAY_TEST_NO_POSTGRES=1 to skip the PostgreSQL cases; otherwise a server that cannot
be installed or started fails them, so a missing database is never mistaken for a pass.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.helpers import free_port

SKIP_ENV = "INSTRUCTRAY_TEST_NO_POSTGRES"
PG_USER = "postgres"  # the unprivileged system user of Debian's package; also the superuser role
# A zone far from UTC, so a timestamp that is handed back in the session's zone shows up.
SERVER_TIMEZONE = "Asia/Kolkata"
_HINT = f"(`make postgres` installs it; {SKIP_ENV}=1 skips these cases)"


class PostgresUnavailable(RuntimeError):
    pass


def _bin_dir() -> Path | None:
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    return found[-1].parent if found else None


def _run(cmd: list[str], what: str, timeout: float = 120) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise PostgresUnavailable(f"{what}: {err}") from err
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-2000:]
        raise PostgresUnavailable(f"{what} failed (exit {done.returncode}):\n{tail}")
    return done.stdout


def install_postgres() -> Path:
    """Debian's PostgreSQL binaries, installed with apt-get when they are missing."""
    bin_dir = _bin_dir()
    if bin_dir is not None:
        return bin_dir
    if os.geteuid() != 0:
        raise PostgresUnavailable("PostgreSQL is not installed and apt-get needs root")
    env = ["env", "DEBIAN_FRONTEND=noninteractive"]
    _run([*env, "apt-get", "update", "-qq"], "apt-get update", timeout=600)
    _run([*env, "apt-get", "install", "-y", "-qq", "postgresql"], "apt-get install", timeout=900)
    bin_dir = _bin_dir()
    if bin_dir is None:
        raise PostgresUnavailable("apt-get installed postgresql but no initdb under /usr/lib")
    return bin_dir


class PostgresServer:
    """One cluster in a temp dir, run as the `postgres` user (the server refuses root)."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="irpg-"))  # short: the socket path is capped
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = 0
        self.version: int | None = None
        self.as_root = os.geteuid() == 0

    def _cmd(self, tool: str, *args: str) -> list[str]:
        cmd = [str(self.bin_dir / tool), *args]
        return ["runuser", "-u", PG_USER, "--", *cmd] if self.as_root else cmd

    def start(self, attempts: int = 3) -> PostgresServer:
        if self.as_root:
            try:
                user = pwd.getpwnam(PG_USER)
            except KeyError as err:
                raise PostgresUnavailable(f"no system user {PG_USER!r} to run it as") from err
            os.chown(self.root, user.pw_uid, user.pw_gid)
        init = ["-D", str(self.data), "-U", PG_USER, "--auth=trust", "-E", "UTF8", "--locale=C"]
        _run(self._cmd("initdb", *init), "initdb")
        failure: PostgresUnavailable | None = None
        for _ in range(attempts):  # a free port can be taken before the server binds it
            self.port = free_port()
            try:
                _run(self._cmd("pg_ctl", "start", "-w", "-t", "60", *self._ctl_args()), "pg_ctl")
                return self
            except PostgresUnavailable as err:
                failure = err
        raise PostgresUnavailable(f"PostgreSQL did not start: {failure}\n{self.log_tail()}")

    def _ctl_args(self) -> list[str]:
        # A test cluster: no fsync (nothing here must survive a crash), loopback only.
        opts = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} "
            f"-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            f"-c max_connections=200 -c TimeZone={SERVER_TIMEZONE}"
        )
        return ["-D", str(self.data), "-l", str(self.log), "-o", opts]

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return "(no server log)"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{PG_USER}@127.0.0.1:{self.port}/{database}"

    def _admin(self, sql: str) -> int:
        """Run one statement in the `postgres` database; the server's version number."""
        import psycopg  # only where PostgreSQL is used: the SQLite cases run without it

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={PG_USER}") as conn:
            conn.autocommit = True
            conn.execute(sql)
            return conn.info.server_version

    def create_database(self) -> str:
        """A new, empty database; its SQLAlchemy URL."""
        name = f"t_{secrets.token_hex(6)}"
        if self.version is None:
            self.version = self._admin("SELECT 1")
        # From 15 on, FILE_COPY is the fast way without fsync (WAL_LOG writes the template twice).
        strategy = " STRATEGY FILE_COPY" if self.version >= 150000 else ""
        self._admin(f'CREATE DATABASE "{name}"{strategy}')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        if self.data.exists():
            subprocess.run(
                self._cmd("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w"),
                capture_output=True,
                timeout=60,
                check=False,
            )
        shutil.rmtree(self.root, ignore_errors=True)


def start_server() -> PostgresServer:
    if importlib.util.find_spec("psycopg") is None:
        raise PostgresUnavailable("the driver is missing: pip install -e '.[dev]' (psycopg)")
    server = PostgresServer(install_postgres())
    try:
        return server.start()
    except BaseException:
        server.stop()
        raise


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"PostgreSQL cases skipped ({SKIP_ENV}=1)")
    failure: str | None = None
    try:
        server = start_server()
    except PostgresUnavailable as err:
        failure = str(err)
    if failure is not None:
        pytest.fail(f"cannot run the PostgreSQL tests: {failure}\n{_HINT}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh database of the session's server, dropped after the test."""
    url = postgres_server.create_database()
    try:
        yield url
    finally:
        postgres_server.drop_database(url)
