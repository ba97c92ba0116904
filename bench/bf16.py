"""Is bfloat16 faster than float32 on this CPU, and does the result hold?

    python bench/bf16.py [--examples 320] [--stage sft]

Runs the same short SFT (or RM) stage of configs/smollm2.yaml twice from the same checkpoint and
data — ``model.dtype=float32`` and ``model.dtype=bfloat16`` (DeepSpeed's bf16 mode: bf16 weights
and activations, fp32 master weights in the optimizer) — and compares the median step time and
the held-out metric the stage reports. Writes bench/results/bf16_smollm2_<stage>.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
from pathlib import Path
from statistics import median

from harness import REPO, host_info, ratio, work_dir, write_result

PRESET = REPO / "configs" / "smollm2.yaml"
HELD_OUT = {"sft": "eval_loss", "rm": "heldout_accuracy"}


def run_stage(stage: str, dtype: str, examples: int, extra: list[str]) -> dict:
    out = work_dir("bf16") / f"{stage}_{dtype}"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    cli = Path(sys.executable).parent / "instructray"
    limit = "sft.max_examples" if stage == "sft" else "rm.max_comparisons"
    cmd = [str(cli), "run", str(PRESET), "--out", str(out), "--set", f"stages=[{stage}]"]
    for item in [f"model.dtype={dtype}", f"{limit}={examples}", *extra]:
        cmd += ["--set", item]
    print("$", " ".join(cmd), flush=True)
    with open(out.parent / f"{out.name}.log", "w") as log:
        subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=True)
    summary = json.loads((out / "summary.json").read_text())["stages"][stage]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    stamps = [r["time"] for r in rows if r.get("stage") == stage and "loss" in r]
    steps = [b - a for a, b in itertools.pairwise(stamps)]
    return {
        "steps": summary["steps"],
        "median_step_s": round(median(steps), 3) if steps else None,
        "stage_wall_s": summary["wall_time_s"],
        "first_loss": round(summary["first_loss"], 4),
        "last_loss": round(summary["last_loss"], 4),
        HELD_OUT[stage]: round(summary["eval"][HELD_OUT[stage]], 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=sorted(HELD_OUT), default="sft")
    parser.add_argument("--examples", type=int, default=320)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    runs = {
        d: run_stage(args.stage, d, args.examples, args.overrides) for d in ("float32", "bfloat16")
    }
    fp32, bf16 = runs["float32"], runs["bfloat16"]
    write_result(
        f"bf16_smollm2_{args.stage}",
        {
            "host": host_info(),
            "stage": args.stage,
            "examples": args.examples,
            "overrides": args.overrides,
            "runs": runs,
            "step_time_ratio_bf16_over_fp32": ratio(bf16["median_step_s"], fp32["median_step_s"]),
            "held_out_delta_bf16_minus_fp32": round(
                bf16[HELD_OUT[args.stage]] - fp32[HELD_OUT[args.stage]], 4
            ),
        },
    )


if __name__ == "__main__":
    main()
