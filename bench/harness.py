"""Shared plumbing of the benchmarks: checkpoints, PPO runs through `run_job`, timing of actor
methods, per-process memory sampling, result files.

Imported by the bench scripts as a plain module (``python bench/<script>.py`` puts bench/ on
sys.path); Ray ships it to the actors by value, so they do not need bench/ on their path.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from statistics import median
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
WORK = RESULTS / "work"


def work_dir(*parts: str) -> Path:
    """A scratch folder under bench/results/work (git-ignored: it holds checkpoints)."""
    WORK.mkdir(parents=True, exist_ok=True)
    ignore = WORK / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n")
    path = WORK.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    text = json.dumps(data, indent=2, default=str)
    path.write_text(text + "\n")
    print(text, flush=True)
    return path


def med(values: list[float]) -> float | None:
    return round(median(values), 4) if values else None


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def host_info() -> dict[str, Any]:
    import torch

    return {
        "cpus": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__,
        "driver_torch_threads": torch.get_num_threads(),
    }


# -- checkpoints -----------------------------------------------------------------------------
def tiny_checkpoints() -> tuple[Path, Path]:
    """(SFT, RM) of the tiny preset: a copy of the test suite's run if present, else built once
    with a short sft+rm job (random-init base, no pre-training: enough for timing)."""
    out = work_dir("tiny-ckpt")
    sft, rm = out / "sft", out / "rm"
    if (sft / "config.json").is_file() and (rm / "config.json").is_file():
        return sft, rm
    source = REPO / "test-artifacts" / "tiny-run" / "checkpoints"
    if (source / "sft" / "config.json").is_file() and (source / "rm" / "config.json").is_file():
        for name in ("sft", "rm"):
            shutil.copytree(source / name, out / name, dirs_exist_ok=True)
        return sft, rm
    from instructray.config import load_config
    from instructray.orchestrator.pipeline import run_job

    cfg = load_config(
        REPO / "configs" / "tiny.yaml",
        [
            "stages=[sft, rm]",
            "sft.max_examples=512",
            "rm.labeler.num_prompts=64",
            "rm.epochs=1",
            "output.tensorboard=false",
        ],
    )
    ctx = run_job(cfg, work_dir("tiny-build"))
    shutil.copytree(ctx.checkpoints["sft"], sft, dirs_exist_ok=True)
    shutil.copytree(ctx.checkpoints["rm"], rm, dirs_exist_ok=True)
    return sft, rm


def smollm2_checkpoints() -> tuple[Path, Path]:
    """(SFT, RM) at the SmolLM2-135M size: the converted base model as the SFT model, and a
    value model initialised from it (seeded scalar head) saved once as the RM."""
    import torch

    from instructray.models import (
        default_cache_dir,
        load_tokenizer,
        load_value_model,
        resolve_base_model,
        save_hf_checkpoint,
    )

    base = resolve_base_model("smollm2", default_cache_dir())
    rm = WORK / "smollm2-rm"
    if not (rm / "config.json").is_file():
        work_dir()
        torch.manual_seed(0)
        save_hf_checkpoint(load_value_model(base), load_tokenizer(base), rm)
    return base, rm


def checkpoints(preset: str) -> tuple[Path, Path]:
    return tiny_checkpoints() if preset == "tiny" else smollm2_checkpoints()


# -- timing inside actor methods -------------------------------------------------------------
def _traced_class(base: type, role: str, log_dir: str) -> type:
    """A subclass of ``base`` (same name, so process titles stay ``ray::<Class>.<method>``)
    whose public methods append (role, method, pid, start, end) to ``log_dir/<pid>.jsonl``.
    The return value's serialisation by Ray happens after ``end``: it counts as transport."""

    def wrap(name: str, fn: Any) -> Any:
        @functools.wraps(fn)
        def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            start = time.time()
            try:
                return fn(self, *args, **kwargs)
            finally:
                row = {"role": role, "method": name, "pid": os.getpid()}
                row |= {"start": start, "end": time.time()}
                with open(f"{log_dir}/{os.getpid()}.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")

        return method

    members = inspect.getmembers(base, inspect.isfunction)
    body: dict[str, Any] = {n: wrap(n, f) for n, f in members if not n.startswith("_")}
    body["__module__"] = __name__
    body["__qualname__"] = base.__name__
    return type(base.__name__, (base,), body)


