"""The dashboard in a real headless browser (Debian's chromium, driven by Playwright) against the
real API on 127.0.0.1 and a real local Ray: submit a tiny job from the form, watch its charts
grow, cancel it with the button; screenshots go to test-artifacts/."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import TOKEN
from tests.api.helpers import ApiProcess, RayCluster
from tests.api.test_e2e_ray import api_env

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


@pytest.fixture(scope="module")
def api(ray_jobs_cluster: RayCluster, artifacts_dir: Path) -> Iterator[ApiProcess]:
    server = ApiProcess(api_env(ray_jobs_cluster), artifacts_dir / "api-browser-server.log")
    server.start()
    yield server
    server.stop()


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
    frozen = page.evaluate(POINTS_JS, "loss")
    page.wait_for_timeout(2500)
    assert page.evaluate(POINTS_JS, "loss") == frozen  # stopped: no new steps
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
