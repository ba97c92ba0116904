"""Real servers on 127.0.0.1 for the API tests: uvicorn in a thread or in its own process, and
a local Ray cluster started with `ray start` in its own temp dir and ports."""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

import httpx
import uvicorn

from tests.api.fake_ray import FakeRayJobs

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
T = TypeVar("T")
TOKEN = "test-token-5f2b9c"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def free_port() -> int:
    # Ephemeral ports (32768+) stay clear of Ray's worker port range (10002-19999).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check: Callable[[], T], timeout: float, what: str, interval: float = 0.5) -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            value = check()
        except (httpx.HTTPError, OSError) as err:
            value, last = None, err
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last})")


# ---- jobs through the API (against the Ray stand-in) -----------------------------------
TINY_SFT = {
    "name": "tiny-sft",
    "preset": "tiny",
    "overrides": {"stages": ["sft"], "sft.max_examples": 128, "output.tensorboard": False},
}


def submit(client: httpx.Client, body: dict | None = None) -> str:
    r = client.post("/jobs", json=body or TINY_SFT, headers=AUTH)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def wait_status(client: httpx.Client, job_id: str, *statuses: str, timeout: float = 10) -> dict:
    def reached() -> dict | None:
        job = client.get(f"/jobs/{job_id}").json()
        return job if job["status"] in statuses else None

    return wait_for(reached, timeout, f"job {job_id} to be {statuses}", 0.05)


def submit_running_on_ray(client: httpx.Client, fake_ray: FakeRayJobs) -> str:
    """A job submitted to (stand-in) Ray and reported RUNNING there."""
    job_id = submit(client)
    wait_status(client, job_id, "pending")
    fake_ray.set(job_id, "RUNNING")
    return job_id


