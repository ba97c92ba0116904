"""The job service over real HTTP (uvicorn on 127.0.0.1; SQLite and PostgreSQL), with an
in-memory stand-in for the Ray Jobs API: submission, status, metrics, logs, cancel, restart,
adoption."""

from __future__ import annotations

import json
import time

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from instructray.api.app import create_app
from instructray.api.settings import Settings
from tests.api.conftest import AUTH, both_backends
from tests.api.fake_ray import FakeRayJobs
from tests.api.helpers import (
    TINY_SFT,
    serve_in_thread,
    submit,
    submit_running_on_ray,
    wait_for,
    wait_status,
    write_rows,
)


@both_backends
def test_submit_writes_config_and_runs_the_cli_entry_point_on_ray(
    client: httpx.Client, fake_ray: FakeRayJobs, settings: Settings
) -> None:
    r = client.post("/jobs", json=TINY_SFT, headers=AUTH)
    assert r.status_code == 202
    job_id = r.json()["id"]
    assert r.headers["location"] == f"/jobs/{job_id}"
    wait_status(client, job_id, "pending")
    run_dir = settings.runs_root / job_id
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["stages"] == ["sft"] and cfg["sft"]["max_examples"] == 128
    assert cfg["output"]["run_dir"] == str(run_dir) and cfg["ray"]["address"] == "auto"
    [(sub_id, entrypoint, env)] = fake_ray.submissions
    assert sub_id == job_id
    assert entrypoint == f"instructray run {run_dir}/config.yaml --out {run_dir}"
    assert env["PYTHONUNBUFFERED"] == "1"


@both_backends
def test_status_stage_step_metrics_and_artifacts_follow_the_run(
    client: httpx.Client, fake_ray: FakeRayJobs, settings: Settings
) -> None:
    job_id = submit(client)
    wait_status(client, job_id, "pending")
    fake_ray.set(job_id, "RUNNING", "Job is currently running.")
    job = wait_status(client, job_id, "running")
    assert job["started_at"] and job["stage"] is None and job["metrics_count"] == 0
    run_dir = settings.runs_root / job_id
    t = time.time()
    write_rows(
        run_dir, [{"stage": "sft", "step": i, "time": t + i, "loss": 5.0 - i} for i in (1, 2)]
    )
    job = client.get(f"/jobs/{job_id}").json()
    assert (job["stage"], job["step"], job["metrics_count"]) == ("sft", 2, 2)
    assert job["latest_metrics"]["loss"] == 3.0

    page = client.get(f"/jobs/{job_id}/metrics").json()
    assert [r["step"] for r in page["rows"]] == [1, 2] and page["next"] == 2
    with (run_dir / "metrics.jsonl").open("a") as f:  # a step being written: not yet a row
        f.write(json.dumps({"stage": "sft", "step": 3, "time": t + 3, "loss": 2.0})[:20])
    assert client.get(f"/jobs/{job_id}/metrics?since=2").json()["rows"] == []
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"stage": "sft", "step": 3, "time": t + 3, "loss": 2.0})[20:] + "\n")
    page = client.get(f"/jobs/{job_id}/metrics", params={"since": 2}).json()
    assert [r["step"] for r in page["rows"]] == [3] and page["next"] == 3
    assert client.get(f"/jobs/{job_id}/metrics?since=1&limit=1").json()["next"] == 2

    ckpt = str(run_dir / "checkpoints" / "sft")
    summary = {"status": "succeeded", "error": None, "stages": {"sft": {"checkpoint": ckpt}}}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    fake_ray.set(job_id, "SUCCEEDED", "Job finished successfully.")
    job = wait_status(client, job_id, "succeeded")
    assert job["finished_at"] and job["error"] is None
    assert job["artifacts"]["checkpoints"] == {"sft": ckpt}
    assert job["artifacts"]["metrics"] == str(run_dir / "metrics.jsonl")
    assert job["stages"]["sft"]["checkpoint"] == ckpt


@both_backends
def test_failed_job_reports_the_reason_from_summary(
    client: httpx.Client, fake_ray: FakeRayJobs, settings: Settings
) -> None:
    job_id = submit(client)
    wait_status(client, job_id, "pending")
    summary = {"status": "failed", "error": "RuntimeError: policy rank 0 died", "stages": {}}
    (settings.runs_root / job_id / "summary.json").write_text(json.dumps(summary))
    fake_ray.set(job_id, "FAILED", "Job entrypoint command failed with exit code 1")
    job = wait_status(client, job_id, "failed")
    assert job["error"] == "RuntimeError: policy rank 0 died"


