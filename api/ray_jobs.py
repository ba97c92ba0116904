"""The Ray Jobs API as the service sees it: submit, inspect, stop, read logs, list.

`RayJobsClient` wraps `ray.job_submission.JobSubmissionClient` (the same API `ray job submit`
talks to); `RayJobs` is the protocol the service codes against.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

# Ray's job states → the service's.
STATUS_FROM_RAY = {
    "PENDING": "pending",
    "RUNNING": "running",
    "SUCCEEDED": "succeeded",
    "FAILED": "failed",
    "STOPPED": "cancelled",
}


class RayUnavailable(RuntimeError):
    """The cluster's Jobs API could not be reached (or answered with a server error)."""


@dataclass
class RayJob:
    submission_id: str
    status: str  # Ray's: PENDING, RUNNING, STOPPED, SUCCEEDED, FAILED
    entrypoint: str = ""
    message: str | None = None
    start_time: float | None = None  # seconds since the epoch
    end_time: float | None = None
    metadata: dict[str, str] = field(default_factory=dict)


class RayJobs(Protocol):
    address: str

    def submit(
        self, submission_id: str, entrypoint: str, env_vars: dict[str, str], metadata: dict
    ) -> bool:
        """True if submitted now, False if Ray already has a job with this id."""
        ...

    def info(self, submission_id: str) -> RayJob | None: ...

    def stop(self, submission_id: str) -> None: ...

    def logs(self, submission_id: str) -> str: ...

    def list(self) -> list[RayJob]: ...

    def ping(self) -> None:
        """Raise RayUnavailable unless the Jobs API answers."""
        ...


def _is_not_found(err: Exception) -> bool:
    text = str(err)
    return "status code 404" in text or "does not exist" in text


class RayJobsClient:
    """Thread-safe, lazily (re)connecting JobSubmissionClient with request timeouts."""

    def __init__(self, address: str, timeout_s: float = 10.0) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._client: Any = None

    def _get(self) -> Any:
        with self._lock:
            if self._client is None:
                from ray.job_submission import JobSubmissionClient

                timeout = self.timeout_s

                class _Client(JobSubmissionClient):
                    # The SDK sends every request without a timeout; a hung dashboard would
                    # otherwise hang the reconciler thread with it.
                    def _do_request(self, *args: Any, **kwargs: Any) -> Any:
                        kwargs.setdefault("timeout", timeout)
                        return super()._do_request(*args, **kwargs)

                try:
                    self._client = _Client(self.address)
                except Exception as err:
                    raise RayUnavailable(f"cannot reach Ray at {self.address}: {err}") from None
            return self._client

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        client = self._get()
        try:
            return getattr(client, method)(*args, **kwargs)
        except Exception as err:
            if _is_not_found(err) or "already exists" in str(err):
                raise
            with self._lock:
                self._client = None  # reconnect (and re-check the version) next time
            raise RayUnavailable(f"Ray at {self.address}: {err}") from None

    def submit(
        self, submission_id: str, entrypoint: str, env_vars: dict[str, str], metadata: dict
    ) -> bool:
        try:
            self._call(
                "submit_job",
                entrypoint=entrypoint,
                submission_id=submission_id,
                runtime_env={"env_vars": env_vars},
                metadata=metadata,
            )
        except RayUnavailable:
            raise
        except Exception as err:
            if "already exists" in str(err):
                return False
            raise RayUnavailable(f"Ray at {self.address}: {err}") from None
        return True

    def info(self, submission_id: str) -> RayJob | None:
        try:
            details = self._call("get_job_info", submission_id)
        except RayUnavailable:
            raise
        except Exception as err:
            if _is_not_found(err):
                return None
            raise RayUnavailable(f"Ray at {self.address}: {err}") from None
        return _to_job(details)

    def stop(self, submission_id: str) -> None:
        try:
            self._call("stop_job", submission_id)
        except RayUnavailable:
            raise
        except Exception as err:
            if not _is_not_found(err):
                raise RayUnavailable(f"Ray at {self.address}: {err}") from None

    def logs(self, submission_id: str) -> str:
        try:
            return str(self._call("get_job_logs", submission_id))
        except RayUnavailable:
            raise
        except Exception as err:
            if _is_not_found(err):
                return ""
            raise RayUnavailable(f"Ray at {self.address}: {err}") from None

    def list(self) -> list[RayJob]:
        return [_to_job(d) for d in self._call("list_jobs") if d.submission_id]

    def ping(self) -> None:
        self._call("get_version")


def _to_job(details: Any) -> RayJob:
    status = getattr(details.status, "value", details.status)
    return RayJob(
        submission_id=details.submission_id or "",
        status=str(status),
        entrypoint=details.entrypoint or "",
        message=details.message,
        start_time=details.start_time / 1000 if details.start_time else None,
        end_time=details.end_time / 1000 if details.end_time else None,
        metadata=dict(details.metadata or {}),
    )
