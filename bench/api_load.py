"""Bounded load test of the job service on loopback.

Starts ``python -m instructray.api`` itself (fresh SQLite file and runs folder in a temp dir),
seeds jobs with a metrics.jsonl each, then sends a fixed number of mixed GET/POST requests
from a fixed number of concurrent connections, and prints (and writes) latency percentiles per
request kind. Exit status 1 if any request got a 5xx or failed outright.

No Ray cluster is started: the service is pointed at a closed loopback port, so POSTed jobs are
validated, recorded and left queued. This measures the API and its database, not training.

    python bench/api_load.py [--requests 1000] [--concurrency 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
VALID = {"preset": "tiny", "overrides": {"stages": ["sft"], "sft.max_examples": 128}}
INVALID = {"preset": "tiny", "overrides": {"sft.batch_size": "lots"}}
MIX = [  # (kind, weight)
    ("status", 50),
    ("list", 15),
    ("metrics", 15),
    ("submit", 10),
    ("submit_invalid", 5),
    ("cancel", 3),
    ("health", 2),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(workdir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {
        **os.environ,
        "INSTRUCTRAY_API_PORT": str(port),
        "INSTRUCTRAY_API_RUNS_ROOT": str(workdir / "runs"),
        "INSTRUCTRAY_API_CONFIGS_ROOT": str(REPO / "configs"),
        "INSTRUCTRAY_API_TOKEN": TOKEN,
        "INSTRUCTRAY_API_RAY_ADDRESS": f"http://127.0.0.1:{free_port()}",  # nothing listens
        "INSTRUCTRAY_API_LOG_LEVEL": "warning",
    }
    log = (workdir / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "instructray.api"], env=env, cwd=REPO, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {(workdir / 'server.log').read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise TimeoutError("server did not start in 60 s")


def seed(url: str, runs: Path, jobs: int, rows: int) -> list[str]:
    """Jobs with a metrics.jsonl as long as a real run's, so status reads do real work."""
    ids = []
    t = time.time()
    for i in range(jobs):
        r = httpx.post(f"{url}/jobs", json={**VALID, "name": f"seed-{i}"}, headers=AUTH)
        r.raise_for_status()
        job_id = r.json()["id"]
        lines = [
            json.dumps({"stage": "sft", "step": s, "time": t + s, "loss": 5 - s / rows, "lr": 1e-4})
            for s in range(1, rows + 1)
        ]
        (runs / job_id / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        ids.append(job_id)
    return ids


def request_for(kind: str, rng: random.Random, ids: list[str]) -> tuple[str, str, dict | None]:
    job = rng.choice(ids)
    if kind == "status":
        return "GET", f"/jobs/{job}", None
    if kind == "list":
        return "GET", rng.choice(["/jobs?limit=20", "/jobs?status=queued&limit=50"]), None
    if kind == "metrics":
        return "GET", f"/jobs/{job}/metrics?since={rng.randrange(0, 500)}", None
    if kind == "submit":
        return "POST", "/jobs", VALID
    if kind == "submit_invalid":
        return "POST", "/jobs", INVALID
    if kind == "cancel":
        return "POST", f"/jobs/{job}/cancel", None
    return "GET", "/healthz", None


async def run_load(url: str, ids: list[str], n: int, concurrency: int, seed_: int) -> list[dict]:
    rng = random.Random(seed_)
    kinds = rng.choices([k for k, _ in MIX], weights=[w for _, w in MIX], k=n)
    plan = [(kind, *request_for(kind, rng, ids)) for kind in kinds]
    queue: asyncio.Queue = asyncio.Queue()
    for item in plan:
        queue.put_nowait(item)
    results: list[dict] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            kind, method, path, body = queue.get_nowait()
            headers = AUTH if method == "POST" else {}
            start = time.perf_counter()
            try:
                r = await client.request(method, path, json=body, headers=headers)
                status = r.status_code
            except httpx.HTTPError as err:
                status = f"error: {type(err).__name__}"
            results.append(
                {"kind": kind, "status": status, "ms": (time.perf_counter() - start) * 1000}
            )

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        await asyncio.wait_for(
            asyncio.gather(*(worker(client) for _ in range(concurrency))), timeout=600
        )
    return results


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return round(ordered[index], 2)


def server_side_status_p99(url: str) -> dict:
    """The service's own view of GET /jobs/{id} (its Prometheus histogram): time from the
    request reaching the app to the response headers, without the client or socket queues."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=30).text
    buckets: list[tuple[float, float]] = []
    for family in text_string_to_metric_families(text):
        if family.name != "instructray_api_request_duration_seconds":
            continue
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name.endswith("_bucket")
                and labels["route"] == "/jobs/{job_id}"
                and labels["method"] == "GET"
            ):
                buckets.append((float(labels["le"]), sample.value))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0
    bound = next((le for le, n in buckets if total and n >= 0.99 * total), None)
    return {"count": total, "p99_at_most_ms": None if bound is None else bound * 1000}


def summarize(results: list[dict], wall_s: float, args: argparse.Namespace) -> dict:
    by_kind: dict[str, dict] = {}
    for kind in sorted({r["kind"] for r in results}):
        rows = [r for r in results if r["kind"] == kind]
        ms = [r["ms"] for r in rows]
        statuses: dict[str, int] = {}
        for r in rows:
            statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
        by_kind[kind] = {
            "count": len(rows),
            "statuses": statuses,
            **{f"p{q}_ms": percentile(ms, q) for q in (50, 95, 99)},
            "max_ms": round(max(ms), 2),
        }
    all_ms = [r["ms"] for r in results]
    server_errors = sum(
        1 for r in results if not isinstance(r["status"], int) or r["status"] >= 500
    )
    return {
        "requests": len(results),
        "concurrency": args.concurrency,
        "wall_s": round(wall_s, 2),
        "requests_per_s": round(len(results) / wall_s, 1),
        "server_errors_5xx_or_failed": server_errors,
        "status_read_p99_ms": by_kind.get("status", {}).get("p99_ms"),
        "all_p50_ms": percentile(all_ms, 50),
        "all_p99_ms": percentile(all_ms, 99),
        "by_kind": by_kind,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_avg_1m_at_end": round(os.getloadavg()[0], 2),  # a shared box makes this noisy
        },
        "note": "loopback, server in its own process, SQLite file; no Ray (jobs stay queued); "
        "latencies are as the client saw them, server_side_status_read is the app's own",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--seed-jobs", type=int, default=20)
    parser.add_argument("--rows", type=int, default=500, help="metrics rows per seeded job")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "api_load.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="instructray-bench-") as tmp:
        workdir = Path(tmp)
        proc, url = start_server(workdir)
        try:
            ids = seed(url, workdir / "runs", args.seed_jobs, args.rows)
            start = time.perf_counter()
            results = asyncio.run(run_load(url, ids, args.requests, args.concurrency, args.seed))
            report = summarize(results, time.perf_counter() - start, args)
            report["server_side_status_read"] = server_side_status_p99(url)
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
    text = json.dumps(report, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    return 1 if report["server_errors_5xx_or_failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