@both_backends
def test_list_filters_by_status_and_paginates(client: httpx.Client, fake_ray: FakeRayJobs) -> None:
    ids = [submit(client, {**TINY_SFT, "name": f"job-{i}"}) for i in range(5)]
    for job_id in ids:
        wait_status(client, job_id, "pending")
    for job_id in ids[:2]:
        fake_ray.set(job_id, "RUNNING")
    for job_id in ids[:2]:
        wait_status(client, job_id, "running")
    page = client.get("/jobs", params={"status": "running"}).json()
    assert page["total"] == 2 and {j["id"] for j in page["items"]} == set(ids[:2])
    both = client.get("/jobs", params=[("status", "running"), ("status", "pending")]).json()
    assert both["total"] == 5
    first = client.get("/jobs?limit=2").json()
    second = client.get("/jobs?limit=2&offset=2").json()
    third = client.get("/jobs?limit=2&offset=4").json()
    assert first["total"] == 5 and len(first["items"]) == 2 and len(third["items"]) == 1
    seen = [j["id"] for p in (first, second, third) for j in p["items"]]
    assert seen == ids[::-1]  # newest first, no job twice


@both_backends
def test_cancel_stops_the_ray_job_and_ends_cancelled(
    client: httpx.Client, fake_ray: FakeRayJobs
) -> None:
    job_id = submit_running_on_ray(client, fake_ray)
    wait_status(client, job_id, "running")
    r = client.post(f"/jobs/{job_id}/cancel", headers=AUTH)
    assert r.status_code == 202 and r.json()["cancel_requested"] is True
    job = wait_status(client, job_id, "cancelled")
    assert fake_ray.stops[:1] == [job_id] and job["finished_at"]
    again = client.post(f"/jobs/{job_id}/cancel", headers=AUTH)
    assert again.status_code == 409 and "already cancelled" in again.json()["detail"]


@both_backends
def test_job_queued_while_ray_is_down_is_submitted_later_or_cancelled(
    client: httpx.Client, fake_ray: FakeRayJobs
) -> None:
    fake_ray.down = True
    waiting, dropped = submit(client), submit(client)
    job = wait_for(
        lambda: (j := client.get(f"/jobs/{waiting}").json())["message"].startswith("waiting") and j,
        10,
        "the waiting message",
    )
    assert job["status"] == "queued"
    assert "unreachable" in client.get("/healthz").json()["ray"]
    assert client.post(f"/jobs/{dropped}/cancel", headers=AUTH).status_code == 202
    wait_status(client, dropped, "cancelled")
    fake_ray.down = False
    wait_status(client, waiting, "pending")
    assert [s[0] for s in fake_ray.submissions] == [waiting]  # the cancelled one never ran


@both_backends
def test_restart_reconciles_with_ray_without_duplicating_jobs(
    settings: Settings, fake_ray: FakeRayJobs
) -> None:
    with (
        serve_in_thread(create_app(settings, ray=fake_ray)) as url,
        httpx.Client(base_url=url) as c,
    ):
        running, finished = submit(c), submit(c)
        wait_status(c, running, "pending")
        wait_status(c, finished, "pending")
        fake_ray.set(running, "RUNNING")
        wait_status(c, running, "running")
    # While the service is down, one job finishes and one is submitted with `ray job submit`.
    fake_ray.set(finished, "SUCCEEDED", "Job finished successfully.")
    outside = settings.runs_root / "raysubmit_abc"
    outside.mkdir(parents=True)
    (outside / "config.yaml").write_text(yaml.safe_dump({"name": "from-cli", "stages": ["sft"]}))
    fake_ray.add_external(
        "raysubmit_abc", f"instructray run {outside}/config.yaml --out {outside}", "RUNNING"
    )
    fake_ray.add_external("someone-else", "python train.py", "RUNNING")  # not ours: ignored
    with (
        serve_in_thread(create_app(settings, ray=fake_ray)) as url,
        httpx.Client(base_url=url) as c,
    ):
        assert c.get(f"/jobs/{running}").json()["status"] == "running"
        assert c.get(f"/jobs/{finished}").json()["status"] == "succeeded"
        adopted = c.get("/jobs/raysubmit_abc").json()
        assert (adopted["source"], adopted["name"], adopted["status"]) == (
            "ray",
            "from-cli",
            "running",
        )
        assert c.get("/jobs").json()["total"] == 3
        assert c.get("/jobs/someone-else").status_code == 404
    assert len(fake_ray.submissions) == 2  # nothing submitted twice


