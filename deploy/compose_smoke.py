#!/usr/bin/env python3
"""The CPU compose deployment for real, on a Docker engine: build, up, a job over HTTP, an API
restart mid-job, down. Timed; not for CI (image builds take minutes, far more with vfs storage).

    python3 deploy/compose_smoke.py [--skip-build] [--keep] [--no-cache]

1. builds `instructray:cpu` from deploy/Dockerfile.cpu (`nice -n 10 docker build`), with the
   host's extra CA certificates in deploy/ca-certificates/ and torch's CPU wheel served to the
   build from the host's wheels folder (TORCH_FIND_LINKS), when the host has them;
2. `docker-compose -f deploy/docker-compose.cpu.yml up -d` with ports of its own (API 8010, Ray
   6390/8275/52375-52380/…), so it runs beside other Ray clusters on the same machine;
3. POST /jobs (the tiny preset, SFT only) to the API container; once it runs,
   `docker-compose restart api`; the restarted API still lists the job, follows it to
   `succeeded`, and Ray confirms the job ended after the restart began;
4. reads RUN_DIR/summary.json from the `runs` volume (a throw-away container mounting it);
5. `docker-compose down -v`.

Times go to bench/results/compose_cpu.json, a log to bench/results/compose_cpu.log, the full
build output and the containers' logs to bench/results/work/compose_cpu/. Stdlib only.
Re-runnable: it removes its own project's leftovers first and reuses the image's build cache.

Made for the machines that ../shared/tools/docker-engine.sh prepares (default --base-image is
its stand-in; elsewhere pass e.g. --base-image python:3.11-slim-bookworm). If uid 1000 cannot
run in the base image (the stand-in's `/` is mode 0700), it builds a fixed copy `<base>-rootfix`
first. `nice` lowers only the docker client: the build's steps run under dockerd.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "deploy" / "docker-compose.cpu.yml"
CA_DIR = REPO / "deploy" / "ca-certificates"
RESULTS = REPO / "bench" / "results"
WORK = RESULTS / "work" / "compose_cpu"
LOG = RESULTS / "compose_cpu.log"
OUT_JSON = RESULTS / "compose_cpu.json"

# Not Ray's defaults: other Ray clusters on this machine keep theirs.
PORTS = {
    "API_PORT": 8010,
    "RAY_PORT": 6390,
    "RAY_DASHBOARD_PORT": 8275,
    "RAY_DASHBOARD_AGENT_LISTEN_PORT": 52375,
    "RAY_DASHBOARD_AGENT_GRPC_PORT": 52376,
    "RAY_RUNTIME_ENV_AGENT_PORT": 52377,
    "RAY_METRICS_EXPORT_PORT": 52378,
    "RAY_NODE_MANAGER_PORT": 52379,
    "RAY_OBJECT_MANAGER_PORT": 52380,
    "RAY_CLIENT_SERVER_PORT": 10011,
    "RAY_DASHBOARD_METRIC_PORT": 44237,
    "RAY_AUTOSCALER_METRIC_PORT": 44247,
}
WORKER_PORTS = (23000, 23099)

TINY_SFT = {
    "name": "compose-smoke-tiny-sft",
    "preset": "tiny",
    "overrides": {
        "stages": ["sft"],
        "sft.max_examples": 128,
        "sft.batch_size": 32,
        "sft.micro_batch_size": 32,
        "output.tensorboard": False,
    },
}
FINAL = ("succeeded", "failed", "cancelled")


class SmokeFailed(AssertionError):
    pass


def check(cond: bool, what: str) -> None:
    if not cond:
        raise SmokeFailed(what)


# --- logging and commands --------------------------------------------------------------------

_log_file = None
T0 = time.monotonic()


def log(msg: str) -> None:
    line = f"[{time.strftime('%H:%M:%S')} +{time.monotonic() - T0:7.1f}s] {msg}"
    print(line, flush=True)
    if _log_file is not None:
        _log_file.write(line + "\n")
        _log_file.flush()


def sh(
    cmd: list[str],
    *,
    env: dict[str, str] | None = None,
    check_rc: bool = True,
    output: Path | None = None,
    timeout: float = 3600,
    quiet: bool = False,
) -> subprocess.CompletedProcess:
    """Run a command; its output goes to `output` (full) and its tail to the log."""
    if not quiet:
        log("$ " + " ".join(cmd))
    proc = subprocess.run(
        cmd,
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    if output is not None:
        output.write_text(proc.stdout)
    if proc.returncode != 0 and check_rc:
        tail = "\n".join(proc.stdout.splitlines()[-40:])
        log(f"exit {proc.returncode}; last lines:\n{tail}")
        raise SmokeFailed(f"command failed ({proc.returncode}): {' '.join(cmd)}")
    return proc


class Compose:
    def __init__(self, project: str, env: dict[str, str]) -> None:
        self.base = ["docker-compose", "-p", project, "-f", str(COMPOSE_FILE)]
        self.env = env

    def __call__(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return sh([*self.base, *args], env=self.env, **kw)


# --- HTTP --------------------------------------------------------------------------------------


def http(
    method: str, url: str, *, body: dict | None = None, token: str | None = None, timeout=10
) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def get_json(url: str, **kw) -> dict:
    status, text = http("GET", url, **kw)
    check(status == 200, f"GET {url} → {status}: {text[:300]}")
    return json.loads(text)


def wait_for(what: str, fn, timeout: float, every: float = 1.0):
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            value = fn()
        except (OSError, ValueError) as e:  # connection refused/reset while starting
            value, last = None, e
        if value:
            return value
        time.sleep(every)
    raise SmokeFailed(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


# --- preparation -----------------------------------------------------------------------------


def port_busy(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError as e:
            return e.errno == errno.EADDRINUSE
    return False


def pip_find_links() -> Path | None:
    """The folder pip's config names as find-links, if it holds torch's 2.13.0 CPU wheel."""
    try:
        out = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True
        ).stdout
    except OSError:
        out = ""
    for line in out.splitlines():
        key, _, value = line.partition("=")
        if key.endswith(".find-links"):
            for candidate in value.strip("'\"").split():
                folder = Path(candidate.removeprefix("file://"))
                if any(folder.glob("torch-2.13.0+cpu-*.whl")):
                    return folder
    return None


def engine_nofile(cap: int = 65536) -> int:
    """The open-files limit a container may have: at most dockerd's own hard limit."""
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if (proc / "comm").read_text().strip() == "dockerd":
                for line in (proc / "limits").read_text().splitlines():
                    if line.startswith("Max open files"):
                        hard = line.split()[4]
                        return cap if hard == "unlimited" else min(cap, int(hard))
    return cap