def write_rows(run_dir: Path, rows: list[dict]) -> None:
    with (run_dir / "metrics.jsonl").open("a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


@contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """A real uvicorn server for ``app`` on a free loopback port, in a background thread."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 30, "uvicorn to start", 0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


class ApiProcess:
    """``python -m instructray.api`` as its own process, so a test can kill and restart it."""

    def __init__(self, env: dict[str, str], log_path: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        # Ray's token reaches the API only through ``env`` (a stray one here would win).
        inherited = {k: v for k, v in os.environ.items() if k not in RAY_AUTH_VARS}
        self.env = {**inherited, **env, "INSTRUCTRAY_API_PORT": str(self.port)}
        self.log_path = log_path
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> ApiProcess:
        log = self.log_path.open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "instructray.api"],
            env=self.env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

        def up() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log_tail()
            return httpx.get(f"{self.url}/healthz", timeout=5).status_code == 200

        wait_for(up, timeout, f"the API at {self.url}")
        return self

    def kill(self) -> None:
        """Like a crash: SIGKILL, no shutdown hooks."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)

    def log_tail(self, n: int = 4000) -> str:
        return self.log_path.read_text()[-n:] if self.log_path.exists() else ""


def isolated_torch_extensions(dest: Path) -> dict[str, str]:
    """Environment giving jobs a private copy of the JIT-built DeepSpeed ops.

    torch guards every JIT load (even a no-op one) with a lock file in the shared
    ~/.cache/torch_extensions; a process killed while holding it leaves the lock behind and every
    later DeepSpeed job on the machine waits on it forever. A private copy of the built ops
    (without any lock) keeps these tests clear of that; with nothing built yet, the shared folder
    is used so the one compile benefits every later test.
    """
    import torch

    flavour = "cpu" if torch.version.cuda is None else f"cu{torch.version.cuda.replace('.', '')}"
    shared = (
        Path.home()
        / ".cache"
        / "torch_extensions"
        / f"py{sys.version_info[0]}{sys.version_info[1]}_{flavour}"
    )
    if os.environ.get("TORCH_EXTENSIONS_DIR") or not any(shared.glob("*/*.so")):
        return {}
    shutil.copytree(shared, dest, ignore=shutil.ignore_patterns("lock"), dirs_exist_ok=True)
    return {"TORCH_EXTENSIONS_DIR": str(dest)}


RAY_AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def ray_start_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment of a `ray start` (head or node) of the test clusters."""
    env = {
        **{k: v for k, v in os.environ.items() if k not in RAY_AUTH_VARS},
        # Jobs run `instructray run ...`: the venv's entry point must be on their PATH.
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "TOKENIZERS_PARALLELISM": "false",
        **extra,
    }
    env.pop("RAY_ADDRESS", None)
    return env


def _pids_naming(markers: list[bytes]) -> list[int]:
    """Processes (not this one) whose command line contains one of ``markers``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            if any(m in cmdline for m in markers):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def _launch_ray_start(
    cmd: list[str], extra_env: dict[str, str], temp_dir: Path
) -> subprocess.Popen:
    """`ray start ... --block` in its own session (so only its processes are signalled), its
    output in <temp_dir>-ray-start.log beside the temp dir."""
    log = (temp_dir.parent / f"{temp_dir.name}-ray-start.log").open("w")
    try:
        return subprocess.Popen(
            cmd, env=ray_start_env(extra_env), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    finally:
        log.close()


def _stop_ray_start(proc: subprocess.Popen, markers: list[bytes]) -> None:
    """Stop a `ray start --block` of ours: SIGTERM (it drains and stops its own processes),
    SIGKILL to its process group if it hangs, then whatever still names our markers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    time.sleep(1)
    for pid in _pids_naming(markers):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _ray_ports() -> dict[str, int]:
    """The ports of one Ray node (head or not) besides the GCS's and the dashboard's."""
    return {
        "--dashboard-agent-listen-port": free_port(),
        "--dashboard-agent-grpc-port": free_port(),
        "--metrics-export-port": free_port(),
        "--runtime-env-agent-port": free_port(),
        "--node-manager-port": free_port(),
        "--object-manager-port": free_port(),
    }


class RayCluster:
    """`ray start --head --block` with its own --temp-dir and ports, so neither an in-process
    ray.init() of other tests nor other Ray instances on the machine see it; torn down by
    signalling only the processes it started.

    Ray's token auth is on, as in the deployments: a random token per cluster, in a file
    (``token_path``) that `ray start`, its jobs and the API read through ``RAY_AUTH_MODE=token``
    + ``RAY_AUTH_TOKEN_PATH`` (``auth_env``). `add_node` joins more nodes on this machine."""

    def __init__(
        self,
        temp_dir: Path,
        num_cpus: int = 4,
        runs_root: Path | None = None,
        env: dict[str, str] | None = None,
        resources: dict[str, float] | None = None,
    ) -> None:
        self.temp_dir = temp_dir
        self.runs_root = runs_root
        self.extra_env = env or {}
        self.num_cpus = num_cpus
        self.resources = resources or {}
        self.dashboard_port = free_port()
        self.gcs_port = free_port()
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        self.token = secrets.token_hex(32)
        self.token_path = temp_dir / "ray_auth_token"
        self.proc: subprocess.Popen | None = None
        self.nodes: list[RayNode] = []

    def auth_env(self) -> dict[str, str]:
        """What a deployment gives every process that talks to this cluster (compose: the
        ray_auth_token secret)."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path)}

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def start(self, timeout: float = 180) -> RayCluster:
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        self.token_path.touch(mode=0o600)
        self.token_path.write_text(self.token)
        ports = {
            "--port": self.gcs_port,
            "--ray-client-server-port": free_port(),
            **_ray_ports(),
        }
        cmd = [
            str(VENV_BIN / "ray"), "start", "--head", "--block",
            "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}", "--disable-usage-stats",
            f"--num-cpus={self.num_cpus}", f"--temp-dir={self.temp_dir}",
            *([f"--resources={json.dumps(self.resources)}"] if self.resources else []),
            *(f"{flag}={port}" for flag, port in ports.items()),
        ]  # fmt: skip
        self.proc = _launch_ray_start(cmd, {**self.auth_env(), **self.extra_env}, self.temp_dir)

        def up() -> bool:
            assert self.proc is not None and self.proc.poll() is None, "ray start exited"
            r = httpx.get(f"{self.address}/api/version", headers=self.headers, timeout=5)
            return r.status_code == 200

        wait_for(up, timeout, f"Ray's dashboard at {self.address}", 1.0)
        return self

    def client(self) -> Any:
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.address, headers=self.headers)

    def state(self, resource: str, **params: Any) -> list[dict]:
        """Ray's state API over HTTP (``/api/v0/<resource>``: nodes, actors, ...), with the
        token; no Ray client in this process."""
        r = httpx.get(
            f"{self.address}/api/v0/{resource}",
            params={"limit": 10000, **params},
            headers=self.headers,
            timeout=30,
        )
        r.raise_for_status()
        return r.json()["data"]["result"]["result"]

    def alive_nodes(self) -> list[dict]:
        return [n for n in self.state("nodes", detail=1) if n["state"] == "ALIVE"]

    def add_node(
        self, resources: dict[str, float], num_cpus: int = 2, timeout: float = 180
    ) -> RayNode:
        """Another Ray node on this machine joined to this cluster, with ``resources``."""
        node = RayNode(self, len(self.nodes) + 1, resources, num_cpus)
        self.nodes.append(node)
        return node.start(timeout)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        if self.proc is None:
            return
        markers = [str(p).encode() for p in (self.temp_dir, self.runs_root) if p is not None]
        _stop_ray_start(self.proc, markers)


class RayNode:
    """A non-head node of a `RayCluster` on the same machine: `ray start --address=<GCS>
    --block` on 127.0.0.1 with ports and a --temp-dir of its own (Ray allows one per node) and
    the cluster's token, stopped by signalling only its own processes."""

    def __init__(
        self, cluster: RayCluster, index: int, resources: dict[str, float], num_cpus: int
    ) -> None:
        self.cluster = cluster
        # A sibling of the head's: Ray's socket paths must stay short.
        self.temp_dir = cluster.temp_dir.with_name(f"{cluster.temp_dir.name}-n{index}")
        self.resources = resources
        self.num_cpus = num_cpus
        self.proc: subprocess.Popen | None = None
        self.node_id: str | None = None

    def start(self, timeout: float = 180) -> RayNode:
        c = self.cluster
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            str(VENV_BIN / "ray"), "start", "--block", f"--address=127.0.0.1:{c.gcs_port}",
            "--node-ip-address=127.0.0.1", "--disable-usage-stats",
            f"--num-cpus={self.num_cpus}", f"--resources={json.dumps(self.resources)}",
            f"--temp-dir={self.temp_dir}",
            *(f"{flag}={port}" for flag, port in _ray_ports().items()),
        ]  # fmt: skip
        self.proc = _launch_ray_start(cmd, {**c.auth_env(), **c.extra_env}, self.temp_dir)
        name = next(iter(self.resources))

        def joined() -> str | None:
            assert self.proc is not None and self.proc.poll() is None, "ray start exited"
            mine = [n for n in c.alive_nodes() if name in n["resources_total"]]
            return mine[0]["node_id"] if mine else None

        self.node_id = wait_for(joined, timeout, f"a Ray node with {name} to join", 1.0)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            _stop_ray_start(self.proc, [str(self.temp_dir).encode()])