def install_tracer(log_dir: Path) -> None:
    """Start every role's actors from traced subclasses (patches `roles._start`)."""
    import ray.cloudpickle

    from instructray.orchestrator import roles

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    original = getattr(roles._start, "__wrapped__", roles._start)

    @functools.wraps(original)
    def traced_start(cfg: Any, actor_cls: type, role: str, *args: Any, **kwargs: Any) -> Any:
        return original(cfg, _traced_class(actor_cls, role, str(log_dir)), role, *args, **kwargs)

    roles._start = traced_start


def read_intervals(log_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for path in log_dir.glob("*.jsonl"):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


def union_seconds(spans: list[tuple[float, float]], lo: float, hi: float) -> float:
    """Length of the union of ``spans`` clipped to [lo, hi]."""
    clipped = sorted((max(a, lo), min(b, hi)) for a, b in spans if b > lo and a < hi)
    total, cur_a, cur_b = 0.0, None, None
    for a, b in clipped:
        if cur_b is None or a > cur_b:
            if cur_b is not None:
                total += cur_b - cur_a
            cur_a, cur_b = a, b
        else:
            cur_b = max(cur_b, b)
    if cur_b is not None:
        total += cur_b - cur_a
    return total


# -- memory ----------------------------------------------------------------------------------
def process_group(proc: psutil.Process) -> str | None:
    """``ray::<Class>`` for Ray workers, ``VLLM::EngineCore`` for vLLM's engine process."""
    try:
        cmd = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    if "EngineCore" in cmd:
        return "VLLM::EngineCore"
    if cmd.startswith("ray::"):
        return cmd.split()[0].split(".")[0]
    if "VLLM::" in cmd:
        return cmd.split()[0]
    return None


class RSSSampler:
    """Samples the RSS of this process's descendants (so other jobs' Ray clusters on the box
    are not counted) every ``period`` seconds in a background thread."""

    def __init__(self, period: float = 0.5):
        self.period = period
        self.root = psutil.Process()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.reset()

    def reset(self) -> None:
        with getattr(self, "_lock", threading.Lock()):
            self.per_pid: dict[int, tuple[str, int]] = {}
            self.seen: dict[int, tuple[float, float]] = {}
            self.threads_env: dict[int, str | None] = {}
            self.started = time.time()
            self.peak_total = 0
            self.peak_driver = 0
            self.samples = 0

    def start(self) -> RSSSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.period)

    def sample(self) -> None:
        total = 0
        seen: list[tuple[int, str, int]] = []
        for proc in self.root.children(recursive=True):
            group = process_group(proc)
            if group is None:
                continue
            try:
                rss = proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            seen.append((proc.pid, group, rss))
            if group != "ray::IDLE":
                total += rss
        driver = self.root.memory_info().rss
        now = time.time()
        with self._lock:
            for pid, group, rss in seen:
                if pid not in self.threads_env:
                    self.threads_env[pid] = _omp_threads(pid)
                self.seen[pid] = (self.seen.get(pid, (now, now))[0], now)
                old = self.per_pid.get(pid, (group, 0))
                # A worker's title changes (IDLE -> actor): keep its actor name.
                name = group if group != "ray::IDLE" else old[0]
                self.per_pid[pid] = (name, max(old[1], rss))
            self.peak_total = max(self.peak_total, total)
            self.peak_driver = max(self.peak_driver, driver)
            self.samples += 1

    def report(self, pid_roles: dict[int, str] | None = None) -> dict[str, Any]:
        """Peak RSS (MiB) per actor class (max over its processes), per process with its role
        when known, the peak of the concurrent sum over actors + engine, and the driver."""
        mib = 2**20
        with self._lock:
            groups: dict[str, int] = {}
            procs = []
            for pid, (group, rss) in sorted(self.per_pid.items()):
                if group == "ray::IDLE":
                    continue
                groups[group] = max(groups.get(group, 0), rss)
                first, last = self.seen.get(pid, (self.started, self.started))
                procs.append(
                    {
                        "pid": pid,
                        "group": group,
                        "role": (pid_roles or {}).get(pid),
                        "peak_mib": rss // mib,
                        "seen_s": [round(first - self.started, 1), round(last - self.started, 1)],
                        "OMP_NUM_THREADS": self.threads_env.get(pid),
                    }
                )
            return {
                "peak_mib_by_group": {g: v // mib for g, v in sorted(groups.items())},
                "peak_mib_by_process": procs,
                "peak_mib_total_concurrent": self.peak_total // mib,
                "peak_mib_driver": self.peak_driver // mib,
                "samples": self.samples,
                "note": "RSS includes shared pages (libraries, Ray object-store mappings); "
                "total = max over samples of the sum over actor and vLLM processes; seen_s = "
                "first/last sample (s after the run started) in which the process was alive",
            }


def _omp_threads(pid: int) -> str | None:
    try:
        return psutil.Process(pid).environ().get("OMP_NUM_THREADS")
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def pid_roles(intervals: list[dict[str, Any]], sampler: RSSSampler) -> dict[int, str]:
    """Role of each traced actor process; vLLM's own processes count as the rollout role."""
    roles = {row["pid"]: row["role"] for row in intervals}
    for pid, (group, _) in list(sampler.per_pid.items()):
        if pid not in roles and group.startswith("VLLM::"):
            roles[pid] = "rollout (vLLM process)"
    return roles


# -- one PPO run -----------------------------------------------------------------------------
PHASES = ("time_generate", "time_score", "time_train", "time_sync")


def ppo_config(preset: str, sft: Path, rm: Path, extra: list[str]) -> Any:
    from instructray.config import load_config

    return load_config(
        REPO / "configs" / f"{preset}.yaml",
        [
            "stages=[ppo]",
            f"model.sft_checkpoint={sft}",
            f"model.reward_checkpoint={rm}",
            "output.tensorboard=false",
            *extra,
        ],
    )


def breakdown(rows: list[dict[str, Any]], spans: list[tuple[float, float]]) -> list[dict]:
    """Per iteration (from the 2nd: the 1st has no start time in metrics.jsonl): wall time from
    consecutive "time" stamps, the four phases, other, and the time no actor method ran."""
    out = []
    for prev, row in itertools.pairwise(rows):
        wall = row["time"] - prev["time"]
        phases = {k: float(row.get(k) or 0.0) for k in PHASES}
        busy = union_seconds(spans, prev["time"], row["time"])
        out.append(
            {
                "step": row["step"],
                "wall": wall,
                **phases,
                "time_other": wall - sum(phases.values()),
                "sync_seconds": row.get("sync_seconds"),
                "sync_bytes": row.get("sync_bytes"),
                "tokens_per_s": row.get("tokens_per_s"),
                "response_length": row.get("response_length"),
                "actor_busy": busy,
                "overhead_fraction": (wall - busy) / wall if wall > 0 else None,
                "proxy_overhead_fraction": (phases["time_sync"] + wall - sum(phases.values()))
                / wall
                if wall > 0
                else None,
            }
        )
    return out


def summarize(per_iter: list[dict[str, Any]], warmup: int) -> dict[str, Any]:
    """Medians over the measured iterations after the first ``warmup`` of them. Iteration 1
    (engine warm-up, first DeepSpeed step) has no start stamp and is never among them."""
    kept = per_iter[warmup:] or per_iter
    keys = [k for k in kept[0] if k != "step"]
    return {
        "iterations_used": [r["step"] for r in kept],
        **{
            f"median_{k}": med([float(r[k]) for r in kept if r[k] is not None])
            for k in keys
            if any(r[k] is not None for r in kept)
        },
    }


def run_ppo(
    cfg: Any, run_dir: Path, sampler: RSSSampler, warmup: int = 0, keep_checkpoints: bool = False
) -> dict[str, Any]:
    """Run the PPO stage with traced actors; timings, overhead and peak RSS of this run."""
    from instructray.orchestrator.pipeline import run_job
    from instructray.run_log import read_metrics

    if run_dir.exists():
        shutil.rmtree(run_dir)
    trace = run_dir / "trace"
    trace.mkdir(parents=True)
    install_tracer(trace)
    sampler.reset()
    started = time.time()
    run_job(cfg, run_dir)
    total = time.time() - started
    sampler.sample()
    rows = read_metrics(run_dir, "ppo")
    intervals = read_intervals(trace)
    spans = [(r["start"], r["end"]) for r in intervals]
    per_iter = breakdown(rows, spans)
    memory = sampler.report(pid_roles(intervals, sampler))
    if not keep_checkpoints:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    first = rows[0] if rows else {}
    return {
        "job_wall_s": round(total, 2),
        "iteration_1": {k: first.get(k) for k in PHASES},
        "summary": summarize(per_iter, warmup),
        "per_iteration": per_iter,
        "memory": memory,
    }
