"""Jobs: records in the database, runs on Ray through the Jobs API, progress from RUN_DIR.

The request path only writes records; one reconciler thread (reconciler.py) does everything that
talks to Ray (submit queued jobs, stop cancelled ones, follow states), so a restarted service
picks up where the last one left off, and the submission id (the job id, plus `-resumeN` for
the Nth resume) keeps an attempt from running twice.
"""

from __future__ import annotations

import copy
import secrets
import shutil
from datetime import UTC, datetime
from pathlib import Path

import yaml
from sqlalchemy import func, select
from sqlalchemy.orm import undefer

from instructray.api.configs import (
    apply_overrides,
    confine_paths,
    list_presets,
    load_config_path,
    load_preset,
    parse_yaml_mapping,
    validate,
)
from instructray.api.db import (
    ACTIVE,
    NAME_LENGTH,
    QUEUED,
    STATUSES,
    SUCCEEDED,
    TERMINAL,
    Database,
    JobRecord,
)
from instructray.api.ray_jobs import RayJobs
from instructray.api.reconciler import Reconciler
from instructray.api.runfiles import MetricsReader, read_summary
from instructray.api.schemas import JobCreate
from instructray.api.settings import Settings
from instructray.api.submission import submission_id
from instructray.config import JobConfig

SafeDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml when PyYAML has it
RESUME_MESSAGE = "queued to resume from its run folder"


class JobNotFound(LookupError):
    pass


class JobConflict(RuntimeError):
    pass


def new_job_id() -> str:
    return f"ir-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def _check_resumable(rec: JobRecord) -> None:
    if rec.status in ACTIVE:
        raise JobConflict(
            f"job {rec.id!r} is {rec.status}; only a failed or cancelled job can be resumed"
        )
    if rec.status == SUCCEEDED:
        raise JobConflict(f"job {rec.id!r} has already succeeded; there is nothing to resume")


def _check_run_folder(rec: JobRecord) -> None:
    """What `instructray run --resume` would refuse, refused here with the reason."""
    run_dir = Path(rec.run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise JobConflict(f"job {rec.id!r} cannot be resumed: {run_dir}/config.yaml is missing")
    if (read_summary(run_dir) or {}).get("status") == SUCCEEDED:
        raise JobConflict(
            f"job {rec.id!r} cannot be resumed: its run folder's summary.json says succeeded"
        )


class JobService:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        ray: RayJobs,
        reader: MetricsReader | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.ray = ray
        self.reader = reader or MetricsReader()
        self.reconciler = Reconciler(settings, db, ray)

    # ---- configs -------------------------------------------------------------------------
    def presets(self) -> list[str]:
        return list_presets(self.settings.configs_root)

    def resolve(self, req: JobCreate) -> JobConfig:
        """The validated config of a request; InvalidConfig (422) or PathNotAllowed (403)."""
        s = self.settings
        if req.config is not None:
            if isinstance(req.config, str):
                data = parse_yaml_mapping(req.config, "config")
            else:
                data = copy.deepcopy(req.config)
        elif req.preset is not None:
            data = load_preset(s.configs_root, req.preset)
        else:
            data = load_config_path(str(req.config_path), [s.configs_root, *s.allowed_data_roots])
        overrides = req.overrides or {}
        if isinstance(overrides, str):
            overrides = parse_yaml_mapping(overrides, "overrides")
        cfg = validate(apply_overrides(data, overrides))
        return confine_paths(cfg, s.allowed_data_roots, s.shm_roots)

    # ---- records -------------------------------------------------------------------------
    def create(self, req: JobCreate) -> JobRecord:
        cfg = self.resolve(req)
        job_id = new_job_id()
        run_dir = self.settings.runs_root / job_id
        cfg.output.run_dir = run_dir
        # The driver joins the cluster Ray Jobs started it on (RAY_ADDRESS), never another.
        cfg.ray.address = "auto"
        cfg.ray.num_cpus = None
        config = cfg.model_dump(mode="json")
        # The file first, so the database's write lock is held only for the insert itself.
        run_dir.mkdir(parents=True)
        text = yaml.dump(config, Dumper=SafeDumper, sort_keys=False)
        (run_dir / "config.yaml").write_text(text)
        rec = JobRecord(
            id=job_id,
            # The config's own name has no length limit; the column has (PostgreSQL enforces it).
            name=(req.name or cfg.name)[:NAME_LENGTH],
            status=QUEUED,
            config=config,
            run_dir=str(run_dir),
            message="queued for submission to Ray",
            attempt=0,
        )
        try:
            with self.db.session() as s:
                s.add(rec)
        except BaseException:
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        self.reconciler.wake()
        return rec

    def get(self, job_id: str) -> JobRecord:
        with self.db.session() as s:
            rec = s.get(JobRecord, job_id, options=[undefer(JobRecord.config)])
        if rec is None:
            raise JobNotFound(f"no job {job_id!r}")
        return rec

    def list(
        self, statuses: list[str] | None, limit: int, offset: int
    ) -> tuple[list[JobRecord], int]:
        where = [JobRecord.status.in_(statuses)] if statuses else []
        with self.db.session() as s:
            total = s.scalar(select(func.count()).select_from(JobRecord).where(*where)) or 0
            rows = s.scalars(
                select(JobRecord)
                .where(*where)
                .order_by(JobRecord.created_at.desc(), JobRecord.id.desc())
                .limit(limit)
                .offset(offset)
            ).all()
        return list(rows), total

    def counts(self) -> dict[str, int]:
        with self.db.session() as s:
            rows = s.execute(select(JobRecord.status, func.count()).group_by(JobRecord.status))
            found = {status: n for status, n in rows}
        return {status: found.get(status, 0) for status in STATUSES}

    def request_cancel(self, job_id: str) -> JobRecord:
        with self.db.session() as s:
            rec = s.get(JobRecord, job_id)
            if rec is None:
                raise JobNotFound(f"no job {job_id!r}")
            if rec.status in TERMINAL:
                raise JobConflict(f"job {job_id!r} has already {rec.status}; nothing to cancel")
            rec.cancel_requested = True
        self.reconciler.wake()
        return rec

    def request_resume(self, job_id: str) -> JobRecord:
        """Queue a failed or cancelled job again; the reconciler submits `run --resume RUN_DIR`
        as its next attempt, under a submission id of its own."""
        with self.db.session() as s:
            rec = s.get(JobRecord, job_id)
        if rec is None:
            raise JobNotFound(f"no job {job_id!r}")
        _check_resumable(rec)
        _check_run_folder(rec)
        with self.db.session() as s:
            rec = s.get(JobRecord, job_id, with_for_update=True)
            if rec is None:
                raise JobNotFound(f"no job {job_id!r}")
            _check_resumable(rec)  # again, under the row lock: it may have changed since
            rec.status = QUEUED
            rec.attempt += 1
            rec.cancel_requested = False
            rec.error = rec.started_at = rec.finished_at = None
            rec.message = RESUME_MESSAGE
        self.reconciler.wake()
        return rec

    def logs(self, job_id: str) -> str:
        rec = self.get(job_id)
        if rec.status == QUEUED:
            return ""
        return self.ray.logs(submission_id(rec.id, rec.attempt))

    # ---- the reconciler (reconciler.py) --------------------------------------------------
    @property
    def ray_ok_at(self) -> float | None:
        return self.reconciler.ray_ok_at

    @property
    def ray_error(self) -> str | None:
        return self.reconciler.ray_error

    def start(self) -> None:
        self.reconciler.start()

    def stop(self) -> None:
        self.reconciler.stop()
