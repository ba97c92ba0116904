"""The job service end to end: `python -m instructray.api` (real uvicorn on 127.0.0.1) against a
real local Ray cluster with token auth on, jobs running `instructray run` through the Ray Jobs
API; deploy/README.md's `ray job submit` run for real; a job across two Ray nodes."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import AUTH, TOKEN
from tests.api.helpers import (
    REPO,
    VENV_BIN,
    ApiProcess,
    RayCluster,
    RayNode,
    api_service,
    documented_ray_job_submit,
    wait_for,
)

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
API_NAME = "e2e"  # the service's runs root is the cluster's runs_root / API_NAME
# PPO scored by a function of the test suite (no reward model to train): the jobs' drivers
# import it, so the service gives them the repository on PYTHONPATH (its JOB_ENV setting).
REWARD_FUNCTION = "tests.integration.test_tiny_job:words_per_response"


@pytest.fixture(scope="module")
def api(ray_jobs_cluster: RayCluster, artifacts_dir: Path) -> Iterator[ApiProcess]:
    env = {"INSTRUCTRAY_API_JOB_ENV": f"PYTHONPATH={REPO}"}
    with api_service(ray_jobs_cluster, artifacts_dir, API_NAME, TOKEN, env) as server:
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
    def no_actors_left() -> bool:
        actors = ray_jobs_cluster.state("actors")
        return not [
            a for a in actors if a["state"] == "ALIVE" and "JobSupervisor" not in a["class_name"]
        ]

    wait_for(no_actors_left, 60, "the job's actors to exit", 1.0)
    count = job(api, job_id)["metrics_count"]
    time.sleep(3)
    assert job(api, job_id)["metrics_count"] == count
    again = httpx.post(f"{api.url}/jobs/{job_id}/cancel", headers=AUTH, timeout=30)
    assert again.status_code == 409


# ---- deploy/README.md's `ray job submit`, for real, with Ray's token auth on ----------------
def plain_shell_env() -> dict[str, str]:
    """A user's shell: the venv's `ray` on PATH, no Ray address, no Ray token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return env | {"PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"}


def documented_command(cluster: RayCluster, run_id: str, runs_root: Path) -> list[str]:
    """deploy/README.md's command with this cluster's address, the repository's preset and the
    service's runs root in place of the compose box's, and the tiny SFT overrides (`--set`,
    right after the config, as the README says)."""
    args = documented_ray_job_submit(run_id)
    assert args[:3] == ["ray", "job", "submit"] and "--" in args, args
    address = args.index("--address") + 1
    assert args[address] == "http://127.0.0.1:8265"
    args[address] = cluster.address
    [config] = [i for i, a in enumerate(args) if a.startswith("/opt/instructray/configs/")]
    args[config] = str(REPO / "configs" / Path(args[config]).name)
    out = args.index("--out") + 1
    assert args[out] == f"/runs/{run_id}"
    args[out] = str(runs_root / run_id)
    sets = [a for k, v in TINY_SFT["overrides"].items() for a in ("--set", f"{k}={json.dumps(v)}")]
    return [*args[: config + 1], *sets, *args[config + 1 :]]


def test_documented_ray_job_submit_needs_the_token_and_its_job_is_adopted(
    api: ApiProcess, ray_jobs_cluster: RayCluster, two_node_job: str
) -> None:
    assert ray_jobs_cluster.runs_root is not None
    runs_root = ray_jobs_cluster.runs_root / API_NAME
    run_id = f"tiny-{time.strftime('%Y%m%d-%H%M%S')}"
    cmd = documented_command(ray_jobs_cluster, run_id, runs_root)
    shell = plain_shell_env()

    def ray_job_submit(env: dict[str, str]) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)

    # Auth is on: without a token, or with another one, Ray refuses the submission.
    t0 = time.monotonic()
    refused = ray_job_submit(shell)
    assert refused.returncode != 0
    assert "AuthenticationError" in refused.stderr, refused.stderr[-2000:]
    assert "Missing authentication token" in refused.stderr
    wrong = ray_job_submit(
        shell | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    )
    assert wrong.returncode != 0 and "Invalid authentication token" in wrong.stderr
    assert run_id not in [j.submission_id for j in ray_jobs_cluster.client().list_jobs()]
    TIMINGS["ray_job_submit_refused_twice_s"] = round(time.monotonic() - t0, 1)

    # With the token (RAY_AUTH_TOKEN itself here; the API reads the file RAY_AUTH_TOKEN_PATH).
    t0 = time.monotonic()
    done = ray_job_submit(
        shell | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": ray_jobs_cluster.token}
    )
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:])
    assert f"Job '{run_id}' submitted successfully" in done.stdout + done.stderr

    def adopted() -> dict | None:
        items = httpx.get(f"{api.url}/jobs", timeout=10).json()["items"]
        return next((j for j in items if j["id"] == run_id), None)

    found = wait_for(adopted, 120, f"the API to adopt {run_id}", 1.0)
    TIMINGS["ray_job_submit_to_adopted_s"] = round(time.monotonic() - t0, 1)
    assert found["source"] == "ray"
    current = wait_job(api, run_id, lambda j: j["status"] == "succeeded", 300, "to succeed")
    TIMINGS["ray_job_submit_to_succeeded_s"] = round(time.monotonic() - t0, 1)
    run_dir = runs_root / run_id
    assert current["config"]["output"]["run_dir"] == str(run_dir)
    assert Path(current["artifacts"]["checkpoints"]["sft"]).parent.parent == run_dir
    assert current["stages"]["sft"]["steps"] == 3 and current["metrics_count"] == 3
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "succeeded"
    assert ray_jobs_cluster.client().get_job_status(run_id) == "SUCCEEDED"


