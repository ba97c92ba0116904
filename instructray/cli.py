"""``instructray run CONFIG [--set key=value ...] [--out RUN_DIR]``,
``instructray check CONFIG [--set ...]`` and
``instructray eval RUN_DIR [--checkpoints sft ppo ...] [--set ...]`` and
``instructray export RUN_DIR --stage ppo --to DIR``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from instructray.config import ConfigError, load_config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="instructray",
        description="InstructGPT alignment (SFT → reward model → PPO-ptx, or DPO) on Ray.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a job from a YAML config")
    run.add_argument("config", type=Path, help="job config, e.g. configs/tiny.yaml")
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
    if args.command != "eval":
        cfg = load_config(args.config, args.overrides)
        if getattr(args, "out", None) is not None:
            cfg.output.run_dir = args.out
        return cfg
    config = args.run_dir / "config.yaml"
    if not config.is_file():
        raise ConfigError(f"{args.run_dir} is not a run folder: {config} is missing")
    overrides = list(args.overrides)
    if args.checkpoints:
        overrides.append(f"eval.checkpoints=[{', '.join(args.checkpoints)}]")
    cfg = load_config(config, overrides)
    cfg.output.run_dir = args.run_dir
    return cfg


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

    from instructray.orchestrator.pipeline import run_eval, run_job

    started_ray = not ray.is_initialized()
    try:
        ctx = run_eval(cfg, cfg.output.run_dir) if args.command == "eval" else run_job(cfg)
    except ConfigError as err:  # found once the job looks at its inputs, before any training
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if started_ray and ray.is_initialized():
            ray.shutdown()
    done = "eval.json" if args.command == "eval" else "summary.json"
    print(f"done: {ctx.run_dir}/{done}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