@contextmanager
def api_service(
    cluster: RayCluster,
    log_dir: Path,
    name: str,
    token: str,
    env: dict[str, str] | None = None,
) -> Iterator[ApiProcess]:
    """``python -m instructray.api`` with a service of its own (runs folder and database) on the
    shared test cluster, stopped on exit; its log is ``log_dir/api-<name>-server.log``. ``env``:
    more ``INSTRUCTRAY_API_*`` settings."""
    assert cluster.runs_root is not None
    env = {
        **cluster.auth_env(),  # Ray's token, as docker-compose gives it to the API
        "INSTRUCTRAY_API_RAY_ADDRESS": cluster.address,
        "INSTRUCTRAY_API_RUNS_ROOT": str(cluster.runs_root / name),
        "INSTRUCTRAY_API_CONFIGS_ROOT": str(REPO / "configs"),
        "INSTRUCTRAY_API_TOKEN": token,
        "INSTRUCTRAY_API_POLL_INTERVAL_S": "0.5",
        **(env or {}),
    }
    server = ApiProcess(env, log_dir / f"api-{name}-server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def documented_ray_job_submit(run_id: str) -> list[str]:
    """The `ray job submit` line of deploy/README.md, split as a shell would, with ``$RUN_ID``
    set to ``run_id``."""
    readme = (REPO / "deploy" / "README.md").read_text()
    [line] = [ln for ln in readme.splitlines() if ln.startswith("ray job submit ")]
    return shlex.split(line.replace('"$RUN_ID"', run_id).replace("$RUN_ID", run_id))