# ---- two Ray nodes: the policy on one, the rollout engine on the other ----------------------
def pinned(role_nodes: dict[str, str]) -> dict[str, dict[str, float]]:
    return {f"resources.{role}.resources": {node: 1} for role, node in role_nodes.items()}


PPO_TWO_NODES = {
    "name": "two-nodes",
    "preset": "tiny",
    "overrides": {
        **TINY_SFT["overrides"],
        "stages": ["sft", "ppo"],
        "ppo.reward_function": REWARD_FUNCTION,
        "ppo.advantage_estimator": "reinforce_pp",  # no critic: one actor less to start
        "ppo.iterations": 3,
        "ppo.rollout_batch_size": 16,
        "ppo.mini_batch_size": 16,
        "ppo.micro_batch_size": 16,
        "ppo.ppo_epochs": 1,
        "ppo.ptx_coef": 0.0,
        "ppo.monitor.every": 0,
        # The head has {node_a: 100} (conftest), the second node {node_b: 100}.
        **pinned({"policy": "node_a", "reference": "node_a"}),
        **pinned({"rollout": "node_b"}),
    },
}


@pytest.fixture(scope="module")
def second_node(ray_jobs_cluster: RayCluster) -> Iterator[RayNode]:
    t0 = time.monotonic()
    node = ray_jobs_cluster.add_node({"node_b": 100}, num_cpus=2)
    TIMINGS["second_node_start_s"] = round(time.monotonic() - t0, 1)
    try:
        yield node
    finally:
        t0 = time.monotonic()
        node.stop()
        TIMINGS["second_node_stop_s"] = round(time.monotonic() - t0, 1)


@pytest.fixture(scope="module")
def two_node_job(api: ApiProcess, second_node: RayNode) -> str:
    """Submitted before the `ray job submit` test's job, so the two start up side by side."""
    TIMINGS["two_node_ppo_submitted_at"] = time.monotonic()
    r = httpx.post(f"{api.url}/jobs", json=PPO_TWO_NODES, headers=AUTH, timeout=30)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def test_ppo_across_two_nodes_syncs_weights_through_the_object_store_exactly(
    api: ApiProcess, ray_jobs_cluster: RayCluster, second_node: RayNode, two_node_job: str
) -> None:
    nodes = {n["node_id"]: n["resources_total"] for n in ray_jobs_cluster.alive_nodes()}
    [head] = [n for n, res in nodes.items() if "node_a" in res]
    assert "node_b" in nodes[second_node.node_id] and head != second_node.node_id

    job_id = two_node_job
    current = wait_job(api, job_id, lambda j: j["status"] == "succeeded", 600, "to succeed")
    TIMINGS["two_node_ppo_submit_to_succeeded_s"] = round(
        time.monotonic() - TIMINGS.pop("two_node_ppo_submitted_at"), 1
    )
    assert current["stages"]["ppo"]["steps"] == 3

    # The transport: auto chose the object store, because of where the actors are.
    logs = httpx.get(f"{api.url}/jobs/{job_id}/logs?follow=false", timeout=30).text
    assert (
        "[ppo] weight sync into the engines: object_store (the policy's rank 0 and the "
        "rollout engines run on different nodes)" in logs
    ), logs[-3000:]

    # ... and stayed exact: after each sync the engine's log-probs of its own samples are the
    # trainer's (float32 on CPU), on every PPO step.
    rows = httpx.get(f"{api.url}/jobs/{job_id}/metrics?since=0", timeout=10).json()["rows"]
    ppo = [r for r in rows if r["stage"] == "ppo" and r["step"] > 0]
    assert [r["step"] for r in ppo] == [1, 2, 3]
    diffs = [r["engine_logprob_abs_diff"] for r in ppo]
    assert all(d < 1e-4 for d in diffs), diffs
    TIMINGS["two_node_engine_logprob_abs_diff_max"] = max(diffs)

    # Where each role really ran (Ray's state API): the engine on node_b, the rest on node_a.
    ray_job = ray_jobs_cluster.client().get_job_info(job_id).job_id
    actors = [
        a
        for a in ray_jobs_cluster.state("actors")
        if a["job_id"] == ray_job and (a["name"] or "").startswith("instructray-")
    ]
    where = {(a["name"].split("-")[1], a["node_id"]) for a in actors}
    assert where == {("policy", head), ("reference", head), ("rollout", second_node.node_id)}
