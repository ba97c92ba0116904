"""The FastAPI app (`create_app`) and `main()`, which serves it with uvicorn:
``python -m instructray.api [--host H] [--port P]``."""

from __future__ import annotations

import argparse
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from instructray.api.configs import InvalidConfig, PathNotAllowed
from instructray.api.db import Database
from instructray.api.jobs import JobConflict, JobNotFound, JobService
from instructray.api.observability import MetricsMiddleware, Telemetry
from instructray.api.ray_jobs import RayJobs, RayJobsClient, RayUnavailable
from instructray.api.routes import router
from instructray.api.security import BodySizeLimit
from instructray.api.settings import Settings

STATIC = Path(__file__).resolve().parent / "static"
log = logging.getLogger("instructray.api")


def _error(status: int, detail: str, errors: list[dict[str, str]] | None = None, **kw: Any):
    body: dict[str, Any] = {"detail": detail}
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, **kw)


def _field_of(loc: tuple | list) -> str:
    return ".".join(str(p) for p in loc) or "<root>"


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_r: Request, err: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": _field_of(e["loc"]), "message": e["msg"].removeprefix("Value error, ")}
            for e in err.errors()
        ]
        if any(e["type"] == "json_invalid" for e in err.errors()):
            return _error(400, "malformed JSON body", errors)
        shown = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return _error(422, f"invalid request: {shown}", errors)

    @app.exception_handler(InvalidConfig)
    async def _invalid_config(_r: Request, err: InvalidConfig) -> JSONResponse:
        errors = [{"field": e.field, "message": e.message} for e in err.errors]
        return _error(422, f"invalid configuration: {err}", errors)

    @app.exception_handler(PathNotAllowed)
    async def _path(_r: Request, err: PathNotAllowed) -> JSONResponse:
        message = str(err).removeprefix(f"{err.field}: ")
        return _error(403, f"path not allowed: {err}", [{"field": err.field, "message": message}])

    @app.exception_handler(JobNotFound)
    async def _missing(_r: Request, err: JobNotFound) -> JSONResponse:
        return _error(404, str(err.args[0]))

    @app.exception_handler(JobConflict)
    async def _conflict(_r: Request, err: JobConflict) -> JSONResponse:
        return _error(409, str(err))

    @app.exception_handler(RayUnavailable)
    async def _ray_down(_r: Request, err: RayUnavailable) -> JSONResponse:
        return _error(503, f"Ray is unavailable: {err}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> JSONResponse:
        headers = getattr(err, "headers", None)
        allowed = _allowed_methods(request) if err.status_code == 405 else ""
        if allowed:
            headers = {**(headers or {}), "Allow": allowed}
        return _error(err.status_code, str(err.detail), headers=headers)


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at the request's path. Starlette's 405 names only those
    of the first route that matched the path: `Allow: POST` for /jobs, which also has GET."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        route_methods = getattr(route, "methods", None)
        if route_methods and route.matches(request.scope)[0] != Match.NONE:
            methods |= route_methods
    return ", ".join(sorted(methods))


def create_app(settings: Settings | None = None, ray: RayJobs | None = None) -> FastAPI:
    """The job service. ``ray`` defaults to the Jobs API at ``settings.ray_address``."""
    settings = settings or Settings.from_env()
    token, generated = settings.resolve_token()
    db = Database(settings.db_url)
    db.create_all()
    service = JobService(settings, db, ray or RayJobsClient(settings.ray_address))
    telemetry = Telemetry(service.counts)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Few threads for the sync handlers: with many, short handlers that release the GIL on
        # every file or database call wait behind each other (a GIL convoy) and tails grow.
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.threads
        if generated:
            log.warning(
                "INSTRUCTRAY_API_TOKEN is not set; mutating requests need this generated "
                "token for this run: %s",
                token,
            )
        log.info(
            "jobs database %s, runs in %s, Ray at %s",
            db.url,
            settings.runs_root,
            settings.ray_address,
        )
        await run_in_threadpool(service.start)
        try:
            yield
        finally:
            await run_in_threadpool(service.stop)
            db.dispose()

    app = FastAPI(
        title="instructray job service",
        version="0.1.0",
        description="Submit and watch InstructGPT alignment jobs (SFT → RM → PPO-ptx, DPO) "
        "that run on Ray. Mutating endpoints need `Authorization: Bearer <token>`.",
        lifespan=lifespan,
        docs_url=None,
    )
    app.state.settings = settings
    app.state.service = service
    app.state.token = token
    app.state.telemetry = telemetry
    _install_error_handlers(app)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        # Swagger UI from the vendored copy, so the docs work without internet access.
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="instructray job service — API docs",
            swagger_js_url="/static/vendor/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url="/static/vendor/swagger-ui/swagger-ui.css",
            swagger_favicon_url="/static/favicon.svg",
        )

    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, telemetry=telemetry)
    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(
        prog="python -m instructray.api",
        description="The instructray job service. Settings: INSTRUCTRAY_API_* variables "
        "(see api/settings.py); --host/--port override them.",
    )
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = Settings.from_env(**overrides)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # Open log streams (SSE) would otherwise hold a restart up indefinitely.
        timeout_graceful_shutdown=3,
    )
