"""The job service end to end: `python -m instructray.api` (real uvicorn on 127.0.0.1) against a
real local Ray cluster, jobs running `instructray run` through the Ray Jobs API."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import AUTH, TOKEN
from tests.api.helpers import ApiProcess, RayCluster, api_service, wait_for

pytestmark = pytest.mark.e2e

TINY_SFT = {
    "name": "tiny-sft",
    "preset": "tiny",
    "overrides": {
        "stages": ["sft"],
        "sft.max_examples": 128,
        "sft.batch_size": 32,
        "sft.micro_batch_size": 32,
        "output.tensorboard": False,
    },
}
PRETRAIN = {  # runs for minutes: the job to cancel
    "name": "to-cancel",
    "preset": "tiny",
    "overrides": {"stages": ["pretrain"], "pretrain.epochs": 5.0, "output.tensorboard": False},
}
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def api(ray_jobs_cluster: RayCluster, artifacts_dir: Path) -> Iterator[ApiProcess]:
    with api_service(ray_jobs_cluster, artifacts_dir, "e2e", TOKEN) as server:
        yield server
    (artifacts_dir / "api-e2e-timings.json").write_text(json.dumps(TIMINGS, indent=2))


@pytest.fixture(scope="module")
def job_to_cancel(api: ApiProcess) -> str:
    """Submitted before the tiny job so the two start up side by side (it saves a minute),
    and so the API restart happens with two jobs in flight."""
    TIMINGS["pretrain_submitted_at"] = time.monotonic()
    r = httpx.post(f"{api.url}/jobs", json=PRETRAIN, headers=AUTH, timeout=30)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def job(api: ApiProcess, job_id: str) -> dict:
    r = httpx.get(f"{api.url}/jobs/{job_id}", timeout=10)
    r.raise_for_status()
    return r.json()


def wait_job(api: ApiProcess, job_id: str, ok, timeout: float, what: str) -> dict:
    def check() -> dict | None:
        current = job(api, job_id)
        assert current["status"] != "failed", current["error"]
        return current if ok(current) else None

    return wait_for(check, timeout, f"job {job_id} {what}", 1.0)


def test_tiny_job_runs_to_success_and_survives_an_api_restart(
    api: ApiProcess, ray_jobs_cluster: RayCluster, job_to_cancel: str
) -> None:
    t0 = time.monotonic()
    r = httpx.post(f"{api.url}/jobs", json=TINY_SFT, headers=AUTH, timeout=30)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    wait_job(api, job_id, lambda j: j["status"] == "running", 120, "to run")
    TIMINGS["tiny_sft_submit_to_running_s"] = round(time.monotonic() - t0, 1)

    api.kill()  # crash the API mid-job ...
    api.start()  # ... and start a new one on the same database and port
    restarted = job(api, job_id)
    assert restarted["status"] in ("running", "succeeded")  # found, not lost or resubmitted
    assert job(api, job_to_cancel)["status"] in ("pending", "running")

    rows: list[dict] = []
    cursor = 0
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        current = job(api, job_id)
        page = httpx.get(f"{api.url}/jobs/{job_id}/metrics?since={cursor}", timeout=10).json()
        rows += page["rows"]
        cursor = page["next"]
        if current["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(1)
    TIMINGS["tiny_sft_submit_to_succeeded_s"] = round(time.monotonic() - t0, 1)
    assert current["status"] == "succeeded", (current["error"], current["message"])
    rows += httpx.get(f"{api.url}/jobs/{job_id}/metrics?since={cursor}", timeout=10).json()["rows"]

    assert [r["step"] for r in rows] == [1, 2, 3] and {r["stage"] for r in rows} == {"sft"}
    assert all(r["loss"] > 0 and r["tokens_per_s"] > 0 for r in rows)
    assert current["stage"] == "sft" and current["step"] == 3
    assert current["latest_metrics"] == rows[-1] and current["metrics_count"] == 3
    checkpoint = Path(current["artifacts"]["checkpoints"]["sft"])
    assert (checkpoint / "config.json").is_file()
    assert current["stages"]["sft"]["steps"] == 3 and current["finished_at"]

    ray_jobs = [j for j in ray_jobs_cluster.client().list_jobs() if j.submission_id == job_id]
    assert len(ray_jobs) == 1 and ray_jobs[0].status == "SUCCEEDED"
    logs = httpx.get(f"{api.url}/jobs/{job_id}/logs?follow=false", timeout=30).text
    assert "[sft] step 3/3" in logs and "done:" in logs
    jobs = httpx.get(f"{api.url}/jobs", timeout=10).json()
    assert sorted(j["id"] for j in jobs["items"]) == sorted([job_id, job_to_cancel])
    on_ray = [j.submission_id for j in ray_jobs_cluster.client().list_jobs()]
    assert on_ray.count(job_id) == 1 and on_ray.count(job_to_cancel) == 1


def test_cancel_stops_a_running_job(
    api: ApiProcess, ray_jobs_cluster: RayCluster, job_to_cancel: str
) -> None:
    job_id = job_to_cancel
    wait_job(api, job_id, lambda j: j["metrics_count"] >= 2, 240, "to log training steps")
    TIMINGS["pretrain_submit_to_training_s"] = round(
        time.monotonic() - TIMINGS.pop("pretrain_submitted_at"), 1
    )
    assert job(api, job_id)["status"] == "running"

    t1 = time.monotonic()
    r = httpx.post(f"{api.url}/jobs/{job_id}/cancel", headers=AUTH, timeout=30)
    assert r.status_code == 202 and r.json()["cancel_requested"]
    stopped = wait_job(api, job_id, lambda j: j["status"] == "cancelled", 90, "to be cancelled")
    TIMINGS["cancel_to_cancelled_s"] = round(time.monotonic() - t1, 1)
    assert stopped["finished_at"] and stopped["cancel_requested"]
    assert ray_jobs_cluster.client().get_job_status(job_id) == "STOPPED"

    # It has really stopped: no new steps, and its actors are gone from the cluster.
    from ray.util.state import list_actors

    def no_actors_left() -> bool:
        alive = list_actors(address=ray_jobs_cluster.address, filters=[("state", "=", "ALIVE")])
        return not [a for a in alive if "JobSupervisor" not in a.class_name]

    wait_for(no_actors_left, 60, "the job's actors to exit", 1.0)
    count = job(api, job_id)["metrics_count"]
    time.sleep(3)
    assert job(api, job_id)["metrics_count"] == count
    again = httpx.post(f"{api.url}/jobs/{job_id}/cancel", headers=AUTH, timeout=30)
    assert again.status_code == 409
