"""The published OpenAPI document is what the service does. schemathesis generates requests from
the document (valid ones, and ones it must reject) for every operation, sends them to a real
uvicorn on 127.0.0.1 (with the in-memory Ray stand-in) with the bearer token, and checks every
response: no 5xx; a documented status code, content type, headers and body; the token and the
schema's constraints enforced; 405 with a true `Allow`. Seeded and bounded, so a run is
repeatable and takes about half a minute. Responses the generator cannot provoke (Ray down, a
wrong token, a body over the limit, a broken eval.json) are checked against the document by hand
below."""

from __future__ import annotations

import json
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import requests
import schemathesis
from fastapi.routing import APIRoute
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    allow_header_conformance,
    content_type_conformance,
    ignored_auth,
    missing_required_header,
    negative_data_rejection,
    not_a_server_error,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from instructray.api.app import create_app
from instructray.api.configs import TOO_DEEP
from instructray.api.settings import Settings
from tests.api.evaluated_run import monitor_rows, write_evaluation, write_summary
from tests.api.fake_ray import FakeRayJobs
from tests.api.helpers import REPO, TOKEN, serve_in_thread, submit, wait_status, write_rows

MAX_EXAMPLES = 100
"""Per operation, for the fuzzing phase (the coverage phase adds its own boundary cases): about
1,300 requests in all, ~30 s on two cores."""
SEED = 20240610


def _settings(root: Path) -> Settings:
    (root / "data").mkdir(exist_ok=True)
    return Settings(
        runs_root=root / "runs",
        configs_root=REPO / "configs",
        data_roots=[root / "data"],
        token=TOKEN,
        poll_interval_s=0.05,
        ray_address="http://fake-ray:8265",
    )


def _published_document() -> tuple[dict[str, Any], list[str]]:
    """The document /openapi.json serves, and the operations the app routes ("GET /jobs", ...),
    from a throwaway app: the document depends on the code, not on the settings."""
    with tempfile.TemporaryDirectory(prefix="ir-openapi-") as root:
        app = create_app(_settings(Path(root)), ray=FakeRayJobs())
        try:
            document = app.openapi()
            routed = [
                f"{method} {route.path}"
                for route in app.routes
                if isinstance(route, APIRoute) and route.include_in_schema
                for method in route.methods
            ]
        finally:
            app.state.service.db.dispose()
    return document, routed


DOCUMENT, ROUTED = _published_document()
schema = schemathesis.openapi.from_dict(
    DOCUMENT,
    config=schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "auth": {"openapi": {"HTTPBearer": {"bearer": TOKEN}}},
            "generation": {"mode": "all"},  # positive and negative
            "request-timeout": 15,
        }
    ),
)


@schemathesis.check
def request_shape_accepted(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> None:
    """POST /jobs: a body the document calls valid is never refused for its shape (a 422 naming
    `body` or `body.<field>`, e.g. "give exactly one of config, preset, config_path" for `{}`).
    Refusing its *content* (an unknown preset, a config that breaks a rule; fields named
    `preset`, `sft.lr`, ...) is not something a JSON schema can say, so that stays allowed."""
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return
    if response.status_code != 422:
        return
    for error in response.json().get("errors", []):
        # Nesting depth is the one shape rule JSON Schema cannot state (api/configs.py MAX_DEPTH).
        if TOO_DEEP in error["message"]:
            continue
        if error["field"] == "body" or error["field"].startswith("body."):
            raise AssertionError(
                f"a body valid by the document was refused for its shape: {error['field']}: "
                f"{error['message']}"
            )


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    positive_data_acceptance,
    negative_data_rejection,
    missing_required_header,
    ignored_auth,
    unsupported_method,
    allow_header_conformance,
]
# POST /jobs: positive_data_acceptance would fail on every valid-shaped body whose content the
# service refuses (`{"preset": "AAA"}`: no such preset; a config breaking a rule): the preset
# names depend on the deployment's configs folder and the config rules are not JSON Schema. Its
# shape is held to the document by request_shape_accepted instead.
CHECKS_BY_OPERATION = {
    "POST /jobs": [c for c in CHECKS if c is not positive_data_acceptance]
    + [request_shape_accepted]
}


@dataclass
class Service:
    url: str
    fake_ray: FakeRayJobs
    settings: Settings
    settled: list[str] = field(default_factory=list)
    """Succeeded jobs, with metrics, summary, eval.json and report: no request changes them."""
    mutable: list[str] = field(default_factory=list)
    """A failed and a running job: cancel and resume may move them."""


SERVICE: list[Service] = []  # the running one, for the hook below
REPORT_NAMES = ["index.html", "win_rates.png", "missing.png", ".hidden", "..", "%2e%2e"]


