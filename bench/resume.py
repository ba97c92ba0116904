"""Faults and recovery: how long it takes, what a train state costs, and how close the
recovered run is to an uninterrupted one.

Driver scenarios (ppo, ppo_async, sft; tiny preset, each run a fresh CLI process with its own
local Ray cluster): an uninterrupted reference run; the same command killed with SIGKILL once
``kill_at`` is logged; `instructray run --resume`. Recovery time: from starting the resume to
the first new step in metrics.jsonl (Ray start, actors, loading the train state, the weight
sync into the engine). Actor scenarios: kill -9 of the critic, then of the vLLM engine core, in
one async PPO run (actors: each rolls the stage back to its train state); kill -9 of the
reference, then of the engine core, in a sync run (in_place: each role restarts alone), and of
the reference in an async run (in_place_async). Seconds until the stage noticed (its warning) and
until it logged a new step.

    python bench/resume.py [--scenarios ppo ppo_async sft actors in_place in_place_async]
    → bench/results/resume.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness import REPO, host_info, work_dir, write_result
from safetensors.torch import load_file

PPO = [
    "stages=[ppo]",
    # A scripted reward keeps the scenario free of an RM stage; the mechanics are the same.
    "ppo.reward_function=tests.integration.test_tiny_job:words_per_response",
    "ppo.iterations=6",
    "ppo.rollout_batch_size=32",
    "ppo.monitor.every=3",
    "ppo.monitor.num_prompts=16",
    "output.train_state_every=2",
]
SCENARIOS: dict[str, dict[str, Any]] = {
    "ppo": {"sets": PPO, "stage": "ppo", "kill_at": 5, "checkpoints": ["ppo", "ppo_critic"]},
    "ppo_async": {
        "sets": [*PPO, "ppo.async_queue=1"],
        "stage": "ppo",
        "kill_at": 5,
        "checkpoints": ["ppo", "ppo_critic"],
    },
    "sft": {
        "sets": ["stages=[sft]", "sft.max_examples=1200", "output.train_state_every=8"],
        "stage": "sft",
        "kill_at": 20,
        "checkpoints": ["sft"],
    },
}
UNEQUAL = ("time", "tokens_per_s", "examples_per_s", "sync_seconds", "sync_reload_seconds")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "instructray.cli", *args]


def metrics(run_dir: Path, stage: str) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if row["stage"] == stage:
            rows.append(row)
    return rows


def run(argv: list[str], log: Path, kill_when: Any = None) -> float:
    """Seconds the command ran; killed with SIGKILL as soon as ``kill_when()`` holds."""
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            if kill_when is not None and kill_when():
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
            time.sleep(0.1)
    assert kill_when is not None or proc.returncode == 0, f"{argv} failed: see {log}"
    return time.perf_counter() - start


def max_metric_diff(ref: list[dict], got: list[dict], after: int) -> float:
    by_step = {r["step"]: r for r in ref}
    worst = 0.0
    for row in got:
        if row["step"] <= after:
            continue
        for key, value in row.items():
            if key.startswith(UNEQUAL) or not isinstance(value, float):
                continue
            worst = max(worst, abs(value - by_step[row["step"]][key]))
    return worst


def max_weight_diff(ref_dir: Path, got_dir: Path) -> float:
    (ref_file,) = ref_dir.glob("*.safetensors")
    (got_file,) = got_dir.glob("*.safetensors")
    ref, got = load_file(ref_file), load_file(got_file)
    return max(float((ref[k] - got[k]).abs().max()) for k in ref)


def scenario(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    root = work_dir("resume", name)
    for sub in ("reference", "killed"):
        subprocess.run(["rm", "-rf", str(root / sub)], check=True)
    base = cli("run", "configs/tiny.yaml", *[a for s in spec["sets"] for a in ("--set", s)])
    base += ["--set", "output.tensorboard=false"]
    stage, kill_at = spec["stage"], spec["kill_at"]
    ref_s = run([*base, "--out", str(root / "reference")], root / "reference.log")

    killed = root / "killed"

    def reached() -> bool:
        return any(r["step"] >= kill_at for r in metrics(killed, stage))

    killed_s = run([*base, "--out", str(killed)], root / "killed.log", reached)
    time.sleep(3)  # the killed driver's local Ray cluster shuts itself down
    summary_before = json.loads((killed / "summary.json").read_text())["status"]
    states = sorted((killed / "train_state" / stage).glob("step-*"))
    after = int(states[-1].name.split("-")[1])
    state_bytes = sum(f.stat().st_size for f in states[-1].rglob("*") if f.is_file())

    started = time.time()
    resume_s = run(cli("run", "--resume", str(killed)), root / "resume.log")
    first_new = min(r["time"] for r in metrics(killed, stage) if r["step"] > after)
    summary = json.loads((killed / "summary.json").read_text())
    ref_rows, got_rows = metrics(root / "reference", stage), metrics(killed, stage)
    return {
        "killed_after_s": round(killed_s, 1),
        "status_left_by_kill": summary_before,
        "resumed_after_step": after,
        "discarded_lines": summary["resumes"][-1]["discarded_lines"],
        "recovery_to_first_new_step_s": round(first_new - started, 1),
        "resume_run_s": round(resume_s, 1),
        "reference_run_s": round(ref_s, 1),
        "train_state_mb": round(state_bytes / 2**20, 1),
        "steps_equal": [r["step"] for r in got_rows] == [r["step"] for r in ref_rows],
        "max_abs_metric_diff_after_resume": max_metric_diff(ref_rows, got_rows, after),
        "max_abs_weight_diff": {
            part: max_weight_diff(
                root / "reference" / "checkpoints" / part, killed / "checkpoints" / part
            )
            for part in spec["checkpoints"]
        },
        "final_status": summary["status"],
    }


def _pid(title: str, role: str | None = None) -> int:
    """The one process whose title starts with ``title`` (and that runs ``role``)."""
    import psutil

    def role_of(proc: psutil.Process) -> str | None:
        try:
            return proc.environ().get("INSTRUCTRAY_ROLE")
        except psutil.Error:
            return None

    (pid,) = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if (p.info["cmdline"] or [""])[0].startswith(title) and role in (None, role_of(p))
    ]
    return pid


ACTOR_FAULTS: dict[str, dict[str, Any]] = {
    # A trainer, then the engine, in async mode: both roll the stage back to its train state.
    "actors": {
        "sets": [*PPO, "ppo.async_queue=1"],
        "warning": "actor_died",
        "kills": [
            ("critic", "ray::ValueModelActor", None, 3),
            ("engine_core", "VLLM::EngineCore", None, 5),
        ],
    },
    # Sync mode, stateless roles: each restarts alone and the iteration is retried.
    "in_place": {
        "sets": [*PPO, "ppo.monitor.every=0"],
        "warning": "role_restarted",
        "kills": [
            ("reference", "ray::", "reference", 2),
            ("engine_core", "VLLM::EngineCore", None, 4),
        ],
    },
    # Async mode: the reference restarts alone too (the batch in flight stays good).
    "in_place_async": {
        "sets": [*PPO, "ppo.async_queue=1", "ppo.monitor.every=0"],
        "warning": "role_restarted",
        "kills": [("reference", "ray::", "reference", 2)],
    },
}


def actor_faults(name: str) -> dict[str, Any]:
    """kill -9 of one process after another in one PPO run: seconds until the stage noticed
    (its warning in summary.json) and until it logged a new step."""
    spec = ACTOR_FAULTS[name]
    run_dir = work_dir("resume", name) / "run"
    subprocess.run(["rm", "-rf", str(run_dir)], check=True)
    argv = cli("run", "configs/tiny.yaml", *[a for s in spec["sets"] for a in ("--set", s)])
    argv += ["--set", "output.tensorboard=false", "--out", str(run_dir)]

    def summary() -> dict[str, Any]:
        try:
            return json.loads((run_dir / "summary.json").read_text())
        except (OSError, ValueError):
            return {}

    def until(condition: Any, proc: subprocess.Popen) -> float:
        start = time.perf_counter()
        while not condition():
            assert proc.poll() is None, f"the run ended: see {run_dir.parent / 'run.log'}"
            time.sleep(0.1)
        return round(time.perf_counter() - start, 1)

    def logged(step: int) -> bool:
        return any(r["step"] >= step for r in metrics(run_dir, "ppo"))

    def warned(n: int) -> Any:
        return lambda: sum(w["kind"] == spec["warning"] for w in summary().get("warnings", [])) >= n

    result: dict[str, Any] = {}
    with (run_dir.parent / "run.log").open("w") as out:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        for n, (what, title, role, at_step) in enumerate(spec["kills"], 1):
            until(lambda at_step=at_step: logged(at_step), proc)
            last = max(r["step"] for r in metrics(run_dir, "ppo"))
            os.kill(_pid(title, role), signal.SIGKILL)
            noticed = until(warned(n), proc)
            result[what] = {
                "killed_after_step": last,
                "noticed_s": noticed,
                "next_step_s": round(noticed + until(lambda last=last: logged(last + 1), proc), 1),
                "rolled_back_to_step": (summary().get("resumes") or [{}])[-1].get("after_step"),
            }
        proc.wait()
    result["final_status"] = summary()["status"]
    result["stage_restarts"] = len(summary().get("resumes", []))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = [*SCENARIOS, *ACTOR_FAULTS]
    parser.add_argument("--scenarios", nargs="+", choices=names, default=names)
    args = parser.parse_args()
    results = {}
    for name in args.scenarios:
        print(f"== {name}", flush=True)
        results[name] = (
            actor_faults(name) if name in ACTOR_FAULTS else scenario(name, SCENARIOS[name])
        )
        print(json.dumps(results[name]), flush=True)
    # Scenarios not run this time keep their earlier figures (each says when it ran).
    path = Path(__file__).parent / "results" / "resume.json"
    earlier = json.loads(path.read_text())["scenarios"] if path.exists() else {}
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    fresh = {name: {**result, "measured": stamp} for name, result in results.items()}
    write_result("resume", {"host": host_info(), "scenarios": earlier | fresh})


if __name__ == "__main__":
    main()
