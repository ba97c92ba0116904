"""Jobs: records in the database, runs on Ray through the Jobs API, progress from RUN_DIR.

The request path only writes records; one reconciler thread does everything that talks to Ray
(submit queued jobs, stop cancelled ones, follow states), so a restarted service picks up where
the last one left off and the submission id (= job id) keeps a job from running twice.
"""

from __future__ import annotations

import copy
import logging
import secrets
import shlex
import shutil
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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
    within,
)
from instructray.api.db import (
    ACTIVE,
    CANCELLED,
    FAILED,
    PENDING,
    QUEUED,
    STATUSES,
    TERMINAL,
    Database,
    JobRecord,
    as_utc,
    utcnow,
)
from instructray.api.ray_jobs import STATUS_FROM_RAY, RayJob, RayJobs, RayUnavailable
from instructray.api.runfiles import MetricsReader, read_summary
from instructray.api.schemas import JobCreate
from instructray.api.settings import Settings
from instructray.config import JobConfig

log = logging.getLogger("instructray.api")
SafeDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml when PyYAML has it
ADOPT_EVERY = 30  # reconcile cycles between scans of Ray's job list for `ray job submit` jobs


class JobNotFound(LookupError):
    pass


class JobConflict(RuntimeError):
    pass


def new_job_id() -> str:
    return f"ir-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def _ts(seconds: float | None) -> datetime | None:
    return datetime.fromtimestamp(seconds, UTC) if seconds else None