def write_secrets(folder: Path) -> None:
    """Tokens, 0644 in a 0700 folder: the containers' uid 1000 reads the bind-mounted files,
    nobody else on the host reaches them."""
    import secrets

    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    for name, make in (
        ("api_token", lambda: secrets.token_urlsafe(32)),
        ("ray_auth_token", lambda: secrets.token_hex(32)),
    ):
        path = folder / name
        if not path.exists() or not path.read_text().strip():
            path.write_text(make() + "\n")
        path.chmod(0o644)


def root_traversable(image: str) -> bool:
    proc = sh(
        ["docker", "run", "--rm", "--network", "host", "--user", "1000", image, "true"],
        check_rc=False,
        quiet=True,
    )
    return proc.returncode == 0


def usable_base(image: str) -> str:
    """The base image, or a copy with a world-traversable `/` if uid 1000 cannot run in it.

    The stand-in base that ../shared/tools/docker-engine.sh imports has `/` mode 0700 (the
    mktemp folder it tars), so every non-root process in an image built on it fails
    ("exec: ... not found"). A `RUN chmod` cannot fix `/` in a layer; export + import can.
    """
    if root_traversable(image):
        return image
    fixed = f"{image}-rootfix"
    exists = sh(["docker", "image", "inspect", fixed], check_rc=False, quiet=True).returncode == 0
    if exists and root_traversable(fixed):
        log(f"base image {image}: / not traversable by uid 1000; using {fixed}")
        return fixed
    log(f"base image {image}: / not traversable by uid 1000; building {fixed} (export+import)")
    cfg = json.loads(
        sh(["docker", "image", "inspect", image, "--format", "{{json .Config}}"]).stdout
    )
    changes = [f"ENV {e}" for e in cfg.get("Env") or []]
    if cfg.get("Cmd"):
        changes.append("CMD " + json.dumps(cfg["Cmd"]))
    cid = sh(["docker", "create", image]).stdout.strip()
    try:
        export = subprocess.Popen(["docker", "export", cid], stdout=subprocess.PIPE)
        args = ["docker", "import", *(x for c in changes for x in ("--change", c)), "-", fixed]
        subprocess.run(args, stdin=export.stdout, check=True, stdout=subprocess.DEVNULL)
        export.wait()
    finally:
        sh(["docker", "rm", cid], quiet=True)
    check(root_traversable(fixed), f"{fixed}: uid 1000 still cannot run")
    return fixed


