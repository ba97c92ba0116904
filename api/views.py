"""The JSON shape of a job: its record joined with what its run folder shows so far."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from instructray.api.db import JobRecord, as_utc
from instructray.api.reports import (
    EVAL_FILE,
    REPORT_DIR,
    REPORT_INDEX,
    has_report,
    read_eval,
    restarts_of,
    resumes_of,
    verdicts_of,
    warnings_of,
)
from instructray.api.runfiles import MetricsReader, artifacts, read_summary
from instructray.api.submission import submission_id
from instructray.config import STAGE_ORDER


def job_links(job_id: str, run_dir: Path | None = None) -> dict[str, str]:
    """The endpoints of a job; with its run folder, also eval and report once they exist."""
    base = f"/jobs/{job_id}"
    links = {
        "self": base,
        "metrics": f"{base}/metrics",
        "logs": f"{base}/logs",
        "cancel": f"{base}/cancel",
    }
    if run_dir is not None:
        if read_eval(run_dir) is not None:
            links["eval"] = f"{base}/eval"
        if has_report(run_dir):
            links["report"] = f"{base}/report/"
    return links


def job_summary(rec: JobRecord, reader: MetricsReader, latest: dict | None = None) -> dict:
    """A row of GET /jobs."""
    if latest is None:
        latest = reader.tail(Path(rec.run_dir))[1]
    return {
        "id": rec.id,
        "name": rec.name,
        "status": rec.status,
        "source": rec.source,
        "created_at": as_utc(rec.created_at),
        "started_at": as_utc(rec.started_at),
        "finished_at": as_utc(rec.finished_at),
        "stage": latest.get("stage") if latest else None,
        "step": latest.get("step") if latest else None,
        "cancel_requested": rec.cancel_requested,
        "error": rec.error,
        "attempt": rec.attempt,
    }


def job_detail(rec: JobRecord, reader: MetricsReader) -> dict[str, Any]:
    """GET /jobs/{id}: status, stage and step, latest metrics, error, artifacts, config,
    reward-hacking warnings, the evaluation's verdicts, attempts (resumes, restarts)."""
    run_dir = Path(rec.run_dir)
    summary = read_summary(run_dir)
    run_status = (summary or {}).get("status")
    count, latest = reader.tail(run_dir)
    view = job_summary(rec, reader, latest)
    stages = rec.config.get("stages") or []
    files = artifacts(run_dir, summary)
    evaluation = read_eval(run_dir)
    if evaluation is not None:
        files["eval"] = str(run_dir / EVAL_FILE)
    links = job_links(rec.id, run_dir)
    if "report" in links:
        files["report"] = str(run_dir / REPORT_DIR / REPORT_INDEX)
    view.update(
        message=rec.message,
        updated_at=as_utc(rec.updated_at),
        stages_planned=[s for s in STAGE_ORDER if s in stages],
        latest_metrics=latest,
        metrics_count=count,
        stages=(summary or {}).get("stages") or {},
        artifacts=files,
        config=rec.config,
        warnings=warnings_of(summary),
        ray_submission_id=submission_id(rec.id, rec.attempt),
        run_status=run_status if isinstance(run_status, str) else None,
        resumes=resumes_of(summary),
        restarts=restarts_of(summary),
        evaluation=verdicts_of(evaluation),
        links=links,
    )
    return view
