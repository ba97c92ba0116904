"""A job: the requested stages in order, each reading the checkpoint of the one before."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path

from instructray.config import JobConfig, Stage, dump_config
from instructray.models import default_cache_dir, resolve_base_model
from instructray.orchestrator.context import JobContext, JobData
from instructray.orchestrator.roles import init_ray
from instructray.orchestrator.stages import dpo, lm, ppo, rm
from instructray.run_log import RunLogger

STAGES: dict[Stage, Callable[[JobContext], Path]] = {
    "pretrain": partial(lm.run, stage="pretrain"),
    "sft": partial(lm.run, stage="sft"),
    "rm": rm.run,
    "ppo": ppo.run,
    "dpo": dpo.run,
}


def run_job(cfg: JobConfig, run_dir: Path | None = None) -> JobContext:
    """Run every stage of ``cfg``; returns the context with the checkpoints it wrote.

    RUN_DIR gets config.yaml, metrics.jsonl, summary.json, tensorboard/, checkpoints/<stage>/.
    """
    run_dir = Path(run_dir or cfg.output.run_dir)
    log = RunLogger(run_dir, tensorboard=cfg.output.tensorboard)
    dump_config(cfg, run_dir / "config.yaml")
    try:
        cache = cfg.output.cache_dir or default_cache_dir()
        log.info(f"job {cfg.name!r}: stages {' → '.join(cfg.ordered_stages())}, run dir {run_dir}")
        base = resolve_base_model(cfg.model.base, Path(cache))
        log.info(f"base model {cfg.model.base!r} at {base}")
        data = JobData(cfg)
        data.check_files(cfg.ordered_stages())
        init_ray(cfg)
        ctx = JobContext(cfg=cfg, run_dir=run_dir, log=log, base_model=base, data=data)
        for stage in cfg.ordered_stages():
            log.start_stage(stage)
            ctx.checkpoints[stage] = STAGES[stage](ctx)
    except BaseException as err:
        log.write_summary(status="failed", error=f"{type(err).__name__}: {err}")
        log.info(traceback.format_exc())
        raise
    finally:
        log.close()
    log.write_summary(status="succeeded")
    return ctx
