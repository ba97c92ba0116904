"""Settings of the job service, read from ``INSTRUCTRAY_API_*`` environment variables.

Plain pydantic (no extra dependency): `Settings.from_env()` maps ``INSTRUCTRAY_API_<FIELD>`` onto
each field; list fields take a comma-separated value (``INSTRUCTRAY_API_DATA_ROOTS=/data,/mnt``).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

ENV_PREFIX = "INSTRUCTRAY_API_"


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    runs_root: Path = Field(Path("runs"), description="Shared folder holding one RUN_DIR per job.")
    database_url: str | None = Field(
        None, description="Any SQLAlchemy URL; default an SQLite file under runs_root/.api/."
    )
    configs_root: Path = Field(
        Path("configs"),
        description="Presets: every <name>.yaml here; config_path is confined to it.",
    )
    data_roots: list[Path] = Field(
        default_factory=list,
        description="Where paths inside a config may point (and the runs_root); relative paths "
        "resolve against the first.",
    )
    shm_roots: list[Path] = Field(
        default_factory=lambda: [Path("/dev/shm")],
        description="Where rollout.shm_dir may point: the folder the policy's rank 0 writes "
        "each weight-sync file into (weight_sync=shm), on every node. Empty refuses every job "
        "(rollout.shm_dir always has a value).",
    )
    ray_address: str = Field(
        "http://127.0.0.1:8265", description="Ray dashboard (Jobs API) address of the cluster."
    )
    token: str | None = Field(None, description="Bearer token for mutating endpoints.")
    token_file: Path | None = Field(None, description="File holding the token (Docker secret).")
    max_body_bytes: Annotated[int, Field(gt=0)] = 1 << 20
    job_command: str = Field("instructray", description="Executable a Ray job runs.")
    job_env: dict[str, str] = Field(
        default_factory=dict, description="Extra environment variables of every job's driver."
    )
    poll_interval_s: Annotated[float, Field(gt=0)] = 1.0
    max_running_jobs: Annotated[int, Field(ge=0)] | None = Field(
        None,
        description="Jobs on Ray (pending or running) at once; the rest stay queued, oldest "
        "first. None or 0: no limit.",
    )
    threads: Annotated[int, Field(ge=1, le=200)] = Field(
        8, description="Worker threads for request handlers (anyio's default is 40)."
    )
    log_level: str = "info"

    @model_validator(mode="after")
    def _absolute_paths(self) -> Settings:
        # Relative paths are pinned once, so a later chdir (or a Ray job's cwd) cannot move them.
        self.runs_root = self.runs_root.expanduser().resolve()
        self.configs_root = self.configs_root.expanduser().resolve()
        self.data_roots = [p.expanduser().resolve() for p in self.data_roots]
        self.shm_roots = [p.expanduser().resolve() for p in self.shm_roots]
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is None:
                continue
            if name == "max_running_jobs" and not raw.strip():
                values[name] = None
            elif name in ("data_roots", "shm_roots"):
                values[name] = [p for p in raw.split(",") if p.strip()]
            elif name == "job_env":
                values[name] = dict(kv.split("=", 1) for kv in raw.split(",") if "=" in kv)
            else:
                values[name] = raw
        values.update(overrides)
        return cls.model_validate(values)

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.runs_root / '.api' / 'jobs.sqlite3'}"

    @property
    def allowed_data_roots(self) -> list[Path]:
        return [*self.data_roots, self.runs_root]

    def resolve_token(self) -> tuple[str, bool]:
        """The bearer token and whether it was generated here (neither env nor file set one)."""
        if self.token:
            return self.token, False
        if self.token_file is not None:
            token = self.token_file.read_text().strip()
            if not token:
                raise ValueError(f"token file {self.token_file} is empty")
            return token, False
        return secrets.token_urlsafe(24), True
