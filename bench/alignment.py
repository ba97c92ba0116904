"""Does the SmolLM2 preset really align, and do the paper's findings appear in miniature?

    python bench/alignment.py [--base RUN_DIR] [--parts base overopt ptx dpo hh] [--set K=V ...]

Each part is an ``instructray run`` of configs/smollm2.yaml (``--set`` overrides go to every
part) in bench/results/work/alignment/<part>/; the parts after ``base`` reuse its SFT and RM
checkpoints and its labeled comparisons. ``--base runs/demo`` reuses the run of ``make demo``.

- base: SFT → RM → PPO → eval. Win-rates of PPO vs SFT on held-out prompts under the labeler's
  noiseless judge, the judge fitted on other movies' reviews and VADER (95% bootstrap CIs), KL,
  the samples' log-probability under the reference (fluency), the top gained words.
- overopt: PPO with β = 0 for longer, the monitor every few iterations: proxy (RM) and gold
  (labeler) against KL, next to the base run's (default β) monitor rows (Gao et al. 2022).
- ptx: PPO-ptx (``--ptx-coef``): which share of plain PPO's held-out LM-loss increase it recovers,
  and what it keeps of the win-rates; each coefficient run is kept in a sweep.
- dpo: DPO on the base run's comparisons, evaluated the same way (win-rates at its KL).
- hh: a reward model on the SmolLM2 backbone trained on the real HH-RLHF pairs
  (../shared/data/hh_rlhf_harmless_test.jsonl.gz, skipped when absent): held-out accuracy.

Writes bench/results/alignment_smollm2.json and alignment_overoptimisation.png.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness import REPO, RESULTS, host_info, work_dir, write_result

PRESET = REPO / "configs" / "smollm2.yaml"
HH_FILE = REPO.parent / "shared" / "data" / "hh_rlhf_harmless_test.jsonl.gz"
PARTS = ("base", "overopt", "ptx", "dpo", "hh")
RESULT_KEYS = {
    "base": "base",
    "overopt": "overoptimisation",
    "ptx": "ptx",
    "dpo": "dpo",
    "hh": "hh",
}
JUDGES = ("labeler", "judge_heldout", "vader", "rm")


def instructray(out: Path, overrides: list[str]) -> dict[str, Any]:
    """Run one job (a fresh run folder); its summary.json, and the wall time."""
    if out.exists():
        subprocess.run(["rm", "-rf", str(out)], check=True)
    cli = Path(sys.executable).parent / "instructray"
    cmd = [str(cli), "run", str(PRESET), "--out", str(out)]
    for item in overrides:
        cmd += ["--set", item]
    print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    with open(out.parent / f"{out.name}.log", "w") as log:
        code = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode
    summary = json.loads((out / "summary.json").read_text())
    if code != 0 or summary["status"] != "succeeded":
        raise SystemExit(f"{out.name} failed (exit {code}): {summary.get('error')}")
    summary["wall_s"] = round(time.perf_counter() - start, 1)
    return summary


def policy_eval(run_dir: Path, name: str) -> dict[str, Any]:
    """The figures of one evaluated policy in eval.json (vs its baseline)."""
    result = json.loads((run_dir / "eval.json").read_text())
    entry, base = result["checkpoints"][name], result["checkpoints"][result["baseline"]]
    rnd = lambda v: None if v is None else round(v, 4)  # noqa: E731
    return {
        "n_prompts": entry["n"],
        "win_rate": {
            j: {k: rnd(v) for k, v in entry["win_rate"][j].items()}
            for j in JUDGES
            if j in entry["win_rate"]
        },
        "kl_per_sequence": rnd(entry["kl_per_sequence"]),
        "kl_per_token": rnd(entry["kl_per_token"]),
        "reference_logprob_per_token": {
            "baseline": rnd(base.get("reference_logprob_per_token")),
            "policy": rnd(entry.get("reference_logprob_per_token")),
        },
        "lm_loss": {"baseline": rnd(base.get("lm_loss")), "policy": rnd(entry.get("lm_loss"))},
        "length": {"baseline": rnd(base["length"]), "policy": rnd(entry["length"])},
        "top_gained_words": entry["top_gained_words"][:5],
        "verdict": result["verdicts"][name]["message"],
        "samples": [
            {"prompt": s["prompt"], "response": s["response"]} for s in entry["samples"][:4]
        ],
    }


def monitor_curve(run_dir: Path) -> dict[str, list[float]]:
    """The PPO monitor's rows: KL from the SFT model, proxy and gold (labeler) means."""
    curve: dict[str, list[float]] = {"iteration": [], "kl": [], "proxy": [], "gold": []}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("stage") == "ppo" and "monitor_proxy" in row:
            curve["iteration"].append(row["step"])
            curve["kl"].append(round(row["monitor_kl"], 4))
            curve["proxy"].append(round(row["monitor_proxy"], 4))
            curve["gold"].append(round(row["monitor_gold_labeler"], 4))
    return curve


