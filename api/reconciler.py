"""The reconciler: the one thread that talks to Ray about jobs. Each cycle it follows the jobs on
Ray (stopping those whose cancel was requested), then submits queued jobs oldest first while
fewer than ``max_running_jobs`` are on Ray, and now and then adopts jobs someone started with
`ray job submit`.

Every call about a job uses the submission id of its current attempt. A write is dropped when
the job's attempt changed since the cycle read it: news of an attempt that is over (from a
second service on the same database, say) never undoes a resume.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import select

from instructray.api.configs import within
from instructray.api.db import (
    ACTIVE,
    CANCELLED,
    FAILED,
    NAME_LENGTH,
    PENDING,
    QUEUED,
    RUNNING,
    TERMINAL,
    Database,
    JobRecord,
    as_utc,
    utcnow,
)
from instructray.api.ray_jobs import STATUS_FROM_RAY, RayJob, RayJobs, RayUnavailable
from instructray.api.runfiles import read_summary
from instructray.api.settings import Settings
from instructray.api.submission import entrypoint, run_dir_of, submission_id, waiting_message

log = logging.getLogger("instructray.api")
ADOPT_EVERY = 30  # reconcile cycles between scans of Ray's job list for `ray job submit` jobs
ON_RAY = (PENDING, RUNNING)


def _ts(seconds: float | None) -> datetime | None:
    return datetime.fromtimestamp(seconds, UTC) if seconds else None


def _written_since(path: Path, start_time: float | None) -> bool:
    """Whether ``path`` was written after a Ray job started (1 s of slack for coarse clocks)."""
    try:
        return start_time is not None and path.stat().st_mtime >= start_time - 1
    except OSError:
        return False


def _read_config(run_dir: Path) -> dict[str, Any]:
    """RUN_DIR/config.yaml as the driver wrote it; {} while there is none (or no mapping)."""
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    return config if isinstance(config, dict) else {}


class Reconciler:
    def __init__(self, settings: Settings, db: Database, ray: RayJobs) -> None:
        self.settings = settings
        self.db = db
        self.ray = ray
        self.ray_ok_at: float | None = None
        self.ray_error: str | None = None
        self._configured: set[str] = set()
        """Adopted jobs known to have their config (see `_late_config`)."""
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        """Reconcile now rather than at the next poll (a job was queued or cancelled)."""
        self._wake.set()

    def job_env(self) -> dict[str, str]:
        # The pipeline's ray.init passes env vars of its own; allow them to merge with these.
        return {"PYTHONUNBUFFERED": "1", "RAY_OVERRIDE_JOB_RUNTIME_ENV": "1"} | dict(
            self.settings.job_env
        )

    def _update(self, job: JobRecord, **changes: Any) -> None:
        with self.db.session() as s:
            rec = s.get(JobRecord, job.id, with_for_update=True)
            if rec is None or rec.attempt != job.attempt:
                return
            for key, value in changes.items():
                current = getattr(rec, key)
                if isinstance(current, datetime):
                    current = as_utc(current)
                if current != value:
                    setattr(rec, key, value)

    # ---- queued jobs ---------------------------------------------------------------------
    def _submit(self, job: JobRecord) -> None:
        ray_id = submission_id(job.id, job.attempt)
        meta = {"instructray_job": job.id, "instructray_name": job.name[:100]}
        command = entrypoint(self.settings.job_command, Path(job.run_dir), job.attempt)
        try:
            new = self.ray.submit(ray_id, command, self.job_env(), meta)
        except RayUnavailable as err:
            self._update(job, message=f"waiting for Ray: {err}")
            raise
        log.info("job %s %s as %s", job.id, "submitted to Ray" if new else "already on Ray", ray_id)
        self._update(job, status=PENDING, message="submitted to Ray")

    def _admit(self, queued: list[JobRecord], on_ray: int, error: RayUnavailable | None) -> None:
        """Submit queued jobs in order while fewer than max_running_jobs are on Ray; a queued job
        whose cancel was requested ends here, never submitted. Raises the first RayUnavailable."""
        limit = self.settings.max_running_jobs or 0
        place = 0
        for job in queued:
            if job.cancel_requested:
                message = "cancelled before submission"
                self._update(job, status=CANCELLED, finished_at=utcnow(), message=message)
            elif error is not None:
                continue  # Ray is unreachable: do not wait for it once per job
            elif limit and on_ray >= limit:
                place += 1
                self._update(job, message=waiting_message(on_ray, limit, place))
            else:
                try:
                    self._submit(job)
                    on_ray += 1
                except RayUnavailable as err:
                    error = err
        if error is not None:
            raise error

    # ---- jobs on Ray ---------------------------------------------------------------------
    def _follow(self, job: JobRecord) -> str:
        """Bring a submitted job up to date with Ray; its status now."""
        ray_id = submission_id(job.id, job.attempt)
        info = self.ray.info(ray_id)
        if info is None:
            self._update(
                job,
                status=FAILED,
                finished_at=utcnow(),
                error=f"Ray at {self.ray.address} has no job {ray_id!r} (was the cluster "
                f"restarted?); POST /jobs/{job.id}/resume continues it from its run folder",
            )
            return FAILED
        if job.cancel_requested and info.status in ("PENDING", "RUNNING"):
            self.ray.stop(ray_id)
        changes = self._changes_from(job, info)
        if job.source == "ray":
            changes |= self._late_config(job)
        self._update(job, **changes)
        return changes["status"]

    def _late_config(self, job: JobRecord) -> dict[str, Any]:
        """The config (and name) of a job adopted before its driver wrote RUN_DIR/config.yaml,
        once it has: `ray job submit` returns at once, the driver writes it seconds later."""
        if job.id in self._configured:
            return {}
        with self.db.session() as s:  # config is deferred: not loaded with the job
            known = s.scalar(select(JobRecord.config).where(JobRecord.id == job.id))
        config = {} if known else _read_config(Path(job.run_dir))
        if known or config:
            self._configured.add(job.id)
        if not config:
            return {}
        if job.name == job.id and config.get("name"):
            return {"config": config, "name": str(config["name"])[:NAME_LENGTH]}
        return {"config": config}

    def _changes_from(self, job: JobRecord, info: RayJob) -> dict[str, Any]:
        status = STATUS_FROM_RAY.get(info.status, job.status)
        changes: dict[str, Any] = {"status": status, "message": info.message}
        if info.start_time:
            changes["started_at"] = _ts(info.start_time)
        if status in TERMINAL:
            changes["finished_at"] = _ts(info.end_time) or utcnow()
        if status == FAILED:
            changes["error"] = self._failure(job, info)
        if status == CANCELLED and not job.cancel_requested:
            changes["message"] = f"stopped outside the service: {info.message}"
        return changes

    def _failure(self, job: JobRecord, info: RayJob) -> str:
        run_dir = Path(job.run_dir)
        error = (read_summary(run_dir) or {}).get("error")
        # A resume that ended before its driver wrote summary.json (refused, say) leaves the
        # attempt before's error there: Ray's message is this attempt's reason.
        if job.attempt > 0 and not _written_since(run_dir / "summary.json", info.start_time):
            error = None
        return error or info.message or "failed"

    def sync_once(self) -> int:
        """Bring every active record up to date with Ray, then submit queued ones."""
        with self.db.session() as s:
            jobs = list(
                s.scalars(
                    select(JobRecord)
                    .where(JobRecord.status.in_(ACTIVE))
                    .order_by(JobRecord.created_at, JobRecord.id)
                )
            )
        on_ray, error = 0, None
        for job in jobs:
            if job.status == QUEUED:
                continue
            try:
                on_ray += self._follow(job) in ON_RAY
            except RayUnavailable as err:
                error = err
                break
        self._admit([j for j in jobs if j.status == QUEUED], on_ray, error)
        return len(jobs)

    def adopt_ray_jobs(self) -> int:
        """Record jobs started on the cluster with `ray job submit` (our entry point, a RUN_DIR
        under the runs root) so they are watched here too."""
        found = [
            j
            for j in self.ray.list()
            if len(j.submission_id) <= 64
            # A resume of one of our jobs names it: an attempt, not a job of its own.
            and j.metadata.get("instructray_job", j.submission_id) == j.submission_id
        ]
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
            if within(run_dir, [self.settings.runs_root]):
                self._adopt(job, run_dir)
                adopted += 1
        return adopted

    def _adopt(self, job: RayJob, run_dir: Path) -> None:
        config = _read_config(run_dir)  # {} until the driver has written it: see _follow
        rec = JobRecord(
            id=job.submission_id,
            name=str(config.get("name") or job.submission_id)[:NAME_LENGTH],
            source="ray",
            status=QUEUED,
            config=config,
            run_dir=str(run_dir),
            attempt=0,
            created_at=_ts(job.start_time) or utcnow(),
        )
        with self.db.session() as s:
            s.add(rec)
        self._update(rec, **self._changes_from(rec, job))

    # ---- the thread ----------------------------------------------------------------------
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
