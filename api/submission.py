"""What the service hands Ray for a job: the submission id and entry point of each attempt (the
first run, then one per resume), and the queue's word to a job it holds back."""

from __future__ import annotations

import shlex
from pathlib import Path

RESUME_SUFFIX = "-resume"


def submission_id(job_id: str, attempt: int) -> str:
    """Ray refuses a submission id it has seen, so every resume runs under one of its own."""
    return job_id if attempt == 0 else f"{job_id}{RESUME_SUFFIX}{attempt}"


def entrypoint(command: str, run_dir: Path, attempt: int) -> str:
    """``<command> run RUN_DIR/config.yaml --out RUN_DIR`` for the first run; a resume continues
    the run folder: ``<command> run --resume RUN_DIR``."""
    folder = shlex.quote(str(run_dir))
    if attempt > 0:
        return f"{command} run --resume {folder}"
    return f"{command} run {shlex.quote(str(run_dir / 'config.yaml'))} --out {folder}"


def run_dir_of(entrypoint: str, command: str) -> Path | None:
    """RUN_DIR of ``<command> run CONFIG --out RUN_DIR``, the entry point of a first run."""
    try:
        args = shlex.split(entrypoint)
    except ValueError:
        return None
    if len(args) < 5 or Path(args[0]).name != Path(command).name or args[1] != "run":
        return None
    if "--out" not in args[2:-1]:
        return None
    return Path(args[args.index("--out") + 1])


def ordinal(n: int) -> str:
    suffix = "th" if n % 100 in (11, 12, 13) else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def waiting_message(on_ray: int, limit: int, place: int) -> str:
    """The message of a queued job held back by ``max_running_jobs``; ``place`` counts from 1."""
    jobs = "job" if on_ray == 1 else "jobs"
    return f"waiting: {on_ray} {jobs} running (max_running_jobs={limit}), {ordinal(place)} in line"
