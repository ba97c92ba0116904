"""Deployment files: docker-compose.yml against the official Compose JSON schema (no Docker
here), the KubeRay manifests, the Dockerfiles, and the documented `ray job submit` command."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from instructray.api.submission import run_dir_of
from tests.api.helpers import REPO, documented_ray_job_submit

DEPLOY = REPO / "deploy"


def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_compose_file_is_valid_against_the_compose_spec_schema() -> None:
    schema = json.loads((DEPLOY / "compose-spec" / "compose-spec.json").read_text())
    assert (DEPLOY / "compose-spec" / "LICENSE").read_text().lstrip().startswith("Apache License")
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(compose()), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)
    # the schema is strict enough to catch a typo
    broken = compose()
    broken["services"]["api"]["enviroment"] = {}
    assert not validator.is_valid(broken)


def test_compose_wires_ray_head_api_volumes_and_gpus() -> None:
    spec = compose()
    head, api = spec["services"]["ray-head"], spec["services"]["api"]
    assert head["command"][:4] == ["ray", "start", "--head", "--block"]
    [gpus] = head["deploy"]["resources"]["reservations"]["devices"]
    assert gpus["driver"] == "nvidia" and gpus["count"] == "all" and gpus["capabilities"] == ["gpu"]
    assert head["build"]["dockerfile"] == "deploy/Dockerfile.gpu"
    assert (REPO / head["build"]["dockerfile"]).is_file()
    assert api["command"][:3] == ["python", "-m", "instructray.api"]
    assert api["depends_on"]["ray-head"]["condition"] == "service_healthy"
    env = api["environment"]
    assert env["INSTRUCTRAY_API_RAY_ADDRESS"] == "http://ray-head:8265"
    assert env["INSTRUCTRAY_API_RUNS_ROOT"] == "/runs"
    db_path = env["INSTRUCTRAY_API_DATABASE_URL"].removeprefix("sqlite:///")
    assert "runs:/runs" in head["volumes"] and "runs:/runs" in api["volumes"]  # shared RUN_DIRs
    assert f"jobs-db:{Path(db_path).parent}" in api["volumes"]
    assert {"runs", "jobs-db"} <= set(spec["volumes"])
    assert env["INSTRUCTRAY_API_TOKEN_FILE"] == "/run/secrets/api_token"
    assert "api_token" in api["secrets"] and "api_token" in spec["secrets"]


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_dockerfiles_install_the_package_and_serve_the_api(name: str) -> None:
    text = (DEPLOY / name).read_text()
    assert re.search(r"^FROM ", text, re.M)
    assert "torch==2.13.0" in text
    assert ('".[cpu]"' if name.endswith("cpu") else '".[gpu]"') in text
    assert '"instructray.api"' in text
    for src in re.findall(r"^COPY (\S+) ", text, re.M):
        assert (REPO / src).exists(), src


def manifests(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def test_kuberay_raycluster_has_gpu_workers_shared_runs_and_the_api() -> None:
    docs = {d["kind"]: d for d in manifests("kuberay-raycluster.yaml")}
    cluster = docs["RayCluster"]
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["spec"]["rayVersion"] == "2.60.0"
    [workers] = cluster["spec"]["workerGroupSpecs"]
    container = workers["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"]
    assert {"name": "runs", "mountPath": "/runs"} in container["volumeMounts"]
    api = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in api["env"]}
    name = cluster["metadata"]["name"]
    assert env["INSTRUCTRAY_API_RAY_ADDRESS"] == f"http://{name}-head-svc:8265"
    assert api["command"] == [
        "python",
        "-m",
        "instructray.api",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
    ]


def test_kuberay_rayjob_runs_the_cli_entry_point_into_the_shared_runs_folder() -> None:
    [job] = manifests("kuberay-rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    run_dir = run_dir_of(job["spec"]["entrypoint"], "instructray")
    assert run_dir is not None and run_dir.parent == Path("/runs")  # adoptable by the API


def test_readme_ray_job_submit_command_parses_with_rays_cli() -> None:
    from ray.dashboard.modules.job.cli import submit

    args = documented_ray_job_submit("tiny-1")
    assert args[:3] == ["ray", "job", "submit"]
    params = submit.make_context("submit", args[3:]).params
    assert params["address"] == "http://127.0.0.1:8265" and params["submission_id"] == "tiny-1"
    entrypoint = " ".join(params["entrypoint"])
    assert run_dir_of(entrypoint, "instructray") == Path("/runs/tiny-1")
    config = params["entrypoint"][2]
    assert config.startswith("/opt/instructray/configs/")
    assert (REPO / "configs" / Path(config).name).is_file()
