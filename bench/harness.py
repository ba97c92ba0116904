"""Shared plumbing of the benchmarks: checkpoints, PPO runs through `run_job`, timing of actor
methods (for the orchestration overhead), result files. Memory sampling lives in rss.py.

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
import time
from pathlib import Path
from statistics import median
from typing import Any

import psutil
from rss import RSSSampler

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
    build = work_dir("tiny-build")
    shutil.rmtree(build, ignore_errors=True)
    ctx = run_job(cfg, build)
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
                torch = sys.modules.get("torch")
                threads = torch.get_num_threads() if torch is not None else None
                row = {"role": role, "method": name, "pid": os.getpid(), "threads": threads}
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


def pid_roles(intervals: list[dict[str, Any]]) -> dict[int, str]:
    """Role of each traced actor process of a run."""
    return {row["pid"]: row["role"] for row in intervals}


def torch_threads(intervals: list[dict[str, Any]]) -> dict[str, int | None]:
    """torch.get_num_threads() in each role's actor (rank 0 if several), as last seen."""
    return {row["role"]: row.get("threads") for row in sorted(intervals, key=lambda r: r["end"])}


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
            # Timings of the PPO loop itself: the reward-hacking monitor's sampling is not one.
            "ppo.monitor.every=0",
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


def summarize(per_iter: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the measured iterations: 2..N (iteration 1, the warm-up with the engine's
    first batch and the first DeepSpeed step, has no start stamp and is never measured)."""
    keys = [k for k in (per_iter[0] if per_iter else {}) if k != "step"]
    medians = {f"median_{k}": med([r[k] for r in per_iter if r[k] is not None]) for k in keys}
    return {"iterations_used": [r["step"] for r in per_iter], **medians}


def guarded(fn: Any, *args: Any) -> dict[str, Any]:
    """``fn(*args)``, or a record of its failure (e.g. killed for memory) so the other
    systems of the run still get measured."""
    try:
        return fn(*args)
    except Exception as err:
        first = str(err).strip().splitlines()[:3]
        return {"error": f"{type(err).__name__}: {' '.join(first)[:400]}", "per_iteration": []}


def pooled_median(runs: list[dict[str, Any]], key: str) -> float | None:
    """Median of ``key`` over the measured iterations of all rounds of one system."""
    values = [r[key] for run in runs for r in run["per_iteration"] if r.get(key) is not None]
    return med([float(v) for v in values])


def run_ppo(cfg: Any, run_dir: Path, sampler: RSSSampler) -> dict[str, Any]:
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
    load_start = os.getloadavg()[0]
    run_job(cfg, run_dir)
    total = time.time() - started
    sampler.sample()
    rows = read_metrics(run_dir, "ppo")
    intervals = read_intervals(trace)
    spans = [(r["start"], r["end"]) for r in intervals]
    per_iter = breakdown(rows, spans)
    memory = sampler.report(pid_roles(intervals))
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # timing only: free the disk
    first = rows[0] if rows else {}
    return {
        "job_wall_s": round(total, 2),
        "load_avg_1m": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "iteration_1": {k: first.get(k) for k in PHASES},
        "summary": summarize(per_iter),
        "per_iteration": per_iter,
        "memory": memory,
        "actor_torch_threads": torch_threads(intervals),
    }
