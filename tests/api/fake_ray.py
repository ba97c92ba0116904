"""An in-memory stand-in for the Ray Jobs API, for the API unit tests (the e2e tests use a real
Ray cluster). It follows JobSubmissionClient's rules: a submission id is unique, stop() of a
finished job is a no-op, unknown ids are None."""

from __future__ import annotations

import threading
import time

from instructray.api.ray_jobs import RayJob, RayUnavailable


class FakeRayJobs:
    def __init__(self, address: str = "http://fake-ray:8265") -> None:
        self.address = address
        self.jobs: dict[str, RayJob] = {}
        self.log_text: dict[str, str] = {}
        self.submissions: list[tuple[str, str, dict]] = []
        self.stops: list[str] = []
        self.down = False
        self._lock = threading.Lock()

    def _check(self) -> None:
        if self.down:
            raise RayUnavailable(f"cannot reach Ray at {self.address}: connection refused")

    def submit(self, submission_id: str, entrypoint: str, env_vars: dict, metadata: dict) -> bool:
        self._check()
        with self._lock:
            if submission_id in self.jobs:
                return False
            self.submissions.append((submission_id, entrypoint, dict(env_vars)))
            self.jobs[submission_id] = RayJob(
                submission_id, "PENDING", entrypoint, "Job is pending", metadata=dict(metadata)
            )
        return True

    def info(self, submission_id: str) -> RayJob | None:
        self._check()
        return self.jobs.get(submission_id)

    def stop(self, submission_id: str) -> None:
        self._check()
        self.stops.append(submission_id)
        job = self.jobs.get(submission_id)
        if job and job.status in ("PENDING", "RUNNING"):
            self.set(submission_id, "STOPPED", "Job was intentionally stopped.")

    def logs(self, submission_id: str) -> str:
        self._check()
        return self.log_text.get(submission_id, "")

    def list(self) -> list[RayJob]:
        self._check()
        return list(self.jobs.values())

    def ping(self) -> None:
        self._check()

    # ---- test controls ----
    def set(self, submission_id: str, status: str, message: str | None = None) -> None:
        job = self.jobs[submission_id]
        job.status = status
        job.message = message
        if status == "RUNNING" and job.start_time is None:
            job.start_time = time.time()
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            job.end_time = time.time()

    def add_external(self, submission_id: str, entrypoint: str, status: str = "RUNNING") -> None:
        """A job someone started with `ray job submit`."""
        self.jobs[submission_id] = RayJob(submission_id, status, entrypoint, start_time=time.time())