@schema.hook
def map_path_parameters(
    context: schemathesis.HookContext, path_parameters: dict | None
) -> dict | None:
    """Most drawn job ids stay as drawn (an unknown job: 404); some become a real job, picked by
    a checksum of the drawn value (a seeded run picks the same), so that the 200, 202 and 409
    responses are checked too. The log stream only gets settled jobs: it ends when the job has."""
    job_id = (path_parameters or {}).get("job_id")
    if not SERVICE or path_parameters is None or not isinstance(job_id, str):
        return path_parameters
    service = SERVICE[0]
    operation = context.operation
    pool = service.settled
    if operation is None or not operation.path.endswith("/logs"):
        pool = pool + service.mutable
    pick = zlib.crc32(job_id.encode("utf-8", "surrogatepass")) % (len(pool) + 2)
    if pick < len(pool):
        path_parameters["job_id"] = pool[pick]
        name = path_parameters.get("name")
        if isinstance(name, str):
            index = zlib.crc32(name.encode("utf-8", "surrogatepass")) % len(REPORT_NAMES)
            path_parameters["name"] = REPORT_NAMES[index]
    return path_parameters


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The service on a real uvicorn with jobs in it: a succeeded one with metrics, warnings, an
    evaluation and a report, a failed one and a running one."""
    cfg = _settings(tmp_path_factory.mktemp("contract"))
    fake_ray = FakeRayJobs()
    with (
        serve_in_thread(create_app(cfg, ray=fake_ray)) as url,
        httpx.Client(base_url=url, timeout=15) as client,
    ):
        running = Service(url, fake_ray, cfg)
        for final in ("SUCCEEDED", "FAILED", "RUNNING"):
            job_id = submit(client)
            wait_status(client, job_id, "pending")
            run_dir = cfg.runs_root / job_id
            fake_ray.log_text[job_id] = "step 1\nstep 2\n"
            if final == "SUCCEEDED":
                write_rows(run_dir, monitor_rows(time.time()))
                write_summary(run_dir)
                write_evaluation(run_dir)
            fake_ray.set(job_id, final)
            wait_status(client, job_id, final.lower())
            (running.settled if final == "SUCCEEDED" else running.mutable).append(job_id)
        SERVICE.append(running)
        try:
            yield running
        finally:
            SERVICE.clear()


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    # slow or filtered draws are expected here (a real server, bounded integers)
    suppress_health_check=list(HealthCheck),
)
def test_the_service_does_what_its_openapi_document_says(
    case: schemathesis.Case, service: Service, session: requests.Session
) -> None:
    checks = CHECKS_BY_OPERATION.get(case.operation.label, CHECKS)
    case.call_and_validate(base_url=service.url, session=session, checks=checks)


def test_the_contract_test_covers_every_operation(service: Service) -> None:
    """The fuzzing above cannot pass by running nothing: it fuzzes the document the service
    serves, and that document has every operation the app routes."""
    assert httpx.get(f"{service.url}/openapi.json").json() == DOCUMENT
    fuzzed = sorted(op.ok().label for op in schema.get_all_operations())
    assert fuzzed == sorted(ROUTED)
    assert len(fuzzed) >= 13 and "POST /jobs" in fuzzed and "GET /jobs/{job_id}/logs" in fuzzed


# ---- documented responses the generator cannot provoke -------------------------------------
VALIDATE = [
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def test_ray_down_is_a_documented_503(service: Service, session: requests.Session) -> None:
    job_id = service.settled[0]
    case = schema["/jobs/{job_id}/logs"]["GET"].Case(
        path_parameters={"job_id": job_id}, query={"follow": "false"}
    )
    service.fake_ray.down = True
    try:
        r = case.call_and_validate(base_url=service.url, session=session, checks=VALIDATE)
    finally:
        service.fake_ray.down = False
    assert r.status_code == 503 and "Ray is unavailable" in r.json()["detail"]


@pytest.mark.parametrize(
    ("authorization", "status"), [("Bearer wrong-token", 403), ("Basic dXNlcjpwdw==", 401)]
)
def test_a_wrong_or_malformed_token_is_documented(
    service: Service, session: requests.Session, authorization: str, status: int
) -> None:
    case = schema["/jobs/{job_id}/cancel"]["POST"].Case(
        path_parameters={"job_id": service.mutable[0]},
        headers={"Authorization": authorization},
    )
    r = case.call_and_validate(base_url=service.url, session=session, checks=VALIDATE)
    assert r.status_code == status and r.headers["www-authenticate"] == ["Bearer"]


def test_a_body_over_the_limit_is_a_documented_413(
    service: Service, session: requests.Session
) -> None:
    big = "x" * (service.settings.max_body_bytes + 1)
    case = schema["/jobs"]["POST"].Case(body={"preset": "tiny", "name": big})
    r = case.call_and_validate(base_url=service.url, session=session, checks=VALIDATE)
    assert r.status_code == 413


def test_a_broken_eval_json_is_the_documented_500(
    service: Service, session: requests.Session
) -> None:
    job_id = service.mutable[0]
    (service.settings.runs_root / job_id / "eval.json").write_text('{"checkpoints": [1, 2]}')
    case = schema["/jobs/{job_id}/eval"]["GET"].Case(path_parameters={"job_id": job_id})
    r = case.call_and_validate(base_url=service.url, session=session, checks=VALIDATE)
    assert r.status_code == 500 and "checkpoints" in r.json()["detail"]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": "x", "overrides": {}},
        {"preset": "tiny"},
        {"preset": "tiny", "config": None, "config_path": None},
        {"preset": "tiny", "config": {}},
        {"config": None},
    ],
)
def test_the_request_schema_says_exactly_one_config_source(
    service: Service, body: dict[str, Any]
) -> None:
    """What the document says of a body is what the service does with it: `{}` was valid by the
    document once, and refused."""
    request_schema = DOCUMENT["paths"]["/jobs"]["post"]["requestBody"]["content"][
        "application/json"
    ]["schema"]
    valid = jsonschema.Draft202012Validator(request_schema).is_valid(body)
    r = httpx.post(
        f"{service.url}/jobs",
        content=json.dumps(body),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    assert (r.status_code == 202) == valid, r.text
    if not valid:
        assert r.status_code == 422 and "exactly one of config, preset, config_path" in r.text