def peak_then_fall(curve: dict[str, list[float]], margin: float) -> bool:
    """Gold peaks before the last point and ends more than ``margin`` below its peak."""
    gold = curve["gold"]
    peak = max(range(len(gold)), key=gold.__getitem__) if gold else 0
    return bool(gold) and peak < len(gold) - 1 and gold[-1] < gold[peak] - margin


def ptx_sweep(previous: dict[str, Any], figures: dict[str, Any]) -> dict[str, Any]:
    """The PPO-ptx runs by coefficient: earlier runs kept, this one added or replaced."""
    sweep = dict(previous.get("sweep", {}))
    if "ptx_coef" in previous:  # a result file from before the sweep: one flat run
        sweep[f"{previous['ptx_coef']:g}"] = {k: v for k, v in previous.items() if k != "sweep"}
    sweep[f"{figures['ptx_coef']:g}"] = figures
    return dict(sorted(sweep.items(), key=lambda item: float(item[0])))


def accuracy_ci(accuracy: float, n: int) -> list[float]:
    """Wilson 95% interval of a held-out pairwise accuracy over ``n`` pairs."""
    from scipy.stats import binomtest

    interval = binomtest(round(accuracy * n), n).proportion_ci(method="wilson")
    return [round(float(interval.low), 4), round(float(interval.high), 4)]


