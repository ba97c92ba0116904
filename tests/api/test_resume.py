"""POST /jobs/{id}/resume over real HTTP against the Ray stand-in: a failed or cancelled job is
queued again and runs `instructray run --resume RUN_DIR` under a Ray submission id of its own
(`<id>-resume<N>`), which every later call about it uses; active and succeeded jobs are refused.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import jsonschema
import pytest

from instructray.api.app import create_app
from instructray.api.db import Database, JobRecord
from instructray.api.jobs import RESUME_MESSAGE, JobService
from instructray.api.ray_jobs import RayJob
from instructray.api.settings import Settings
from tests.api.conftest import AUTH, both_backends
from tests.api.fake_ray import FakeRayJobs
from tests.api.helpers import serve_in_thread, submit, wait_for, wait_status

ENV = {"PYTHONUNBUFFERED": "1", "RAY_OVERRIDE_JOB_RUNTIME_ENV": "1"}
INTERRUPTED = "sft stage interrupted: Interrupted: stopped by SIGTERM"


def write_summary(run_dir: Path, status: str, error: str | None = None, **more: object) -> None:
    body = {"status": status, "error": error, "stages": {}, **more}
    (run_dir / "summary.json").write_text(json.dumps(body))


def failed_job(client: httpx.Client, fake_ray: FakeRayJobs, settings: Settings) -> str:
    """A job whose driver was stopped by SIGTERM (its Ray job FAILED, summary `interrupted`)."""
    job_id = submit(client)
    wait_status(client, job_id, "pending")
    fake_ray.set(job_id, "RUNNING")
    wait_status(client, job_id, "running")
    write_summary(settings.runs_root / job_id, "interrupted", INTERRUPTED)
    fake_ray.set(job_id, "FAILED", "Job entrypoint command failed with exit code 143")
    wait_status(client, job_id, "failed")
    return job_id


def resume(client: httpx.Client, job_id: str, headers: dict | None = AUTH) -> httpx.Response:
    return client.post(f"/jobs/{job_id}/resume", headers=headers)


def rows(client: httpx.Client) -> dict[str, tuple]:
    items = client.get("/jobs").json()["items"]
    return {j["id"]: (j["status"], j["attempt"], j["error"], j["cancel_requested"]) for j in items}


def links(job_id: str) -> dict[str, str]:
    base = f"/jobs/{job_id}"
    return {
        "self": base,
        "metrics": f"{base}/metrics",
        "logs": f"{base}/logs",
        "cancel": f"{base}/cancel",
    }


@both_backends
def test_a_failed_job_resumes_from_its_run_folder_under_a_new_submission_id(
    client: httpx.Client, fake_ray: FakeRayJobs, settings: Settings
) -> None:
    job_id = failed_job(client, fake_ray, settings)
    run_dir = settings.runs_root / job_id
    job = client.get(f"/jobs/{job_id}").json()
    assert (job["error"], job["run_status"], job["attempt"]) == (INTERRUPTED, "interrupted", 0)
    assert job["ray_submission_id"] == job_id

    r = resume(client, job_id)
    assert r.status_code == 202, r.text
    assert r.json() == {
        "id": job_id, "status": "queued", "cancel_requested": False, "attempt": 1,
        "links": links(job_id),
    }  # fmt: skip
    job = wait_status(client, job_id, "pending")
    assert [s[:2] for s in fake_ray.submissions] == [
        (job_id, f"instructray run {run_dir}/config.yaml --out {run_dir}"),
        (f"{job_id}-resume1", f"instructray run --resume {run_dir}"),
    ]
    assert fake_ray.submissions[1][2] == ENV
    assert fake_ray.jobs[f"{job_id}-resume1"].metadata == {
        "instructray_job": job_id,
        "instructray_name": "tiny-sft",
    }
    assert (job["attempt"], job["ray_submission_id"]) == (1, f"{job_id}-resume1")
    assert (job["error"], job["finished_at"], job["started_at"]) == (None, None, None)
    assert fake_ray.jobs[job_id].status == "FAILED"  # the first attempt's Ray job is left alone

    fake_ray.log_text[job_id] = "first attempt\n"
    fake_ray.log_text[f"{job_id}-resume1"] = "resumed sft after step 40\n"
    logs = client.get(f"/jobs/{job_id}/logs", params={"follow": "false"})
    assert logs.text == "resumed sft after step 40\n"
    fake_ray.set(f"{job_id}-resume1", "RUNNING", "Job is currently running.")
    resumed_at = {"stage": "sft", "after_step": 40, "discarded_lines": 3, "time": 1.0}
    actor_died = {
        "stage": "sft", "step": 52, "last_step": 52, "kind": "actor_died", "key": "1",
        "message": "policy rank 0 died; restart 1 of 2",
    }  # fmt: skip
    write_summary(run_dir, "running", resumes=[resumed_at], warnings=[actor_died])
    job = wait_status(client, job_id, "running")
    assert job["started_at"] and job["message"] == "Job is currently running."
    assert (job["resumes"], job["restarts"], job["warnings"]) == ([resumed_at], [actor_died], [])
    assert job["run_status"] == "running"

    write_summary(run_dir, "succeeded", resumes=[resumed_at])
    fake_ray.set(f"{job_id}-resume1", "SUCCEEDED", "Job finished successfully.")
    job = wait_status(client, job_id, "succeeded")
    assert (job["attempt"], job["error"], job["run_status"]) == (1, None, "succeeded")
    assert job["finished_at"]
    listed = client.get("/jobs").json()["items"]
    assert [(j["id"], j["attempt"], j["status"]) for j in listed] == [(job_id, 1, "succeeded")]
    again = resume(client, job_id)
    assert again.status_code == 409
    assert (
        again.json()["detail"]
        == f"job {job_id!r} has already succeeded; there is nothing to resume"
    )
    assert len(fake_ray.submissions) == 2


@both_backends
def test_a_cancelled_resume_is_stopped_by_its_own_id_and_resumes_again_as_resume2(
    client: httpx.Client, fake_ray: FakeRayJobs, settings: Settings
) -> None:
    job_id = failed_job(client, fake_ray, settings)
    assert resume(client, job_id).status_code == 202
    wait_status(client, job_id, "pending")
    fake_ray.set(f"{job_id}-resume1", "RUNNING")
    wait_status(client, job_id, "running")
    assert client.post(f"/jobs/{job_id}/cancel", headers=AUTH).status_code == 202
    job = wait_status(client, job_id, "cancelled")
    assert fake_ray.stops == [f"{job_id}-resume1"] and job["cancel_requested"] is True

    r = resume(client, job_id)
    assert r.status_code == 202 and r.json()["attempt"] == 2
    job = wait_status(client, job_id, "pending")
    assert (job["attempt"], job["cancel_requested"]) == (2, False)
    run_dir = settings.runs_root / job_id
    assert fake_ray.submissions[2][:2] == (
        f"{job_id}-resume2",
        f"instructray run --resume {run_dir}",
    )
    # The resume was refused (another driver held the run folder): Ray's reason, not the
    # error the attempt before left in summary.json.
    refused = "Job entrypoint command failed with exit code 2: error: run folder is busy"
    fake_ray.set(f"{job_id}-resume2", "FAILED", refused)
    assert wait_status(client, job_id, "failed")["error"] == refused
    assert [s[0] for s in fake_ray.submissions] == [
        job_id,
        f"{job_id}-resume1",
        f"{job_id}-resume2",
    ]


@both_backends
def test_resume_is_refused_for_active_succeeded_and_unknown_jobs_and_without_the_token(
    client: httpx.Client, fake_ray: FakeRayJobs, settings: Settings
) -> None:
    pending = submit(client)
    wait_status(client, pending, "pending")
    running = submit(client)
    wait_status(client, running, "pending")
    fake_ray.set(running, "RUNNING")
    wait_status(client, running, "running")
    done = submit(client)
    wait_status(client, done, "pending")
    fake_ray.set(done, "SUCCEEDED")
    wait_status(client, done, "succeeded")
    failed = submit(client)
    wait_status(client, failed, "pending")
    fake_ray.set(failed, "FAILED", "boom")
    wait_status(client, failed, "failed")
    before = rows(client)

    expected = {
        pending: (
            409,
            f"job {pending!r} is pending; only a failed or cancelled job can be resumed",
        ),
        running: (
            409,
            f"job {running!r} is running; only a failed or cancelled job can be resumed",
        ),
        done: (409, f"job {done!r} has already succeeded; there is nothing to resume"),
        "ir-nope": (404, "no job 'ir-nope'"),
    }
    for job_id, (code, detail) in expected.items():
        r = resume(client, job_id)
        assert (r.status_code, r.json()["detail"]) == (code, detail)
    assert resume(client, failed, headers=None).status_code == 401
    assert resume(client, failed, headers={"Authorization": "Bearer wrong"}).status_code == 403
    # A run folder that `instructray run --resume` would refuse is refused here, with the reason.
    write_summary(settings.runs_root / failed, "succeeded")
    r = resume(client, failed)
    assert r.status_code == 409
    assert r.json()["detail"] == (
        f"job {failed!r} cannot be resumed: its run folder's summary.json says succeeded"
    )
    assert rows(client) == before
    assert [s[0] for s in fake_ray.submissions] == [pending, running, done, failed]


def test_openapi_describes_resume_and_its_answers_fit_the_schema(
    client: httpx.Client, fake_ray: FakeRayJobs, settings: Settings
) -> None:
    spec = client.get("/openapi.json").json()
    op = spec["paths"]["/jobs/{job_id}/resume"]["post"]
    assert set(op["responses"]) == {"202", "401", "403", "404", "409", "422"}
    assert op["security"] == [{"HTTPBearer": []}]
    assert [p["name"] for p in op["parameters"]] == ["job_id"]

    def check(r: httpx.Response) -> None:
        schema = op["responses"][str(r.status_code)]["content"]["application/json"]["schema"]
        jsonschema.validate(r.json(), {**schema, "components": spec["components"]})

    job_id = failed_job(client, fake_ray, settings)
    for r in (resume(client, job_id), resume(client, job_id), resume(client, "ir-nope")):
        check(r)
    assert resume(client, "ir-nope").status_code == 404
    job = client.get(f"/jobs/{job_id}").json()
    detail = spec["paths"]["/jobs/{job_id}"]["get"]["responses"]["200"]["content"]
    jsonschema.validate(
        job, {**detail["application/json"]["schema"], "components": spec["components"]}
    )
    assert {"attempt", "ray_submission_id", "run_status", "resumes", "restarts"} <= set(job)


@both_backends
def test_resume_queues_the_record_for_its_next_attempt(settings: Settings) -> None:
    """What the request itself writes (no reconciler runs here to move the job on)."""
    db = Database(settings.db_url)
    db.create_all()
    service = JobService(settings, db, FakeRayJobs())
    run_dir = settings.runs_root / "ir-1"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("name: x\n")
    with db.session() as s:
        s.add(
            JobRecord(
                id="ir-1", name="x", status="cancelled", config={}, run_dir=str(run_dir),
                error="stopped", cancel_requested=True, message="Job was intentionally stopped.",
            )
        )  # fmt: skip
    try:
        rec = service.request_resume("ir-1")
        assert (rec.status, rec.attempt) == ("queued", 1)
        with db.session() as s:
            row = s.get(JobRecord, "ir-1")
        assert (row.status, row.attempt, row.message) == ("queued", 1, RESUME_MESSAGE)
        assert (row.error, row.cancel_requested, row.started_at, row.finished_at) == (
            None, False, None, None,
        )  # fmt: skip
    finally:
        db.dispose()


class ResumedMeanwhile(FakeRayJobs):
    """While the reconciler asks about a job's attempt, another service (same database) marks
    it failed and a user resumes it: the answer is news of an attempt that is over."""

    def __init__(self, service: JobService) -> None:
        super().__init__()
        self.service = service

    def info(self, submission_id: str) -> RayJob | None:
        if submission_id == "ir-1":
            with self.service.db.session() as s:
                s.get(JobRecord, "ir-1").status = "failed"
            self.service.request_resume("ir-1")
            self.set("ir-1", "FAILED", "node lost")
        return super().info(submission_id)


@both_backends
def test_news_of_an_attempt_that_is_over_never_undoes_a_resume(settings: Settings) -> None:
    db = Database(settings.db_url)
    db.create_all()
    service = JobService(settings, db, FakeRayJobs())
    ray = ResumedMeanwhile(service)
    service.reconciler.ray = ray
    run_dir = settings.runs_root / "ir-1"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("name: x\n")
    ray.jobs["ir-1"] = RayJob("ir-1", "RUNNING", "instructray run ...", start_time=time.time())
    with db.session() as s:
        s.add(JobRecord(id="ir-1", name="x", status="running", config={}, run_dir=str(run_dir)))
    try:
        service.reconciler.sync_once()  # asks about attempt 0; the job is resumed meanwhile
        with db.session() as s:
            row = s.get(JobRecord, "ir-1")
        assert (row.status, row.attempt, row.error) == ("queued", 1, None)
        service.reconciler.sync_once()
        with db.session() as s:
            row = s.get(JobRecord, "ir-1")
        assert (row.status, row.attempt, row.message) == ("pending", 1, "submitted to Ray")
        assert [s[:2] for s in ray.submissions] == [
            ("ir-1-resume1", f"instructray run --resume {run_dir}")
        ]
    finally:
        db.dispose()


@both_backends
def test_a_restarted_service_follows_the_resume_and_adopts_no_attempt_as_a_job(
    settings: Settings, fake_ray: FakeRayJobs
) -> None:
    with (
        serve_in_thread(create_app(settings, ray=fake_ray)) as url,
        httpx.Client(base_url=url, timeout=15) as c,
    ):
        job_id = failed_job(c, fake_ray, settings)
        assert resume(c, job_id).status_code == 202
        wait_status(c, job_id, "pending")
    # While the service is down, the resume runs; a look-alike (with --out) names the job too.
    fake_ray.set(f"{job_id}-resume1", "RUNNING")
    run_dir = settings.runs_root / job_id
    fake_ray.jobs[f"{job_id}-resume9"] = RayJob(
        f"{job_id}-resume9",
        "RUNNING",
        f"instructray run {run_dir}/config.yaml --out {run_dir}",
        metadata={"instructray_job": job_id},
    )
    with (
        serve_in_thread(create_app(settings, ray=fake_ray)) as url,
        httpx.Client(base_url=url, timeout=15) as c,
    ):
        job = wait_status(c, job_id, "running")
        assert (job["attempt"], job["ray_submission_id"]) == (1, f"{job_id}-resume1")
        assert [j["id"] for j in c.get("/jobs").json()["items"]] == [job_id]
        assert c.get(f"/jobs/{job_id}-resume1").status_code == 404
    assert len(fake_ray.submissions) == 2


@pytest.fixture
def limited(settings: Settings) -> Settings:
    return settings.model_copy(update={"max_running_jobs": 2})


def message(client: httpx.Client, job_id: str) -> str:
    return client.get(f"/jobs/{job_id}").json()["message"]


def waiting(place: str) -> str:
    return f"waiting: 2 jobs running (max_running_jobs=2), {place} in line"


@both_backends
def test_at_most_max_running_jobs_are_on_ray_and_the_rest_wait_in_order(
    limited: Settings, fake_ray: FakeRayJobs
) -> None:
    with (
        serve_in_thread(create_app(limited, ray=fake_ray)) as url,
        httpx.Client(base_url=url, timeout=15) as c,
    ):
        ids = [submit(c, {"name": f"q{i}", "preset": "tiny"}) for i in range(5)]
        wait_for(lambda: message(c, ids[4]) == waiting("3rd"), 10, "the queue", 0.05)
        assert [c.get(f"/jobs/{j}").json()["status"] for j in ids] == [
            "pending", "pending", "queued", "queued", "queued",
        ]  # fmt: skip
        assert [message(c, j) for j in ids[2:4]] == [waiting("1st"), waiting("2nd")]
        assert [s[0] for s in fake_ray.submissions] == ids[:2]

        fake_ray.set(ids[0], "SUCCEEDED")
        wait_status(c, ids[2], "pending")
        wait_for(lambda: message(c, ids[4]) == waiting("2nd"), 10, "the queue to move", 0.05)
        assert message(c, ids[3]) == waiting("1st")
        assert [s[0] for s in fake_ray.submissions] == ids[:3]

        # Cancelled while it waits: it never reaches Ray, not even once a place is free.
        assert c.post(f"/jobs/{ids[4]}/cancel", headers=AUTH).status_code == 202
        assert wait_status(c, ids[4], "cancelled")["message"] == "cancelled before submission"
        fake_ray.set(ids[1], "FAILED", "node lost")
        wait_status(c, ids[3], "pending")
        assert [s[0] for s in fake_ray.submissions] == ids[:4]

        # A resume waits for a place too, first in line by creation time.
        assert resume(c, ids[1]).status_code == 202
        wait_for(lambda: message(c, ids[1]) == waiting("1st"), 10, "the resume to wait", 0.05)
        fake_ray.set(ids[2], "SUCCEEDED")
        wait_status(c, ids[1], "pending")
        fake_ray.set(ids[3], "SUCCEEDED")
        fake_ray.set(f"{ids[1]}-resume1", "SUCCEEDED")
        for job_id in (ids[1], ids[3]):
            wait_status(c, job_id, "succeeded")
        time.sleep(limited.poll_interval_s * 5)  # a few more cycles with places free
        assert c.get(f"/jobs/{ids[4]}").json()["status"] == "cancelled"
    assert [s[0] for s in fake_ray.submissions] == [*ids[:4], f"{ids[1]}-resume1"]