def run_dir_of(entrypoint: str, command: str) -> Path | None:
    """RUN_DIR of ``<command> run CONFIG --out RUN_DIR``, the entry point this service submits."""
    try:
        args = shlex.split(entrypoint)
    except ValueError:
        return None
    if len(args) < 5 or Path(args[0]).name != Path(command).name or args[1] != "run":
        return None
    if "--out" not in args[2:-1]:
        return None
    return Path(args[args.index("--out") + 1])


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
        self.ray_ok_at: float | None = None
        self.ray_error: str | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

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
        return confine_paths(cfg, s.allowed_data_roots)

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
            name=req.name or cfg.name,
            status=QUEUED,
            config=config,
            run_dir=str(run_dir),
            message="queued for submission to Ray",
        )
        try:
            with self.db.session() as s:
                s.add(rec)
        except BaseException:
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        self._wake.set()
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
        self._wake.set()
        return rec

    def logs(self, job_id: str) -> str:
        rec = self.get(job_id)
        if rec.status == QUEUED:
            return ""
        return self.ray.logs(job_id)

    # ---- reconciling with Ray ------------------------------------------------------------
    def entrypoint(self, rec: JobRecord) -> str:
        run_dir = Path(rec.run_dir)
        cfg = shlex.quote(str(run_dir / "config.yaml"))
        return f"{self.settings.job_command} run {cfg} --out {shlex.quote(str(run_dir))}"

    def job_env(self) -> dict[str, str]:
        # The pipeline's ray.init passes env vars of its own; allow them to merge with these.
        return {"PYTHONUNBUFFERED": "1", "RAY_OVERRIDE_JOB_RUNTIME_ENV": "1"} | dict(
            self.settings.job_env
        )

    def _update(self, job_id: str, **changes: Any) -> None:
        with self.db.session() as s:
            rec = s.get(JobRecord, job_id)
            if rec is None:
                return
            for key, value in changes.items():
                current = getattr(rec, key)
                if isinstance(current, datetime):
                    current = as_utc(current)
                if current != value:
                    setattr(rec, key, value)

    def _sync_job(self, job: JobRecord) -> None:
        if job.status == QUEUED:
            if job.cancel_requested:
                self._update(
                    job.id,
                    status=CANCELLED,
                    finished_at=utcnow(),
                    message="cancelled before submission",
                )
                return
            meta = {"instructray_job": job.id, "instructray_name": job.name[:100]}
            try:
                new = self.ray.submit(job.id, self.entrypoint(job), self.job_env(), meta)
            except RayUnavailable as err:
                self._update(job.id, message=f"waiting for Ray: {err}")
                raise
            log.info("job %s %s", job.id, "submitted to Ray" if new else "already on Ray")
            self._update(job.id, status=PENDING, message="submitted to Ray")
            return
        info = self.ray.info(job.id)
        if info is None:
            self._update(
                job.id,
                status=FAILED,
                finished_at=utcnow(),
                error=f"Ray at {self.ray.address} has no job {job.id!r} (was the cluster restarted?)",
            )
            return
        if job.cancel_requested and info.status in ("PENDING", "RUNNING"):
            self.ray.stop(job.id)
        self._update(job.id, **self._changes_from(job, info))

    def _changes_from(self, job: JobRecord, info: RayJob) -> dict[str, Any]:
        status = STATUS_FROM_RAY.get(info.status, job.status)
        changes: dict[str, Any] = {"status": status, "message": info.message}
        if info.start_time:
            changes["started_at"] = _ts(info.start_time)
        if status in TERMINAL:
            changes["finished_at"] = _ts(info.end_time) or utcnow()
        if status == FAILED:
            summary = read_summary(Path(job.run_dir)) or {}
            changes["error"] = summary.get("error") or info.message or "failed"
        if status == CANCELLED and not job.cancel_requested:
            changes["message"] = f"stopped outside the service: {info.message}"
        return changes

    def sync_once(self) -> int:
        """Bring every active record up to date with Ray (submitting queued ones)."""
        with self.db.session() as s:
            jobs = list(
                s.scalars(
                    select(JobRecord)
                    .where(JobRecord.status.in_(ACTIVE))
                    .order_by(JobRecord.created_at)
                )
            )
        error: RayUnavailable | None = None
        for job in jobs:
            if error is not None and not (job.status == QUEUED and job.cancel_requested):
                continue  # Ray is unreachable: do not wait for it once per job
            try:
                self._sync_job(job)
            except RayUnavailable as err:
                error = err
        if error is not None:
            raise error
        return len(jobs)

    def adopt_ray_jobs(self) -> int:
        """Record jobs started on the cluster with `ray job submit` (our entry point, a RUN_DIR
        under the runs root) so they are watched here too."""
        found = [j for j in self.ray.list() if len(j.submission_id) <= 64]
        if not found:
            return 0
        with self.db.session() as s:
            ids = [j.submission_id for j in found]
            known = set(s.scalars(select(JobRecord.id).where(JobRecord.id.in_(ids))))
        adopted = 0
        for job in found:
            run_dir = run_dir_of(job.entrypoint, self.settings.job_command)
            if job.submission_id in known or run_dir is None:
                continue
            run_dir = run_dir.resolve()
            if not within(run_dir, [self.settings.runs_root]):
                continue
            try:
                config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
            except (OSError, yaml.YAMLError):
                config = {}
            rec = JobRecord(
                id=job.submission_id,
                name=str(config.get("name") or job.submission_id)[:200],
                source="ray",
                status=QUEUED,
                config=config if isinstance(config, dict) else {},
                run_dir=str(run_dir),
                created_at=_ts(job.start_time) or utcnow(),
            )
            with self.db.session() as s:
                s.add(rec)
            self._update(rec.id, **self._changes_from(rec, job))
            adopted += 1
        return adopted

    def reconcile(self, adopt: bool = True) -> None:
        try:
            if adopt:
                n = self.adopt_ray_jobs()
                if n:
                    log.info("adopted %d job(s) found on Ray", n)
            contacted = self.sync_once() > 0
            if not contacted and time.time() - (self.ray_ok_at or 0) > 5:
                self.ray.ping()  # nothing to follow: still tell /healthz whether Ray is there
                contacted = True
            if contacted:
                self.ray_ok_at, self.ray_error = time.time(), None
        except RayUnavailable as err:
            if self.ray_error != str(err):
                log.warning("%s", err)
            self.ray_error = str(err)

    def _loop(self) -> None:
        cycle = 1
        while not self._stop.is_set():
            self._wake.wait(self.settings.poll_interval_s)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.reconcile(adopt=cycle % ADOPT_EVERY == 0)
            except Exception:
                log.exception("reconciling jobs with Ray failed")
            cycle += 1

    def start(self) -> None:
        """Reconcile once (records vs Ray's states), then keep doing so in the background."""
        self.reconcile()
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._loop, name="instructray-reconciler", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