def plot_overoptimisation(curves: dict[str, dict[str, list[float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    for label, curve in curves.items():
        axes[0].plot(curve["kl"], curve["proxy"], marker="o", label=label)
        axes[1].plot(curve["kl"], curve["gold"], marker="o", label=label)
    axes[0].set_title("proxy: reward model")
    axes[1].set_title("gold: the labeler's noiseless judge")
    for ax in axes:
        ax.set_xlabel("KL(policy ‖ SFT) per sequence, nats")
        ax.legend()
    axes[0].set_ylabel("mean score on held-out prompts")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, help="reuse this finished run as the base part")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--overopt-iterations", type=int, default=40)
    parser.add_argument("--ptx-coef", type=float, default=1.0)
    parser.add_argument("--hh-pairs", type=int, default=1200, help="HH-RLHF pairs (of 2,312)")
    args = parser.parse_args()
    work = work_dir("alignment")
    result_path = RESULTS / "alignment_smollm2.json"
    out: dict[str, Any] = {}
    if result_path.exists():  # parts not rerun keep their figures
        out = json.loads(result_path.read_text())
    out["host"] = host_info()
    out.pop("command", None)
    command = " ".join(["python bench/alignment.py", *sys.argv[1:]])

    def record(part: str, figures: dict[str, Any]) -> None:
        """Store one part's figures with the command that produced them."""
        out[RESULT_KEYS[part]] = {"command": command, **figures}
        out["not_run"] = [p for p in PARTS if RESULT_KEYS[p] not in out]
        write_result("alignment_smollm2", out)

    sets = list(args.overrides)

    base = args.base or work / "base"
    if "base" in args.parts and args.base is None:
        summary = instructray(base, sets)
    else:
        summary = json.loads((base / "summary.json").read_text())
    stages = summary["stages"]
    record(
        "base",
        {
            "run_dir": str(base),
            "stage_seconds": {k: v["wall_time_s"] for k, v in stages.items()},
            "rm_heldout_accuracy": stages["rm"]["eval"]["heldout_accuracy"],
            "ppo": policy_eval(base, "ppo"),
        },
    )
    trained = [
        f"model.sft_checkpoint={base / 'checkpoints' / 'sft'}",
        f"model.reward_checkpoint={base / 'checkpoints' / 'rm'}",
    ]

    if "overopt" in args.parts:
        every = max(1, args.overopt_iterations // 10)
        run = work / "overopt_beta0"
        instructray(
            run,
            [
                *sets,
                *trained,
                "stages=[ppo]",
                "ppo.kl.init_coef=0",
                f"ppo.iterations={args.overopt_iterations}",
                f"ppo.monitor.every={every}",
            ],
        )
        curves = {"β = 0": monitor_curve(run), "default β": monitor_curve(base)}
        plot = RESULTS / "alignment_overoptimisation.png"
        plot_overoptimisation(curves, plot)
        record(
            "overopt",
            {
                "base_run_dir": str(base),
                "curves": curves,
                "beta0_gold_peaks_then_falls": peak_then_fall(curves["β = 0"], margin=0.02),
                "default_gold_peaks_then_falls": peak_then_fall(curves["default β"], margin=0.02),
                "beta0_proxy_rises": curves["β = 0"]["proxy"][-1] > curves["β = 0"]["proxy"][0],
                "plot": str(plot.relative_to(REPO)),
            },
        )

    if "ptx" in args.parts:
        run = work / f"ptx_{args.ptx_coef:g}"
        instructray(run, [*sets, *trained, "stages=[ppo,eval]", f"ppo.ptx_coef={args.ptx_coef}"])
        plain, ptx = out["base"]["ppo"]["lm_loss"], policy_eval(run, "ppo")
        increase = plain["policy"] - plain["baseline"]
        increase_ptx = ptx["lm_loss"]["policy"] - ptx["lm_loss"]["baseline"]
        figures = {
            "command": command,
            "ptx_coef": args.ptx_coef,
            "lm_loss_increase_ppo": round(increase, 4),
            "lm_loss_increase_ptx": round(increase_ptx, 4),
            "recovered_fraction": round(1 - increase_ptx / increase, 3) if increase > 0 else None,
            "ppo_ptx": ptx,
        }
        record("ptx", {"sweep": ptx_sweep(out.get("ptx", {}), figures)})

    if "dpo" in args.parts:
        run = work / "dpo"
        comparisons = base / "data" / "comparisons.jsonl"
        instructray(
            run,
            [
                *sets,
                *trained,
                "stages=[dpo,eval]",
                f"data.preferences={comparisons}",
                "eval.checkpoints=[sft,dpo]",
            ],
        )
        record("dpo", {"dpo": policy_eval(run, "dpo"), "ppo": out["base"]["ppo"]["win_rate"]})

    if "hh" in args.parts:
        if not HH_FILE.is_file():
            record("hh", {"skipped": f"{HH_FILE} not present"})
        else:
            run = work / "hh_rm"
            summary = instructray(
                run,
                [
                    *sets,
                    "stages=[rm]",
                    "data.task=null",
                    f"data.preferences={HH_FILE}",
                    "data.preference_max_chars=600",
                    "model.max_prompt_tokens=128",
                    "model.max_seq_len=192",
                    "rm.epochs=1",
                    f"rm.max_comparisons={args.hh_pairs}",
                ],
            )
            rm = summary["stages"]["rm"]
            record(
                "hh",
                {
                    "file": HH_FILE.name,
                    "heldout_accuracy": round(rm["eval"]["heldout_accuracy"], 4),
                    "heldout_accuracy_ci95": accuracy_ci(
                        rm["eval"]["heldout_accuracy"], int(rm["eval"]["heldout_rankings"])
                    ),
                    "heldout_accuracy_before": round(rm["eval"]["heldout_accuracy_before"], 4),
                    "train_pairs": rm["eval"]["train_rankings"],
                    "heldout_pairs": rm["eval"]["heldout_rankings"],
                    "wall_s": summary["wall_s"],
                },
            )


if __name__ == "__main__":
    main()
