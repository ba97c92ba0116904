"""Job records in a real database through SQLAlchemy 2: an SQLite file by default, any URL
(PostgreSQL, ...) by setting."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Index,
    Integer,
    String,
    Text,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.engine import Dialect, Engine, make_url
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.schema import CreateColumn
from sqlalchemy.types import TypeDecorator

QUEUED, PENDING, RUNNING = "queued", "pending", "running"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
ACTIVE = (QUEUED, PENDING, RUNNING)
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)
STATUSES = ACTIVE + TERMINAL
NAME_LENGTH = 200


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """A stored timestamp in UTC. SQLite hands them back naive (every one here is written in
    UTC); PostgreSQL hands them back in the session's time zone."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


class CleanString(TypeDecorator[str]):
    """A string without NUL characters (written as U+FFFD): PostgreSQL refuses them in text
    columns, SQLite keeps them, and one in a name or a Ray message would fail every write of its
    row there."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else value.replace("\x00", "\ufffd")


class CleanText(CleanString):
    impl = Text


class Base(DeclarativeBase):
    pass


class JobRecord(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_status_created", "status", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(CleanString(NAME_LENGTH))
    status: Mapped[str] = mapped_column(String(16), default=QUEUED)
    # Where the job came from: "api" (POST /jobs) or "ray" (found on the cluster, `ray job submit`).
    source: Mapped[str] = mapped_column(String(16), default="api")
    # Deferred: listings and the reconciler never need it (JobService.get loads it).
    config: Mapped[dict[str, Any]] = mapped_column(JSON, deferred=True)
    run_dir: Mapped[str] = mapped_column(String(1024))
    message: Mapped[str | None] = mapped_column(CleanText, default=None)
    error: Mapped[str | None] = mapped_column(CleanText, default=None)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # 0 for the first run on Ray, N for the Nth resume (each runs under its own submission id).
    # The server default lets the migration add it to a table that already has rows.
    attempt: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets status reads proceed while the reconciler writes; busy_timeout queues writers.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


class Database:
    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if parsed.get_backend_name() == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        self.url = url
        self.engine: Engine = create_engine(url, **kwargs)
        if parsed.get_backend_name() == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def create_all(self) -> None:
        try:
            Base.metadata.create_all(self.engine)
        except (OperationalError, ProgrammingError, IntegrityError):
            # Another service, starting at the same time on the same database, created a table
            # between our check and our CREATE; checking again finds it.
            Base.metadata.create_all(self.engine)
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        """The migration of a database made by an older version: ALTER TABLE ... ADD COLUMN for
        each column the models have and its table lacks (every such column has a server
        default). Harmless to repeat, and to race with another service doing the same."""
        for table in Base.metadata.sorted_tables:
            present = self._columns(table.name)
            for column in table.columns:
                if column.name in present:
                    continue
                name = self.engine.dialect.identifier_preparer.format_table(table)
                ddl = CreateColumn(column).compile(dialect=self.engine.dialect)
                try:
                    # One transaction per column: a failed statement aborts PostgreSQL's.
                    with self.engine.begin() as conn:
                        conn.execute(text(f"ALTER TABLE {name} ADD COLUMN {ddl}"))
                except (OperationalError, ProgrammingError):
                    if column.name not in self._columns(table.name):
                        raise  # not another service's ALTER that got there first

    def _columns(self, table: str) -> set[str]:
        with self.engine.connect() as conn:
            return {c["name"] for c in inspect(conn).get_columns(table)}

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: committed on success, rolled back on any error."""
        with self._sessions() as session, session.begin():
            yield session

    def dispose(self) -> None:
        self.engine.dispose()
