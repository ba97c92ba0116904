"""The HTTP endpoints. Handlers stay thin: JobService (jobs.py) holds the logic."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError
from sqlalchemy import text

from instructray.api.configs import TOO_DEEP, too_deep
from instructray.api.db import TERMINAL
from instructray.api.jobs import JobService
from instructray.api.ray_jobs import RayUnavailable
from instructray.api.reports import (
    REPORT_HEADERS,
    REPORT_INDEX,
    iter_file,
    media_type,
    open_report_file,
    read_eval,
)
from instructray.api.schemas import (
    Accepted,
    ErrorBody,
    Evaluation,
    Health,
    JobCreate,
    JobDetail,
    JobList,
    MetricsPage,
    Status,
)
from instructray.api.security import bearer_scheme, require_token
from instructray.api.views import job_detail, job_links, job_summary

router = APIRouter()
MUTATING = [Depends(bearer_scheme), Depends(require_token)]
MAX_ROW = 2**31 - 1
"""Largest row offset or cursor accepted (SQLite's integers end at 2**63 - 1)."""
_AUTH_CHALLENGE = {
    "description": "`Bearer`: how to authenticate",
    "schema": {"type": "string", "enum": ["Bearer"]},
}
ERRORS: dict[int, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Malformed JSON"},
    401: {
        "model": ErrorBody,
        "description": "Missing or malformed bearer token",
        "headers": {"WWW-Authenticate": {**_AUTH_CHALLENGE, "required": True}},
    },
    403: {
        "model": ErrorBody,
        "description": "Wrong token (with `WWW-Authenticate`), or a path outside the allowed roots",
        "headers": {"WWW-Authenticate": _AUTH_CHALLENGE},
    },
    404: {"model": ErrorBody, "description": "Unknown job id"},
    409: {"model": ErrorBody, "description": "Not possible in the job's status; says why"},
    413: {"model": ErrorBody, "description": "Body over the size limit"},
    422: {"model": ErrorBody, "description": "Invalid request or config; names each bad field"},
    503: {"model": ErrorBody, "description": "Ray is unavailable"},
}
"""Error responses by status; every one has the body `ErrorBody` (app.py's handlers). Each
route lists those it can answer, so the OpenAPI document holds no others (and 422 is never
FastAPI's default `HTTPValidationError`, which this service does not send)."""


def errors(*codes: int, said: dict[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """ERRORS of these status codes, and of those in ``said`` with the description given there."""
    out: dict[int | str, dict[str, Any]] = {code: ERRORS[code] for code in codes}
    for code, description in (said or {}).items():
        out[code] = {**ERRORS[code], "description": description}
    return out


def _service(request: Request) -> JobService:
    return request.app.state.service


Service = Annotated[JobService, Depends(_service)]


@router.post(
    "/jobs",
    status_code=202,
    response_model=Accepted,
    dependencies=MUTATING,
    responses={
        202: {
            "description": "Recorded; queued for Ray",
            "headers": {
                "Location": {
                    "description": "The job: `/jobs/{id}`",
                    "required": True,
                    "schema": {"type": "string", "pattern": "^/jobs/[^/]+$"},
                }
            },
        },
        **errors(400, 401, 403, 413, 422),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": JobCreate.model_json_schema()}},
        }
    },
    summary="Submit a job (validated config + name); it runs on Ray",
)
async def submit_job(request: Request, response: Response, service: Service) -> Accepted:
    # The body is parsed here, after the token check, so an unauthenticated request is a 401
    # whatever its body, and malformed JSON is a 400 rather than a validation error.
    raw = await request.body()
    try:
        payload = json.loads(raw)
        deep = too_deep(payload)
    except ValueError as err:
        raise HTTPException(400, f"malformed JSON body: {err}") from None
    except RecursionError:  # nested past the parser's own limit
        deep = True
    if deep:
        raise RequestValidationError(
            [{"loc": ("body",), "msg": f"the body {TOO_DEEP}", "type": "value_error"}]
        )
    try:
        req = JobCreate.model_validate(payload)
    except ValidationError as err:
        errors = err.errors(include_url=False)
        for e in errors:
            e["loc"] = ("body", *e["loc"])
        raise RequestValidationError(errors) from None
    rec = await run_in_threadpool(service.create, req)
    response.headers["Location"] = f"/jobs/{rec.id}"
    return Accepted(id=rec.id, status=rec.status, links=job_links(rec.id))


@router.get(
    "/jobs", response_model=JobList, responses=errors(422), summary="List jobs, newest first"
)
def list_jobs(
    service: Service,
    status: Annotated[list[Status] | None, Query(description="Repeat to match several")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_ROW)] = 0,
) -> dict[str, Any]:
    # Handlers return plain dicts: FastAPI validates them against response_model once
    # (a model instance would be validated twice).
    rows, total = service.list(list(status) if status else None, limit, offset)
    items = [job_summary(r, service.reader) for r in rows]
    return {"items": items, "total": total, "limit": limit, "offset": offset}


@router.get("/jobs/{job_id}", response_model=JobDetail, responses=errors(404, 422))
def get_job(job_id: str, service: Service) -> dict[str, Any]:
    """Status, current stage and step, latest metrics, error if failed, artifact paths."""
    return job_detail(service.get(job_id), service.reader)


@router.get("/jobs/{job_id}/metrics", response_model=MetricsPage, responses=errors(404, 422))
def get_metrics(
    job_id: str,
    service: Service,
    since: Annotated[
        int, Query(ge=0, le=MAX_ROW, description="Row cursor: `next` of the last page")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 5_000,
) -> MetricsPage:
    """The metrics.jsonl time series, one row per logged step; incremental with ?since=."""
    rec = service.get(job_id)
    rows, nxt = service.reader.read(Path(rec.run_dir), since, limit)
    return MetricsPage(job_id=job_id, rows=rows, since=since, next=nxt, status=rec.status)


@router.get(
    "/jobs/{job_id}/eval",
    response_model=Evaluation,
    response_model_exclude_unset=True,
    responses={
        **errors(422, said={404: "Unknown job, or no eval.json yet"}),
        500: {"model": ErrorBody, "description": "eval.json is not of this shape; names where"},
    },
)
def get_eval(job_id: str, service: Service) -> Evaluation:
    """eval.json of the run: per checkpoint, judge scores and win-rates vs the baseline with
    confidence intervals, KL, length and diversity, samples; and a verdict per checkpoint."""
    rec = service.get(job_id)
    data = read_eval(Path(rec.run_dir))
    if data is None:
        raise HTTPException(404, f"job {job_id!r} has no evaluation yet (no eval.json)")
    try:
        return Evaluation.model_validate(data)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise HTTPException(500, f"eval.json of job {job_id!r}: {where}: {first['msg']}") from None


_REPORT_HEADERS = {
    "Content-Security-Policy": {
        "description": "No scripts, a sandboxed page: `"
        + REPORT_HEADERS["Content-Security-Policy"]
        + "`",
        "required": True,
        "schema": {"type": "string", "enum": [REPORT_HEADERS["Content-Security-Policy"]]},
    },
    "X-Content-Type-Options": {"required": True, "schema": {"type": "string", "enum": ["nosniff"]}},
}
_BYTES = {"schema": {"type": "string", "format": "binary"}}


def _report_responses(content: dict[str, Any]) -> dict[int | str, dict[str, Any]]:
    return {
        200: {
            "description": "The file; served with a Content-Security-Policy that allows no scripts",
            "headers": _REPORT_HEADERS,
            "content": content,
        },
        **errors(422, said={404: "Unknown job, or no such plain file in report/"}),
    }


def _report_file(service: JobService, job_id: str, name: str) -> Response:
    rec = service.get(job_id)
    opened = open_report_file(Path(rec.run_dir), name)
    if opened is None:
        raise HTTPException(404, f"job {job_id!r} has no report file {name!r}")
    f, size = opened
    headers = {**REPORT_HEADERS, "Content-Length": str(size)}
    return StreamingResponse(iter_file(f, size), media_type=media_type(name), headers=headers)


# response_class=Response: no default 200 content (FastAPI's JSON one, or the route's media type
# given to the JSON error bodies too); the responses below say what is sent.
@router.get(
    "/jobs/{job_id}/report/",
    response_class=Response,
    responses=_report_responses({"text/html": {"schema": {"type": "string"}}}),
)
def get_report(job_id: str, service: Service) -> Response:
    """The evaluation report (report/index.html of the run folder); its plots are relative
    links to the files below."""
    return _report_file(service, job_id, REPORT_INDEX)


@router.get(
    "/jobs/{job_id}/report/{name}",
    response_class=Response,
    # typed by the file's extension: the report's HTML and PNG plots, or anything else there
    responses=_report_responses(
        {"text/html": {"schema": {"type": "string"}}, "image/png": _BYTES, "*/*": _BYTES}
    ),
)
def get_report_file(job_id: str, name: str, service: Service) -> Response:
    """A file of the report folder (plots): plain files directly in RUN_DIR/report only."""
    return _report_file(service, job_id, name)


LOG_EVENT = {
    "type": "object",
    "description": "A log line (event `message`, the default); `warning`: Ray does not answer, "
    "the stream goes on; `end`: the job ended, `data` is its status",
    "required": ["data"],
    "properties": {
        "event": {"type": "string", "enum": ["message", "warning", "end"]},
        "data": {"type": "string"},
        "retry": {"type": "integer", "minimum": 0},
    },
}


def _sse(data: str, event: str | None = None) -> str:
    lines = "".join(f"data: {line}\n" for line in data.split("\n"))
    return (f"event: {event}\n" if event else "") + lines + "\n"


@router.get(
    "/jobs/{job_id}/logs",
    response_class=Response,
    responses={
        200: {
            "description": "`follow=true`: Server-Sent Events; `follow=false`: the log as text",
            "content": {
                # OpenAPI 3.1: the schema of each event
                "text/event-stream": {"schema": LOG_EVENT},
                "text/plain": {"schema": {"type": "string"}},
            },
        },
        **errors(
            404, 422, said={503: "Ray is unavailable (`follow=false`; a stream warns instead)"}
        ),
    },
)
async def get_logs(
    job_id: str,
    request: Request,
    service: Service,
    follow: bool = True,
    tail: Annotated[int | None, Query(ge=1, le=100_000)] = None,
) -> Response:
    """The driver's log from Ray. ``follow=true`` (default): Server-Sent Events, one `data:`
    line per log line, until the job ends (then an `end` event); ``follow=false``: plain text."""
    await run_in_threadpool(service.get, job_id)
    if not follow:
        out = await run_in_threadpool(service.logs, job_id)
        if tail:
            out = "\n".join(out.splitlines()[-tail:])
        return PlainTextResponse(out)

    interval = service.settings.poll_interval_s

    async def events() -> AsyncIterator[str]:
        sent, first, idle = 0, True, 0.0
        yield "retry: 2000\n\n"
        while not await request.is_disconnected():
            rec = await run_in_threadpool(service.get, job_id)
            done = rec.status in TERMINAL
            try:
                out = await run_in_threadpool(service.logs, job_id)
            except RayUnavailable as err:
                yield _sse(str(err), "warning")
                await asyncio.sleep(max(interval, 2.0))
                continue
            if len(out) < sent:
                sent = 0
            new = out[sent:]
            if not done:  # hold back a partly written last line
                new = new[: new.rfind("\n") + 1]
            sent += len(new)
            lines = new.splitlines()
            if first and tail:
                lines = lines[-tail:]
            first = False
            for line in lines:
                yield _sse(line)
            if done:
                yield _sse(rec.status, "end")
                return
            idle = 0.0 if lines else idle + interval
            if idle >= 15:
                yield ": keep-alive\n\n"
                idle = 0.0
            await asyncio.sleep(interval)

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.post(
    "/jobs/{job_id}/cancel",
    status_code=202,
    response_model=Accepted,
    dependencies=MUTATING,
    responses=errors(401, 403, 404, 422, said={409: "The job has already finished"}),
)
def cancel_job(job_id: str, service: Service) -> Accepted:
    """Ask Ray to stop the job; it turns `cancelled` once Ray reports it stopped."""
    rec = service.request_cancel(job_id)
    return Accepted(
        id=rec.id,
        status=rec.status,
        cancel_requested=True,
        attempt=rec.attempt,
        links=job_links(rec.id),
    )


@router.post(
    "/jobs/{job_id}/resume",
    status_code=202,
    response_model=Accepted,
    dependencies=MUTATING,
    responses=errors(
        401,
        403,
        404,
        422,
        said={
            409: "The job is queued, pending, running or succeeded, or its run folder cannot "
            "be resumed; says which"
        },
    ),
)
def resume_job(job_id: str, service: Service) -> Accepted:
    """Continue a failed or cancelled job from its run folder: it is queued again and runs
    `instructray run --resume RUN_DIR` on Ray as its next attempt (Ray submission id
    `<id>-resume<N>`); finished stages are skipped, the unfinished one continues from its
    newest train state."""
    rec = service.request_resume(job_id)
    return Accepted(id=rec.id, status=rec.status, attempt=rec.attempt, links=job_links(rec.id))


@router.get("/presets", summary="Preset names usable as {'preset': NAME}")
def presets(service: Service) -> dict[str, list[str]]:
    return {"presets": service.presets()}


@router.get(
    "/healthz", response_model=Health, responses=errors(said={503: "The database does not answer"})
)
def healthz(service: Service) -> Health:
    try:
        with service.db.session() as s:
            s.execute(text("SELECT 1"))
    except Exception as err:
        raise HTTPException(503, f"database unavailable: {type(err).__name__}: {err}") from None
    if service.ray_error:
        ray = f"unreachable: {service.ray_error}"
    else:
        ray = "ok" if service.ray_ok_at else "not contacted yet"
    return Health(status="ok", database="ok", ray=ray, ray_address=service.settings.ray_address)


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
def prometheus_metrics(request: Request) -> Response:
    body = request.app.state.telemetry.render()
    return Response(body, media_type=CONTENT_TYPE_LATEST)
