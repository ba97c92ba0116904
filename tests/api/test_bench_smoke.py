"""bench/api_load.py still runs: a small bounded load (the real one is 1,000 requests, 50 at a
time) against its own server, with no 5xx."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.api.helpers import REPO


def test_load_benchmark_runs_small(tmp_path: Path) -> None:
    out = tmp_path / "api_load.json"
    args = ["--requests", "150", "--concurrency", "10", "--seed-jobs", "4", "--rows", "50"]
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "api_load.py"), *args, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    report = json.loads(out.read_text())
    assert report == json.loads(proc.stdout)
    assert report["requests"] == 150 and report["server_errors_5xx_or_failed"] == 0
    assert report["status_read_p99_ms"] > 0
    statuses = {s for kind in report["by_kind"].values() for s in kind["statuses"]}
    assert statuses <= {"200", "202", "409", "422"}
