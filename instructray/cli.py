"""``instructray run CONFIG [--set key=value ...] [--out RUN_DIR]``,
``instructray run --resume RUN_DIR [--set ...]``,
``instructray check CONFIG [--set ...]`` and
``instructray eval RUN_DIR [--checkpoints sft ppo ...] [--set ...]`` and
``instructray export RUN_DIR --stage ppo --to DIR``."""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from instructray.config import ConfigError, load_config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="instructray",
        description="InstructGPT alignment (SFT → reward model → PPO-ptx, or DPO) on Ray.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a job from a YAML config")
    run.add_argument("config", type=Path, nargs="?", help="job config, e.g. configs/tiny.yaml")
    run.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue an interrupted or failed run from its newest train state (its own "
        "config.yaml; --set changes it, which makes it differ from an uninterrupted run)",
    )
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. ppo.iterations=5",
    )
    run.add_argument("--out", type=Path, default=None, help="run folder (default output.run_dir)")
    check = sub.add_parser("check", help="validate a config and print it resolved")
    check.add_argument("config", type=Path)
    check.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    evaluate = sub.add_parser(
        "eval",
        help="evaluate a run's policies on held-out prompts: eval.json and report/ in RUN_DIR",
    )
    evaluate.add_argument("run_dir", type=Path, help="a run folder (with config.yaml)")
    evaluate.add_argument(
        "--checkpoints",
        nargs="+",
        choices=["pretrain", "sft", "ppo", "dpo"],
        help="policies to evaluate (default: eval.checkpoints of the run's config)",
    )
    evaluate.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override the run's config, e.g. eval.num_prompts=200",
    )
    export = sub.add_parser(
        "export", help="copy one stage's model out of a run, with a model card, to ship it"
    )
    export.add_argument("run_dir", type=Path, help="a run folder")
    export.add_argument("--stage", required=True, help="pretrain, sft, rm, ppo, ppo_critic, dpo")
    export.add_argument("--to", dest="out", type=Path, required=True, help="a new folder")
    return parser


def _export(args: argparse.Namespace) -> int:
    from instructray.export import export_checkpoint

    try:
        out = export_checkpoint(args.run_dir, args.stage, args.out)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"exported: {out}")
    return 0


def _load(args: argparse.Namespace):
    if args.command == "run" and args.resume is not None:
        if args.config is not None or args.out is not None:
            raise ConfigError("--resume RUN_DIR takes its config and run folder from RUN_DIR")
        return _load_run_folder(args.resume, list(args.overrides))
    if args.command == "run" and args.config is None:
        raise ConfigError("give a job config (e.g. configs/tiny.yaml) or --resume RUN_DIR")
    if args.command != "eval":
        cfg = load_config(args.config, args.overrides)
        if getattr(args, "out", None) is not None:
            cfg.output.run_dir = args.out
        return cfg
    overrides = list(args.overrides)
    if args.checkpoints:
        overrides.append(f"eval.checkpoints=[{', '.join(args.checkpoints)}]")
    return _load_run_folder(args.run_dir, overrides)


def _load_run_folder(run_dir: Path, overrides: list[str]):
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise ConfigError(f"{run_dir} is not a run folder: {config} is missing")
    cfg = load_config(config, overrides)
    cfg.output.run_dir = run_dir
    return cfg


def stop_on_sigterm() -> Any:
    """SIGTERM ends a run through the same path as an error (actors shut down, summary.json
    says ``interrupted``) instead of leaving it ``running`` forever. As a Ray job's entry
    point, the driver also gets SIGTERM when its parent dies (a killed entry-point shell
    would otherwise leave it training, orphaned, while Ray reports the job failed)."""
    from instructray.run_log import Interrupted

    def interrupt(signum: int, _frame: object) -> None:
        raise Interrupted(f"stopped by {signal.Signals(signum).name}")

    if threading.current_thread() is not threading.main_thread():
        return None  # only the main thread handles signals (a test's driver in a thread)
    previous = signal.signal(signal.SIGTERM, interrupt)
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ and sys.platform == "linux":
        die_with_parent()
    return previous


def die_with_parent() -> None:
    parent = os.getppid()
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before prctl: the signal will not come
        os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "export":
        return _export(args)
    try:
        cfg = _load(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.command == "check":
        import yaml

        print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        return 0

    import ray

    from instructray.orchestrator.pipeline import resume_job, run_eval, run_job
    from instructray.run_log import Interrupted, RunFolderBusy

    started_ray = not ray.is_initialized()
    previous_handler = stop_on_sigterm()
    try:
        if args.command == "eval":
            ctx = run_eval(cfg, cfg.output.run_dir)
        elif args.resume is not None:
            ctx = resume_job(cfg, cfg.output.run_dir)
        else:
            ctx = run_job(cfg)
    except (ConfigError, RunFolderBusy) as err:  # found before any training
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Interrupted as err:
        print(f"interrupted: {err}; continue with `instructray run --resume`", file=sys.stderr)
        return 143
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
        if started_ray and ray.is_initialized():
            ray.shutdown()
    done = "eval.json" if args.command == "eval" else "summary.json"
    print(f"done: {ctx.run_dir}/{done}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
