"""The dashboard in a real headless browser (Debian's chromium, driven by Playwright) against the
real API on 127.0.0.1 and a real local Ray: submit a tiny job from the form, watch its charts
grow, cancel it with the button; resume an interrupted job with its button (Ray stand-in);
screenshots go to test-artifacts/."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from instructray.api.app import create_app
from instructray.api.settings import Settings
from tests.api.conftest import AUTH, TOKEN
from tests.api.evaluated_run import (
    PPO_MESSAGE,
    WARNINGS,
    monitor_rows,
    write_evaluation,
    write_summary,
)
from tests.api.fake_ray import FakeRayJobs
from tests.api.helpers import (
    ApiProcess,
    RayCluster,
    api_service,
    serve_in_thread,
    wait_for,
    write_rows,
)

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
POINTS_JS = """key => {
  const chart = Chart.getChart(`chart-${key}`);
  return chart ? chart.data.datasets.reduce((n, d) => n + d.data.length, 0) : 0;
}"""
SERIES_JS = """key => Object.fromEntries(
  Chart.getChart(`chart-${key}`).data.datasets.map(d => [d.label, d.data.map(p => [p.x, p.y])])
)"""


@pytest.fixture(scope="module")
def api(ray_jobs_cluster: RayCluster, artifacts_dir: Path) -> Iterator[ApiProcess]:
    with api_service(ray_jobs_cluster, artifacts_dir, "browser", TOKEN) as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def test_submit_watch_the_charts_grow_and_cancel(
    api: ApiProcess, browser, artifacts_dir: Path
) -> None:
    page = browser.new_page(viewport={"width": 1500, "height": 1250})
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(api.url)
    page.fill("#token", TOKEN)
    page.dispatch_event("#token", "change")
    page.wait_for_selector("#job-source option[value='preset:tiny']", state="attached")
    page.select_option("#job-source", "preset:tiny")
    page.fill("#job-name", "browser-pretrain")
    page.fill("#job-yaml", "stages: [pretrain]\noutput.tensorboard: false\n")
    page.click("#submit-btn")
    page.wait_for_selector("#submit-result.ok", timeout=30_000)
    job_id = page.inner_text("#submit-result").removeprefix("accepted: ").strip()
    assert job_id.startswith("ir-")
    page.wait_for_selector(f"#jobs tr[data-id='{job_id}']", timeout=15_000)

    # The loss and throughput charts fill in while it trains, a poll at a time.
    page.wait_for_function(f"() => ({POINTS_JS})('loss') >= 3", timeout=240_000, polling=500)
    first = page.evaluate(POINTS_JS, "loss")
    page.wait_for_function(
        f"() => ({POINTS_JS})('loss') >= {first + 3}", timeout=60_000, polling=500
    )
    assert page.evaluate(POINTS_JS, "throughput") >= first + 3
    assert page.inner_text("#d-status") == "running"
    assert "pretrain · step" in page.inner_text("#d-stage")
    page.wait_for_function(
        "() => document.querySelector('#log').textContent.includes('[pretrain] step')",
        timeout=60_000,
    )
    page.screenshot(path=str(artifacts_dir / "dashboard-running.png"), full_page=True)

    page.click("#cancel-btn")
    page.wait_for_selector("#d-status.cancelled", timeout=90_000)
    final = httpx.get(f"{api.url}/jobs/{job_id}", timeout=10).json()["metrics_count"]
    page.wait_for_function(f"() => ({POINTS_JS})('loss') === {final}", timeout=15_000)
    page.wait_for_timeout(2500)
    assert page.evaluate(POINTS_JS, "loss") == final  # stopped: no new steps
    assert httpx.get(f"{api.url}/jobs/{job_id}", timeout=10).json()["metrics_count"] == final
    page.wait_for_selector("#cancel-btn", state="hidden")
    page.wait_for_selector(f"#jobs tr[data-id='{job_id}'] .badge.cancelled", timeout=10_000)
    page.screenshot(path=str(artifacts_dir / "dashboard-cancelled.png"), full_page=True)
    assert httpx.get(f"{api.url}/jobs/{job_id}", timeout=10).json()["status"] == "cancelled"
    assert not errors, errors


def test_api_docs_render_offline(api: ApiProcess, browser) -> None:
    page = browser.new_page()
    page.goto(f"{api.url}/docs")
    page.get_by_text("/jobs/{job_id}/cancel").first.wait_for(timeout=30_000)
    assert "instructray job service" in page.inner_text("body")


def synthetic_run_rows() -> list[dict]:
    """One row per step of every stage, with the keys the pipeline logs (see run_log.py)."""
    rows, t = [], time.time()
    per_stage = {
        "pretrain": lambda i: {"loss": 7.6 - 0.05 * i, "lr": 2e-3, "tokens_per_s": 4000 + 10 * i},
        "sft": lambda i: {"loss": 5.6 - 0.01 * i, "lr": 5e-4, "tokens_per_s": 3500 + 5 * i},
        "rm": lambda i: {"loss": 0.69 - 0.004 * i, "accuracy": 0.5 + 0.01 * i, "rankings_per_s": 35},
        "ppo": lambda i: {
            "loss": -0.02, "reward_mean": 0.4 + 0.05 * i, "kl": 0.02 * i, "approx_kl": 0.002,
            "value_loss": 0.8 / (i + 1), "ptx_loss": 5.6, "tokens_per_s": 2800 + 40 * i,
        },
        "dpo": lambda i: {
            "loss": 0.69 - 0.003 * i, "reward_margin": 0.01 * i, "reward_accuracy": 0.5 + 0.01 * i,
            "pairs_per_s": 60,
        },
    }  # fmt: skip
    for stage, metrics in per_stage.items():
        for i in range(1, 16):
            t += 0.5
            rows.append({"stage": stage, "step": i, "time": t, **metrics(i)})
    return rows


def test_every_chart_plots_its_metrics(
    settings: Settings, fake_ray: FakeRayJobs, browser, artifacts_dir: Path
) -> None:
    """All five charts against a finished run of every stage (Ray stand-in, so this needs no
    cluster): reward, KL, losses, RM accuracy, throughput each get their series."""
    with serve_in_thread(create_app(settings, ray=fake_ray)) as url:
        r = httpx.post(f"{url}/jobs", json={"name": "full-recipe", "preset": "tiny"}, headers=AUTH)
        job_id = r.json()["id"]
        wait_for(lambda: job_id in fake_ray.jobs, 10, "the submission", 0.05)
        run_dir = settings.runs_root / job_id
        rows = synthetic_run_rows()
        assert len(rows) == 75
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        fake_ray.log_text[job_id] = "[ppo] step 15/15 reward_mean=1.15 kl=0.3\ndone\n"
        fake_ray.set(job_id, "SUCCEEDED", "Job finished successfully.")
        page = browser.new_page(viewport={"width": 1500, "height": 1250})
        page.goto(f"{url}/#job={job_id}")
        page.wait_for_selector("#d-status.succeeded", timeout=20_000)
        # 75 steps: a loss each, plus PPO's value and ptx losses
        page.wait_for_function(f"() => ({POINTS_JS})('loss') === 105", timeout=20_000)
        labels = page.evaluate(
            "k => Chart.getChart(`chart-${k}`).data.datasets.map(d => d.label)", "reward"
        )
        assert labels == ["ppo reward (RM score)", "dpo chosen − rejected"]
        expected = {"reward": 30, "kl": 30, "accuracy": 30, "throughput": 75, "loss": 105}
        assert {k: page.evaluate(POINTS_JS, k) for k in expected} == expected
        assert page.locator("figure.empty").count() == 0
        assert page.is_hidden("#cancel-btn")
        page.wait_for_function("() => document.querySelector('#log').textContent.includes('done')")
        page.screenshot(path=str(artifacts_dir / "dashboard-all-charts.png"), full_page=True)


def test_reward_hacking_badge_monitor_charts_and_evaluation_panel(
    settings: Settings, fake_ray: FakeRayJobs, browser, artifacts_dir: Path
) -> None:
    """While PPO runs, a monitored step with hacking_warning == 1 raises the badge and the
    monitor's charts appear; once the run has summary warnings, eval.json and a report, the job
    page shows their messages, the win-rate table with CIs and the report in a sandboxed frame."""
    with serve_in_thread(create_app(settings, ray=fake_ray)) as url:
        r = httpx.post(f"{url}/jobs", json={"name": "hacked", "preset": "tiny"}, headers=AUTH)
        job_id = r.json()["id"]
        wait_for(lambda: job_id in fake_ray.jobs, 10, "the submission", 0.05)
        fake_ray.set(job_id, "RUNNING")
        run_dir = settings.runs_root / job_id
        rows = monitor_rows(time.time())
        write_rows(run_dir, rows[:9])  # steps 0..8: monitored, no warning yet
        page = browser.new_page(viewport={"width": 1500, "height": 1600})
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(f"{url}/#job={job_id}")
        page.wait_for_selector("#d-status.running", timeout=20_000)
        page.wait_for_function(f"() => ({POINTS_JS})('monitor') === 20", timeout=20_000)
        page.wait_for_selector("#chart-monitor", state="visible", timeout=5_000)
        page.wait_for_selector("#chart-winrate", state="visible", timeout=5_000)
        assert page.is_hidden("#d-hacking") and page.is_hidden("#evaluation")

        write_rows(run_dir, rows[9:])  # steps 9, 10 (monitored, warning) and 11
        page.wait_for_selector("#d-hacking", state="visible", timeout=20_000)
        assert page.inner_text("#d-hacking") == "reward hacking?"
        assert page.inner_text("#d-warnings li").startswith(
            "ppo step 10: reward hacking? the monitor raised a warning"
        )
        series = page.evaluate(SERIES_JS, "monitor")
        assert series["proxy (reward model)"] == [[s, 0.1 * s] for s in range(0, 12, 2)]
        assert series["gold: labeler"] == [[s, 0.05 * s] for s in range(0, 12, 2)]
        assert set(series) == {
            "proxy (reward model)", "gold: judge_heldout", "gold: labeler", "gold: vader",
            "reward hacking warning",
        }  # fmt: skip
        assert series["reward hacking warning"] == [[10, 1.0]]
        assert page.evaluate(SERIES_JS, "winrate")["gold: vader"][-1] == [10, 0.5 - 0.01 * 10 * 2]

        write_summary(run_dir)
        write_evaluation(run_dir)
        fake_ray.set(job_id, "SUCCEEDED", "Job finished successfully.")
        page.wait_for_selector("#evaluation", state="visible", timeout=20_000)
        page.wait_for_selector("#d-status.succeeded", timeout=20_000)
        items = page.locator("#d-warnings li").all_inner_texts()
        assert items == [f"ppo step 10: {WARNINGS[0]['message']}"]  # the row's is covered
        verdict = page.inner_text("#eval-verdicts li[data-checkpoint='ppo']")
        assert PPO_MESSAGE in verdict and "not aligned" in verdict and "reward hacking?" in verdict
        cell = "#eval-winrates td[data-checkpoint='ppo'][data-judge='{}']"
        assert page.inner_text(cell.format("labeler")) == "0.71 (0.66–0.76)"
        assert page.inner_text(cell.format("rm")) == "0.77 (0.73–0.81)"
        assert page.inner_text(cell.format("judge_heldout")) == "0.44 (0.39–0.49)"
        assert page.get_attribute(cell.format("labeler"), "class") == "better"
        assert page.locator("#eval-winrates tbody tr").count() == 1  # sft is the baseline
        assert "95% CI" in page.inner_text("#eval-caption")

        frame_el = page.wait_for_selector("#eval-report-frame[src]", timeout=10_000)
        assert frame_el.get_attribute("sandbox") == ""
        assert frame_el.get_attribute("src") == f"/jobs/{job_id}/report/"
        assert page.get_attribute("#eval-report-link", "href") == f"/jobs/{job_id}/report/"
        frame = frame_el.content_frame()
        frame.wait_for_selector("#plot")
        frame.wait_for_function("() => document.querySelector('#plot').complete", timeout=10_000)
        assert frame.evaluate("() => document.querySelector('#plot').naturalWidth") == 4
        assert frame.evaluate("() => document.title") == "eval report"  # its script never ran
        page.screenshot(path=str(artifacts_dir / "dashboard-evaluation.png"), full_page=True)
        assert not errors, errors


def loss_row(step: int, loss: float) -> dict:
    return {"stage": "sft", "step": step, "time": 1000.0 + step, "loss": loss}


def test_resume_button_continues_an_interrupted_job(
    settings: Settings, fake_ray: FakeRayJobs, browser, artifacts_dir: Path
) -> None:
    """A job whose driver a signal stopped (Ray: FAILED; summary.json: interrupted) shows so;
    a click on Resume queues it again, it runs `run --resume` as `<id>-resume1`, and the page
    follows that attempt: status, attempt number, its log, and the metrics it rewrote."""
    with serve_in_thread(create_app(settings, ray=fake_ray)) as url:
        r = httpx.post(f"{url}/jobs", json={"name": "to-resume", "preset": "tiny"}, headers=AUTH)
        job_id = r.json()["id"]
        wait_for(lambda: job_id in fake_ray.jobs, 10, "the submission", 0.05)
        run_dir = settings.runs_root / job_id
        write_rows(run_dir, [loss_row(1, 5.0), loss_row(2, 4.9), loss_row(3, 4.8)])
        summary = {"status": "interrupted", "error": "sft stage interrupted", "stages": {}}
        (run_dir / "summary.json").write_text(json.dumps(summary))
        fake_ray.set(job_id, "FAILED", "Job entrypoint command failed with exit code 143")
        page = browser.new_page(viewport={"width": 1500, "height": 1250})
        errors: list[str] = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(f"{url}/#job={job_id}")
        page.fill("#token", TOKEN)
        page.wait_for_selector("#d-status.failed", timeout=20_000)
        page.wait_for_function(f"() => ({POINTS_JS})('loss') === 3", timeout=20_000)
        assert page.is_visible("#d-interrupted") and page.is_visible("#resume-btn")
        assert page.is_hidden("#cancel-btn") and page.is_hidden("#d-attempt")

        page.click("#resume-btn")
        wait_for(lambda: len(fake_ray.submissions) == 2, 10, "the resume's submission", 0.05)
        assert fake_ray.submissions[1][:2] == (
            f"{job_id}-resume1",
            f"instructray run --resume {run_dir}",
        )
        # The resumed driver keeps step 1, moves 2 and 3 aside, records that, trains on.
        resumed = [loss_row(1, 5.0), *(loss_row(s, 5.0 - 0.1 * s - 0.3) for s in (2, 3, 4, 5))]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in resumed))
        summary = {**summary, "status": "running", "error": None}
        summary["resumes"] = [{"stage": "sft", "after_step": 1, "discarded_lines": 2, "time": 1}]
        (run_dir / "summary.json").write_text(json.dumps(summary))
        fake_ray.log_text[f"{job_id}-resume1"] = "[sft] resumed after step 1\n"
        fake_ray.set(f"{job_id}-resume1", "RUNNING", "Job is currently running.")
        page.wait_for_selector("#d-status.running", timeout=20_000)
        assert page.inner_text("#d-attempt") == "attempt 2"
        assert page.get_attribute("#d-attempt", "title") == f"Ray job {job_id}-resume1"
        assert page.is_hidden("#d-interrupted") and page.is_hidden("#resume-btn")
        assert page.is_visible("#cancel-btn")
        page.wait_for_function(
            "() => document.querySelector('#log').textContent.includes('resumed after step 1')",
            timeout=20_000,
        )
        want = [r["loss"] for r in resumed]
        wait_for(
            lambda: [y for _, y in page.evaluate(SERIES_JS, "loss")["sft loss"]] == want,
            20,
            "the loss chart to show the resumed run",
            0.2,
        )
        assert page.inner_text("#d-resumes") == "sft after step 1"
        row = f"#jobs tr[data-id='{job_id}']"
        page.wait_for_selector(f"{row} .badge.running", timeout=10_000)
        assert page.inner_text(f"{row} .attempt") == "↻1"
        page.screenshot(path=str(artifacts_dir / "dashboard-resumed.png"), full_page=True)
        assert not errors, errors
