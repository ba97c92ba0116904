"""The evaluation of a run over real HTTP: GET /jobs/{id}/eval (eval.json), the report folder
(confined, typed, under a no-script Content-Security-Policy), and the warnings and verdicts in
the job's detail; run folders written here in the shapes the eval stage writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest

from instructray.api.settings import Settings
from tests.api.evaluated_run import (
    EVAL,
    REPORT_HTML,
    VERDICTS,
    WARNINGS,
    png,
    write_evaluation,
    write_summary,
)
from tests.api.helpers import submit

SECRET = "top-secret-summary-7c1e"


@pytest.fixture
def evaluated(client: httpx.Client, settings: Settings) -> tuple[str, Path]:
    """A job whose run folder holds eval.json, report/ and a summary with warnings."""
    job_id = submit(client)
    run_dir = settings.runs_root / job_id
    write_summary(run_dir)
    write_evaluation(run_dir)
    return job_id, run_dir


def test_a_job_before_its_evaluation_has_no_eval_report_or_warnings(
    client: httpx.Client, settings: Settings
) -> None:
    job_id = submit(client)
    run_dir = settings.runs_root / job_id
    write_summary(run_dir, warnings=None)  # a run from before warnings existed
    r = client.get(f"/jobs/{job_id}/eval")
    assert r.status_code == 404
    assert r.json() == {"detail": f"job {job_id!r} has no evaluation yet (no eval.json)"}
    assert client.get(f"/jobs/{job_id}/report/").status_code == 404
    job = client.get(f"/jobs/{job_id}").json()
    assert job["warnings"] == [] and job["evaluation"] is None
    assert set(job["links"]) == {"self", "metrics", "logs", "cancel"}
    assert "eval" not in job["artifacts"] and "report" not in job["artifacts"]

    (run_dir / "eval.json").write_text(json.dumps(EVAL)[:200])  # caught while being written
    assert client.get(f"/jobs/{job_id}/eval").status_code == 404
    job = client.get(f"/jobs/{job_id}").json()
    assert job["evaluation"] is None and "eval" not in job["links"]

    unknown = client.get("/jobs/ir-nope/eval")
    assert unknown.status_code == 404 and unknown.json()["detail"] == "no job 'ir-nope'"
    assert client.get("/jobs/ir-nope/report/").json()["detail"] == "no job 'ir-nope'"


def test_eval_json_warnings_and_verdicts(client: httpx.Client, evaluated: tuple[str, Path]) -> None:
    job_id, run_dir = evaluated
    r = client.get(f"/jobs/{job_id}/eval")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == EVAL  # as written: nothing dropped, no defaults added
    assert r.json()["checkpoints"]["ppo"]["win_rate"]["labeler"]["low"] == 0.66

    job = client.get(f"/jobs/{job_id}").json()
    assert job["warnings"] == WARNINGS
    assert job["evaluation"] == VERDICTS
    assert job["evaluation"]["ppo"]["possible_reward_hacking"] is True
    assert job["links"]["eval"] == f"/jobs/{job_id}/eval"
    assert job["links"]["report"] == f"/jobs/{job_id}/report/"
    assert job["artifacts"]["eval"] == str(run_dir / "eval.json")
    assert job["artifacts"]["report"] == str(run_dir / "report" / "index.html")

    # A rewritten eval.json is read again (the cache keys on the file's identity and size).
    changed = {**EVAL, "num_prompts": 4000, "verdicts": {}}
    (run_dir / "eval.json").write_text(json.dumps(changed))
    assert client.get(f"/jobs/{job_id}/eval").json()["num_prompts"] == 4000
    assert client.get(f"/jobs/{job_id}").json()["evaluation"] == {}


def test_an_eval_json_of_the_wrong_shape_is_named_and_does_not_break_the_job_view(
    client: httpx.Client, evaluated: tuple[str, Path]
) -> None:
    job_id, run_dir = evaluated
    bad = {**EVAL, "verdicts": {"ppo": "aligned"}}
    (run_dir / "eval.json").write_text(json.dumps(bad))
    r = client.get(f"/jobs/{job_id}/eval")
    assert r.status_code == 500
    assert r.json()["detail"].startswith(f"eval.json of job {job_id!r}: verdicts.ppo: ")
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["warnings"] = [*WARNINGS, {"stage": "ppo", "step": 12}, "not a warning"]
    (run_dir / "summary.json").write_text(json.dumps(summary))
    job = client.get(f"/jobs/{job_id}")
    assert job.status_code == 200
    assert job.json()["evaluation"] == {} and job.json()["warnings"] == WARNINGS


def test_report_files_are_typed_and_served_under_a_no_script_csp(
    client: httpx.Client, evaluated: tuple[str, Path]
) -> None:
    job_id, _ = evaluated
    for path in (f"/jobs/{job_id}/report/", f"/jobs/{job_id}/report/index.html"):
        r = client.get(path)
        assert r.status_code == 200, path
        assert r.headers["content-type"] == "text/html; charset=utf-8"
        assert r.text == REPORT_HTML
        csp = [d.strip() for d in r.headers["content-security-policy"].split(";")]
        assert "default-src 'none'" in csp and "script-src 'none'" in csp and "sandbox" in csp
        assert "frame-ancestors 'self'" in csp and "img-src 'self' data:" in csp
        assert not any("unsafe-eval" in d or d.startswith("script-src-") for d in csp)
        assert r.headers["x-content-type-options"] == "nosniff"
    image = client.get(f"/jobs/{job_id}/report/win_rates.png")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.content == png() and image.headers["content-length"] == str(len(png()))
    assert "script-src 'none'" in image.headers["content-security-policy"]
    # Without the slash the page's relative <img src> would miss: redirected to the folder.
    bare = client.get(f"/jobs/{job_id}/report", follow_redirects=False)
    assert bare.status_code in (307, 308)
    assert httpx.URL(bare.headers["location"]).path == f"/jobs/{job_id}/report/"


def test_report_is_confined_to_plain_files_of_the_report_folder(
    client: httpx.Client, settings: Settings, evaluated: tuple[str, Path]
) -> None:
    job_id, run_dir = evaluated
    (run_dir / "secret.txt").write_text(SECRET)
    report = run_dir / "report"
    (report / "sub").mkdir()
    (report / "sub" / "x.png").write_bytes(png())
    (report / ".hidden.png").write_bytes(png())
    (report / "up.html").symlink_to(run_dir / "secret.txt")
    (report / "rel.html").symlink_to("../secret.txt")
    (report / "etc.txt").symlink_to("/etc/hostname")
    os.mkfifo(report / "fifo.png")
    base = f"/jobs/{job_id}/report/"
    attempts = [
        "..%2Fsecret.txt",
        "%2e%2e%2Fsecret.txt",
        "%2e%2e/secret.txt",
        "%2e%2e",
        "..%5Csecret.txt",
        "%2Fetc%2Fhostname",
        "sub%2Fx.png",
        "sub/x.png",
        "sub",
        ".hidden.png",
        "up.html",
        "rel.html",
        "etc.txt",
        "fifo.png",
        "index.html%00.png",
        "missing.png",
    ]
    for attempt in attempts:
        r = client.get(base + attempt)
        # httpx sends the path as written (no dot-segment folding of the encoded forms).
        assert r.request.url.raw_path.decode().endswith(attempt), attempt
        assert r.status_code == 404, (attempt, r.status_code, r.text[:200])
        assert SECRET not in r.text and r.headers["content-type"] == "application/json"
    named = client.get(base + "up.html").json()["detail"]
    assert named == f"job {job_id!r} has no report file 'up.html'"

    # A report folder that is itself a symlink (to a real report elsewhere) is refused too.
    other = submit(client)
    elsewhere = settings.runs_root / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "index.html").write_text(SECRET)
    (settings.runs_root / other / "report").symlink_to(elsewhere)
    for path in ("", "index.html"):
        r = client.get(f"/jobs/{other}/report/{path}")
        assert r.status_code == 404 and SECRET not in r.text
    assert "report" not in client.get(f"/jobs/{other}").json()["links"]


def test_openapi_describes_the_evaluation_endpoints_and_fields(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    assert {"/jobs/{job_id}/eval", "/jobs/{job_id}/report/", "/jobs/{job_id}/report/{name}"} <= set(
        paths
    )
    ok = paths["/jobs/{job_id}/eval"]["get"]["responses"]
    assert ok["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Evaluation"
    }
    assert ok["404"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    report = paths["/jobs/{job_id}/report/{name}"]["get"]["responses"]
    assert {"text/html", "image/png"} <= set(report["200"]["content"])
    schemas = spec["components"]["schemas"]
    detail = schemas["JobDetail"]["properties"]
    assert detail["warnings"]["items"] == {"$ref": "#/components/schemas/HackingWarning"}
    assert {"$ref": "#/components/schemas/Verdict"} in [
        s.get("additionalProperties") for s in detail["evaluation"]["anyOf"]
    ]
    assert "links" in detail
    checkpoint = schemas["CheckpointEval"]["properties"]
    assert checkpoint["win_rate"]["additionalProperties"] == {
        "$ref": "#/components/schemas/Interval"
    }
    assert schemas["HackingWarning"]["required"] == ["message"]
