"""Evaluation: is the aligned policy *preferred* over the SFT model, and is it reward hacking?

Pure numpy/matplotlib (no Ray, no torch models): the orchestration samples each checkpoint on
held-out prompts, scores the samples with the proxy reward model and with gold judges no
training stage saw, and hands SampleSets here. This package computes paired win-rates with
bootstrap CIs (stats), text diversity and exploding words (text_stats), each checkpoint's
eval.json entry and verdict (summary), a reward-hacking monitor for PPO (monitor), user judges
from a function or an HTTP service (judges), and the static HTML report (report).
"""

from instructray.evaluation.attacks import ATTACKS, attack_win_rates
from instructray.evaluation.judges import (
    EvalJudge,
    FunctionJudge,
    HTTPJudge,
    JudgeError,
    TextJudge,
    check_scores,
    load_judge,
)
from instructray.evaluation.monitor import HackingWarning, MonitorResult, RewardHackingMonitor
from instructray.evaluation.report import write_report
from instructray.evaluation.samples import SampleSet
from instructray.evaluation.stats import (
    Interval,
    bootstrap_mean_ci,
    paired_mean_diff,
    win_outcomes,
    win_rate,
)
from instructray.evaluation.summary import check_same_prompts, summarize, verdict
from instructray.evaluation.text_stats import (
    distinct_n,
    per_thousand,
    repeated_ngram_fraction,
    repetition,
    top_gained_words,
    words,
)

__all__ = [
    "ATTACKS",
    "EvalJudge",
    "FunctionJudge",
    "HTTPJudge",
    "HackingWarning",
    "Interval",
    "JudgeError",
    "MonitorResult",
    "RewardHackingMonitor",
    "SampleSet",
    "TextJudge",
    "attack_win_rates",
    "bootstrap_mean_ci",
    "check_same_prompts",
    "check_scores",
    "distinct_n",
    "load_judge",
    "paired_mean_diff",
    "per_thousand",
    "repeated_ngram_fraction",
    "repetition",
    "summarize",
    "top_gained_words",
    "verdict",
    "win_outcomes",
    "win_rate",
    "words",
    "write_report",
]