def copy_extra_cas(source: Path | None) -> list[str]:
    """The host's extra CAs (e.g. a TLS-intercepting proxy's) into deploy/ca-certificates/
    (git-ignored there). cp -p keeps mtimes, so an unchanged set keeps the build cache."""
    if source is None or not source.is_dir():
        return []
    copied = []
    for crt in sorted(source.glob("*.crt")):
        dest = CA_DIR / crt.name
        if not dest.exists() or dest.read_bytes() != crt.read_bytes():
            shutil.copy2(crt, dest)
        copied.append(crt.name)
    return copied


@contextlib.contextmanager
def wheel_server(folder: Path | None, port: int):
    """Serve the wheels folder on 127.0.0.1:port for the build (which runs on the host's
    network); yields the find-links URL. A fixed port keeps the build argument — and with it
    the build cache — the same from run to run."""
    if folder is None:
        yield None
        return
    check(not port_busy(port), f"--wheels-port {port} is in use")
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for("the wheels server", lambda: http("GET", url, timeout=2)[0] == 200, 20, 0.2)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


# --- phases ----------------------------------------------------------------------------------


def image_id(image: str) -> str | None:
    proc = sh(
        ["docker", "image", "inspect", image, "--format", "{{.Id}}"], check_rc=False, quiet=True
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def build(args, results: dict) -> None:
    base = usable_base(args.base_image)
    cas = copy_extra_cas(args.ca_dir)
    wheels = None if args.no_torch_wheels else (args.torch_wheels or pip_find_links())
    results["build"] = {"base_image": base, "extra_cas": cas, "torch_wheels": str(wheels)}
    with wheel_server(wheels, args.wheels_port) as find_links:
        cmd = ["nice", "-n", "10", "docker", "build", "--network", "host"]
        cmd += ["-f", "deploy/Dockerfile.cpu", "-t", args.image]
        cmd += ["--build-arg", f"BASE_IMAGE={base}"]
        if find_links:
            cmd += ["--build-arg", f"TORCH_FIND_LINKS={find_links}"]
        if args.no_cache:
            cmd.append("--no-cache")
        cmd.append(".")
        before = image_id(args.image)
        t = time.monotonic()
        proc = sh(cmd, output=WORK / "build.log", timeout=7200)
        took = time.monotonic() - t
    if before and before != image_id(args.image):  # the old image's layers: gigabytes with vfs
        sh(["docker", "rmi", before], check_rc=False)
    steps = proc.stdout.count("\nStep ")
    cached = proc.stdout.count("Using cache")
    size = sh(["docker", "image", "inspect", args.image, "--format", "{{.Size}}"], quiet=True)
    results["build"].update(
        steps=steps, cached_steps=cached, image_bytes=int(size.stdout.strip() or 0)
    )
    results["times_s"]["image_build"] = round(took, 1)
    log(f"image built in {took:.1f}s ({cached} of {steps} steps from cache)")


def up(compose: Compose, api: str, ray: str, ray_token: str, results: dict) -> None:
    t = time.monotonic()
    compose("up", "-d", timeout=1800)
    wait_for(
        "the API's /healthz",
        lambda: http("GET", f"{api}/healthz", timeout=5)[0] == 200,
        600,
        2,
    )
    took = time.monotonic() - t
    results["times_s"]["up_to_healthy"] = round(took, 1)
    log(f"up and healthy in {took:.1f}s")
    compose("ps")

    # Ray's token auth is on: the Jobs API refuses requests without the token.
    status, _ = http("GET", f"{ray}/api/version")
    check(status == 401, f"Ray's /api/version without the token answered {status}, not 401")
    version = get_json(f"{ray}/api/version", token=ray_token)
    results["ray_version"] = version.get("ray_version")
    # Dashboard and its static files come from the installed (non-editable) package.
    for path in ("/", "/static/app.js", "/docs"):
        status, _ = http("GET", api + path)
        check(status == 200, f"GET {path} → {status}")
    check(get_json(f"{api}/presets") is not None, "presets")


def job_with_restart(
    compose: Compose, api: str, ray: str, api_token: str, ray_token: str, results: dict
) -> str:
    t_submit = time.monotonic()
    status, text = http("POST", f"{api}/jobs", body=TINY_SFT, token=api_token, timeout=30)
    check(status == 202, f"POST /jobs → {status}: {text[:500]}")
    job_id = json.loads(text)["id"]
    log(f"submitted {job_id}")

    def job_state() -> dict:
        return get_json(f"{api}/jobs/{job_id}")

    def running() -> dict | None:
        current = job_state()
        check(current["status"] not in FINAL, f"job ended before the restart: {current}")
        return current if current["status"] == "running" else None

    wait_for("the job to run", running, 600)
    results["times_s"]["submit_to_running"] = round(time.monotonic() - t_submit, 1)
    log(f"{job_id} running after {results['times_s']['submit_to_running']}s; restarting api")

    # Restart the API container mid-job.
    restart_wall = time.time()
    t_restart = time.monotonic()
    compose("restart", "api", timeout=300)

    def answers() -> dict | None:  # None until the new API process serves requests
        status, text = http("GET", f"{api}/jobs/{job_id}")
        return json.loads(text) if status == 200 else None

    after = wait_for("the restarted API to answer for the job", answers, 300, 1)
    results["times_s"]["api_restart_to_following"] = round(time.monotonic() - t_restart, 1)
    log(
        f"restarted API answers for {job_id} after {results['times_s']['api_restart_to_following']}s: {after['status']}"
    )
    check(after["id"] == job_id, "same job id")
    check(after["status"] in ("pending", "running", "succeeded"), f"after restart: {after}")
    listed = get_json(f"{api}/jobs?limit=50")
    check([j["id"] for j in listed["items"]].count(job_id) == 1, f"listed once: {listed}")

    # Follow it to the end through the restarted API, metrics page by page.
    rows: list[dict] = []
    cursor = 0
    deadline = time.monotonic() + 900
    while True:
        current = job_state()
        page = get_json(f"{api}/jobs/{job_id}/metrics?since={cursor}")
        rows += page["rows"]
        cursor = page["next"]
        if current["status"] in FINAL:
            break
        check(time.monotonic() < deadline, f"job still {current['status']} after 900s")
        time.sleep(1)
    results["times_s"]["submit_to_succeeded"] = round(time.monotonic() - t_submit, 1)
    rows += get_json(f"{api}/jobs/{job_id}/metrics?since={cursor}")["rows"]
    results["job"] = {
        "id": job_id,
        "status": current["status"],
        "error": (current.get("error") or "")[-1500:] or None,
        "message": (current.get("message") or "")[-1500:] or None,
        "metrics_rows": len(rows),
        "stage": current.get("stage"),
        "step": current.get("step"),
    }
    check(current["status"] == "succeeded", f"job {current['status']}: {current.get('error')}")
    log(f"{job_id} succeeded {results['times_s']['submit_to_succeeded']}s after submission")
    check(rows and {r["stage"] for r in rows} == {"sft"}, f"metrics rows: {rows[:3]}")
    check([r["step"] for r in rows] == list(range(1, len(rows) + 1)), "steps 1..n, each once")

    # Ray agrees: one job with this id, SUCCEEDED, and it ended after the restart began.
    info = get_json(f"{ray}/api/jobs/{job_id}", token=ray_token)
    check(info["status"] == "SUCCEEDED", f"Ray: {info['status']}")
    end_s = (info.get("end_time") or 0) / 1000
    results["job"]["ended_after_restart_began_s"] = round(end_s - restart_wall, 1)
    check(end_s > restart_wall, "the job was still running on Ray when the API restarted")
    on_ray = get_json(f"{ray}/api/jobs/", token=ray_token)
    ids = [j.get("submission_id") for j in on_ray]
    check(ids.count(job_id) == 1, f"Ray has {ids.count(job_id)} jobs with id {job_id}")
    status, logs = http("GET", f"{api}/jobs/{job_id}/logs?follow=false", timeout=30)
    check(status == 200 and "done:" in logs, f"driver log ({status}): {logs[-300:]}")
    return job_id


def run_folder_on_volume(project: str, job_id: str, probe_image: str, results: dict) -> None:
    """summary.json read straight from the named volume, by a container of another image."""
    volume = f"{project}_runs"
    proc = sh(
        [
            "docker",
            "run",
            "--rm",
            "--network",
            "host",
            "-v",
            f"{volume}:/runs:ro",
            probe_image,
            "sh",
            "-c",
            f"ls -A /runs/{job_id} && cat /runs/{job_id}/summary.json",
        ],
    )
    listing, _, summary_text = proc.stdout.partition("{")
    summary = json.loads("{" + summary_text)
    files = listing.split()
    results["run_folder"] = {"volume": volume, "files": files, "summary_status": summary["status"]}
    check(summary["status"] == "succeeded", f"summary.json: {summary}")
    check({"config.yaml", "metrics.jsonl", "summary.json"} <= set(files), f"files: {files}")
    log(f"volume {volume}: /runs/{job_id} has {files}; summary status {summary['status']}")


def earlier_runs(keep: int = 10) -> list[dict]:
    """The previous runs' outcomes and times (a cold build, a cached one, ...), newest last."""
    try:
        previous = json.loads(OUT_JSON.read_text())
    except (OSError, ValueError):
        return []
    last = {k: previous.get(k) for k in ("started", "ok", "times_s", "error")}
    last["cached_steps"] = (previous.get("build") or {}).get("cached_steps")
    return [*previous.get("history", []), last][-keep:]


def main() -> int:
    global _log_file
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--project", default="instructray-smoke")
    p.add_argument("--image", default="instructray:cpu")
    p.add_argument("--base-image", default="local/python:3.11-bookworm")
    p.add_argument(
        "--probe-image",
        default="local/debian:bookworm",
        help="small image for reading the runs volume",
    )
    p.add_argument("--ca-dir", type=Path, default=Path("/usr/local/share/ca-certificates"))
    p.add_argument(
        "--torch-wheels",
        type=Path,
        default=None,
        help="folder with torch-2.13.0+cpu wheel (default: pip's find-links)",
    )
    p.add_argument(
        "--no-torch-wheels",
        action="store_true",
        help="take torch from TORCH_INDEX_URL's default index instead",
    )
    p.add_argument("--wheels-port", type=int, default=18399)
    p.add_argument("--skip-build", action="store_true")
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--keep", action="store_true", help="leave the deployment up at the end")
    p.add_argument("--min-free-gb", type=float, default=30.0)
    args = p.parse_args()

    RESULTS.mkdir(parents=True, exist_ok=True)
    WORK.mkdir(parents=True, exist_ok=True)
    _log_file = LOG.open("w")
    results: dict = {
        "what": "deploy/docker-compose.cpu.yml end to end on a local Docker engine",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": {"machine": platform.machine(), "cpus": os.cpu_count()},
        "ports": {**PORTS, "RAY_WORKER_PORTS": f"{WORKER_PORTS[0]}-{WORKER_PORTS[1]}"},
        "times_s": {},
        "ok": False,
    }
    env = {
        **os.environ,
        **{k: str(v) for k, v in PORTS.items()},
        "RAY_MIN_WORKER_PORT": str(WORKER_PORTS[0]),
        "RAY_MAX_WORKER_PORT": str(WORKER_PORTS[1]),
        "RAY_NUM_CPUS": "2",
        "RAY_OBJECT_STORE_MEMORY": str(1_000_000_000),
        "RAY_SHM_SIZE": "2gb",
        "RAY_NOFILE": str(engine_nofile()),
        "INSTRUCTRAY_IMAGE": args.image,
        "INSTRUCTRAY_SECRETS_DIR": str(WORK / "secrets"),
        "INSTRUCTRAY_DATA_DIR": str(WORK / "data"),
        # Creating a container copies the whole image with vfs storage (minutes for ~5 GB):
        # docker-compose's default 60 s read timeout gives up while the engine carries on.
        "COMPOSE_HTTP_TIMEOUT": os.environ.get("COMPOSE_HTTP_TIMEOUT", "900"),
    }
    compose = Compose(args.project, env)
    api = f"http://127.0.0.1:{PORTS['API_PORT']}"
    ray = f"http://127.0.0.1:{PORTS['RAY_DASHBOARD_PORT']}"
    brought_up = False
    try:
        versions = [
            sh(["docker", "version", "--format", "{{.Server.Version}}"], quiet=True).stdout,
            sh(["docker-compose", "version", "--short"], quiet=True).stdout,
            sh(["docker", "info", "--format", "{{.Driver}}"], quiet=True).stdout,
        ]
        results["docker"] = dict(
            zip(["engine", "compose", "storage_driver"], (v.strip() for v in versions), strict=True)
        )
        log(f"docker: {results['docker']}")
        compose("down", "-v", "--remove-orphans", timeout=600)  # a previous run's leftovers
        free_gb = (
            shutil.disk_usage("/var/lib/docker" if Path("/var/lib/docker").exists() else "/").free
            / 2**30
        )
        log(f"free disk: {free_gb:.0f} GiB")
        if not args.skip_build:
            check(free_gb >= args.min_free_gb, f"only {free_gb:.0f} GiB free")
        busy = [
            p
            for p in [*PORTS.values(), *range(WORKER_PORTS[0], WORKER_PORTS[1] + 1)]
            if port_busy(p)
        ]
        check(not busy, f"ports in use: {busy}")
        write_secrets(WORK / "secrets")
        (WORK / "data").mkdir(exist_ok=True)
        api_token = (WORK / "secrets" / "api_token").read_text().strip()
        ray_token = (WORK / "secrets" / "ray_auth_token").read_text().strip()

        # docker-compose 1.29 reads both deployments (it rejected the old top-level `name:`).
        sh(["docker-compose", "-f", "docker-compose.yml", "config", "-q"], env=env)
        compose("config", "-q")

        if args.skip_build:
            log("--skip-build: using the existing image")
        else:
            build(args, results)

        brought_up = True
        up(compose, api, ray, ray_token, results)
        job_id = job_with_restart(compose, api, ray, api_token, ray_token, results)
        run_folder_on_volume(args.project, job_id, args.probe_image, results)
        results["ok"] = True
    except (SmokeFailed, subprocess.SubprocessError) as e:
        results["error"] = f"{type(e).__name__}: {e}"
        log(f"FAILED: {e}")
    finally:
        if brought_up:
            compose(
                "logs",
                "--no-color",
                "--timestamps",
                check_rc=False,
                output=WORK / "containers.log",
                quiet=True,
            )
            if args.keep:
                log("--keep: leaving the deployment up")
            else:
                t = time.monotonic()
                down = compose("down", "-v", check_rc=False, timeout=900)
                results["times_s"]["down"] = round(time.monotonic() - t, 1)
                left = compose("ps", "-q", check_rc=False, quiet=True).stdout.split()
                if down.returncode != 0 or left:
                    results["ok"] = False
                    results.setdefault("error", f"down left containers: {left}")
                log(f"down in {results['times_s']['down']}s")
        results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        results["history"] = earlier_runs()
        OUT_JSON.write_text(json.dumps(results, indent=2) + "\n")
        log(f"{'OK' if results['ok'] else 'FAILED'}: times {results['times_s']} → {OUT_JSON}")
        _log_file.close()
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
