"""A job: the requested stages in order, each reading the checkpoint of the one before."""

from __future__ import annotations

import itertools
import json
import re
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path

from transformers import AutoConfig

from instructray.actors.group import RoleError
from instructray.config import (
    ConfigError,
    JobConfig,
    PathKind,
    Stage,
    dump_config,
    get_path,
    path_fields,
)
from instructray.models import default_cache_dir, resolve_base_model
from instructray.models.loading import is_complete
from instructray.orchestrator.context import JobContext, JobData
from instructray.orchestrator.roles import init_ray
from instructray.orchestrator.stages import dpo, lm, ppo, rm
from instructray.orchestrator.stages import eval as eval_stage
from instructray.run_log import Interrupted, RunLogger, hold_run_folder

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

STAGES: dict[Stage, Callable[[JobContext], Path]] = {
    "pretrain": partial(lm.run, stage="pretrain"),
    "sft": partial(lm.run, stage="sft"),
    "rm": rm.run,
    "ppo": ppo.run,
    "dpo": dpo.run,
    "eval": eval_stage.run,
}


def run_job(cfg: JobConfig, run_dir: Path | None = None) -> JobContext:
    """Run every stage of ``cfg``; returns the context with the checkpoints it wrote.

    RUN_DIR gets config.yaml, metrics.jsonl, summary.json, tensorboard/, checkpoints/<stage>/,
    and with the eval stage eval.json and report/.
    """
    run_dir = Path(run_dir or cfg.output.run_dir)
    refuse_finished_run(run_dir)
    with hold_run_folder(run_dir):
        refuse_finished_run(run_dir)  # again: another driver may have started meanwhile
        log = RunLogger(run_dir, tensorboard=cfg.output.tensorboard)
        dump_config(cfg, run_dir / "config.yaml")
        return _run_stages(cfg, run_dir, log, cfg.ordered_stages(), {})


def resume_job(cfg: JobConfig, run_dir: Path) -> JobContext:
    """Continue an interrupted or failed run: finished stages are not rerun (their checkpoints
    are used), the first unfinished one continues from its newest train state."""
    with hold_run_folder(run_dir):
        log = RunLogger(run_dir, tensorboard=cfg.output.tensorboard, keep_summary=True)
        if log.previous_status == "succeeded":
            raise ConfigError(f"{run_dir} holds a run that succeeded: there is nothing to resume")
        log.previous_status = None  # this attempt's outcome decides the run's status
        found = finished_stages(cfg, run_dir, log)
        todo = [s for s in cfg.ordered_stages() if s not in found]
        done = ", ".join(found) or "none"
        log.info(f"resuming {run_dir}: finished stages {done}; to run {', '.join(todo)}")
        return _run_stages(cfg, run_dir, log, todo, found, resuming=True)


def finished_stages(cfg: JobConfig, run_dir: Path, log: RunLogger) -> dict[Stage, Path]:
    """The stages of ``cfg`` whose end the run's summary records, with a complete checkpoint
    (the eval stage: with its eval.json)."""
    found: dict[Stage, Path] = {}
    for stage in cfg.ordered_stages():
        summary = log.summaries.get(stage)
        if summary is None or summary.wall_time_s == 0:
            break
        if stage == "eval":
            if not (run_dir / "eval.json").is_file():
                break
            found[stage] = run_dir / "eval.json"
        elif summary.checkpoint and is_complete(Path(summary.checkpoint)):
            found[stage] = Path(summary.checkpoint)
        else:
            break
    return found


def refuse_finished_run(run_dir: Path) -> None:
    """A folder that already holds a run is not written over: a second run there would append
    to its metrics.jsonl and replace its checkpoints, and nothing would tell the two apart."""
    summary, metrics = run_dir / "summary.json", run_dir / "metrics.jsonl"
    if not (summary.exists() or metrics.exists()):
        return
    status = None
    try:
        body = json.loads(summary.read_text())
        status = body.get("status")
        held = f"a {status} run of stages {', '.join(body.get('stages', {})) or '-'}"
    except (OSError, ValueError):
        held = "the metrics of an earlier run"
    again = (
        f"evaluate it again with `instructray eval {run_dir}`"
        if status == "succeeded"
        else f"continue it with `instructray run --resume {run_dir}`"
    )
    raise ConfigError(
        f"{run_dir} already holds {held}; a new run there would mix its metrics and "
        f"checkpoints with that one's. Give another run folder (--out, or make demo "
        f"RUN_DIR=...), delete this one, or {again}"
    )