def test_a_job_adopted_before_its_driver_wrote_the_config_gets_it_later(
    client: httpx.Client, fake_ray: FakeRayJobs, settings: Settings
) -> None:
    """`ray job submit` returns at once and the driver writes RUN_DIR/config.yaml seconds later:
    a job adopted in between shows its config (and name) once the file is there."""
    run_dir = settings.runs_root / "tiny-early"
    fake_ray.add_external("tiny-early", f"instructray run /c/tiny.yaml --out {run_dir}")

    def found() -> dict | None:
        r = client.get("/jobs/tiny-early")
        return r.json() if r.status_code == 200 else None

    early = wait_for(found, 15, "the adoption", 0.05)
    assert (early["source"], early["name"], early["config"]) == ("ray", "tiny-early", {})
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"name": "tiny", "stages": ["sft"]}))
    later = wait_for(lambda: (j := found()) and j["config"] and j, 15, "the config", 0.05)
    assert (later["name"], later["stages_planned"]) == ("tiny", ["sft"])
    assert later["config"] == {"name": "tiny", "stages": ["sft"]}


@both_backends
def test_logs_stream_as_server_sent_events_until_the_job_ends(
    client: httpx.Client, fake_ray: FakeRayJobs
) -> None:
    job_id = submit_running_on_ray(client, fake_ray)
    fake_ray.log_text[job_id] = "line one\nline two\npartial"
    events: list[str] = []
    with client.stream("GET", f"/jobs/{job_id}/logs") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            events.append(line)
            if line == "data: line two":
                fake_ray.log_text[job_id] += " line\nlast\n"
                fake_ray.set(job_id, "SUCCEEDED")
            if line == "event: end":
                break
    data = [e.removeprefix("data: ") for e in events if e.startswith("data: ")]
    assert data == ["line one", "line two", "partial line", "last"]
    plain = client.get(f"/jobs/{job_id}/logs", params={"follow": "false", "tail": 1})
    assert plain.status_code == 200 and plain.text == "last"


@both_backends
def test_health_prometheus_docs_and_dashboard(client: httpx.Client) -> None:
    submit(client)
    assert client.get("/healthz").json()["database"] == "ok"
    r = client.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    jobs = {s.labels["status"]: s.value for s in families["instructray_jobs"].samples}
    assert sum(jobs.values()) == 1
    posts = [
        s
        for s in families["instructray_api_requests"].samples
        if s.name.endswith("_total")
        and s.labels["route"] == "/jobs"
        and s.labels["method"] == "POST"
    ]
    assert posts and posts[0].labels["status"] == "202"
    assert "instructray_api_request_duration_seconds" in families
    spec = client.get("/openapi.json").json()
    assert {"/jobs", "/jobs/{job_id}/metrics", "/jobs/{job_id}/cancel"} <= set(spec["paths"])
    docs = client.get("/docs").text
    assert "/static/vendor/swagger-ui/swagger-ui-bundle.js" in docs
    assert client.get("/static/vendor/swagger-ui/swagger-ui-bundle.js").status_code == 200
    page = client.get("/").text
    assert "chart.umd.min.js" in page and "Submit a job" in page
    assert client.get("/static/vendor/chart.js/chart.umd.min.js").status_code == 200
    assert client.get("/presets").json()["presets"] == ["smollm2", "tiny"]


def test_health_tells_whether_ray_answers_even_with_no_jobs(
    client: httpx.Client, fake_ray: FakeRayJobs
) -> None:
    assert client.get("/healthz").json()["ray"] == "ok"
    fake_ray.down = True
    wait_for(lambda: "unreachable" in client.get("/healthz").json()["ray"], 15, "ray down", 0.1)
    assert client.get("/healthz").status_code == 200  # the API itself is fine
    fake_ray.down = False
    wait_for(lambda: client.get("/healthz").json()["ray"] == "ok", 15, "ray back", 0.1)