def run_eval(cfg: JobConfig, run_dir: Path) -> JobContext:
    """``instructray eval RUN_DIR``: the eval stage alone on a run's saved checkpoints; its
    stage summary and warnings are kept, eval.json and report/ (re)written."""
    found: dict[Stage, Path] = {}
    for stage in ("pretrain", "sft", "rm", "ppo", "dpo"):
        path = run_dir / "checkpoints" / stage
        if is_complete(path):
            found[stage] = path
    with hold_run_folder(run_dir):
        log = RunLogger(run_dir, tensorboard=False, keep_summary=True)
        return _run_stages(cfg, run_dir, log, ["eval"], found)


def run_with_restarts(ctx: JobContext, stage: Stage) -> Path:
    """Run ``stage``; when one of its actors dies, run it again from its newest train state
    (all of its actors start anew), at most ``ray.max_stage_restarts`` times."""
    limit = ctx.cfg.ray.max_stage_restarts
    for restart in itertools.count(1):
        try:
            return STAGES[stage](ctx)
        except RoleError as err:
            if not err.restartable or restart > limit:
                raise
            step = ctx.log.summaries[stage].steps if stage in ctx.log.summaries else 0
            ctx.log.warn(
                stage,
                step,
                "actor_died",
                f"{err}; restart {restart} of {limit}: the stage's actors start again from "
                f"its newest train state",
                key=str(restart),
            )
            ctx.resuming = True
    raise AssertionError("unreachable")


MODEL_HINTS = {
    "model.sft_checkpoint": "the folder of a checkpoint, e.g. RUN_DIR/checkpoints/sft",
    "model.reward_checkpoint": "the folder of a checkpoint, e.g. RUN_DIR/checkpoints/rm",
}


def check_checkpoints(cfg: JobConfig) -> None:
    """Every model path of the config (the `path_fields` of kind model: checkpoints, a base
    model or fluency model given as a folder) is a model folder, found before any actor starts
    (an actor would otherwise take a missing path for a model-hub name and fail minutes later)."""
    for name, marker in path_fields(JobConfig):
        value = get_path(cfg, name)
        if marker.kind is not PathKind.MODEL or value is None or marker.is_preset(value):
            continue
        path = Path(value).expanduser()
        if not (path / "config.json").is_file():
            what = "does not exist" if not path.exists() else "has no config.json"
            presets = f"a preset ({', '.join(marker.presets)}) or " if marker.presets else ""
            hint = MODEL_HINTS.get(name, "a local Hugging Face model folder")
            raise ConfigError(f"{name}: {value} {what}; give {presets}{hint}")


def check_model_shape(cfg: JobConfig, stages: list[Stage], base: Path) -> None:
    """Settings that depend on the model's shape, refused before any actor starts."""
    layers = cfg.rm.trainable_layers
    if "rm" not in stages or layers is None:
        return
    init = cfg.model.sft_checkpoint or base
    depth = AutoConfig.from_pretrained(init).num_hidden_layers
    if layers > depth:
        raise ConfigError(
            f"rm.trainable_layers is {layers}, but the reward model's backbone ({init}) has "
            f"{depth} transformer blocks: choose 1..{depth}, or null to train all of them"
        )


def _run_stages(
    cfg: JobConfig,
    run_dir: Path,
    log: RunLogger,
    stages: list[Stage],
    found: dict[Stage, Path],
    resuming: bool = False,
) -> JobContext:
    current: Stage | None = None
    try:
        cache = cfg.output.cache_dir or default_cache_dir()
        log.info(f"job {cfg.name!r}: stages {' → '.join(stages)}, run dir {run_dir}")
        check_checkpoints(cfg)
        base = resolve_base_model(cfg.model.base, Path(cache))
        log.info(f"base model {cfg.model.base!r} at {base}")
        check_model_shape(cfg, stages, base)
        data = JobData(cfg)
        data.check_files(stages)
        init_ray(cfg)
        ctx = JobContext(
            cfg=cfg, run_dir=run_dir, log=log, base_model=base, data=data, resuming=resuming
        )
        ctx.checkpoints.update(found)
        for stage in stages:
            current = stage
            log.start_stage(stage, keep=resuming)
            ctx.checkpoints[stage] = run_with_restarts(ctx, stage)
            ctx.resuming = False  # only the first stage run continues an earlier attempt
    except BaseException as err:
        # A later evaluation that fails does not make the training run it measured fail.
        stopped = isinstance(err, (Interrupted, KeyboardInterrupt))
        status = log.previous_status or ("interrupted" if stopped else "failed")
        where = f"{current} stage {'interrupted' if stopped else 'failed'}: " if current else ""
        # Ray colours the actor prefixes of its errors for terminals; summary.json is no terminal.
        message = ANSI_ESCAPE.sub("", f"{where}{type(err).__name__}: {err}")
        log.write_summary(status=status, error=message)
        log.info(traceback.format_exc())
        raise
    finally:
        log.close()
    log.write_summary(status=log.previous_status or "succeeded")
    return ctx
