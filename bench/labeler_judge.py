"""How good a "human" is each simulated labeler of the Rotten Tomatoes task?

    python bench/labeler_judge.py [--texts 300]

Fits the judges on the labeler's slice of reviews and measures, on the held-out judge slice:
fresh/rotten accuracy; the probability that a fresh review is preferred over a rotten one (what
a labeler ranking real reviews would do); and, for each known attack of
`instructray.evaluation.attacks` applied to ``--texts`` held-out reviews, how often the edited
text wins (a judge a policy can game wins > 0.5). Judges: the bag-of-words labeler (the tiny
preset's), the meaning labeler (sentence-embedding sentiment, fluency under SmolLM2, no
repetition), its sentiment part alone, and VADER. Also their scoring speed on this host.
Writes bench/results/labeler_judge.json.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
from harness import host_info, write_result

from instructray.data import RottenTomatoesTask, VaderJudge
from instructray.evaluation import attack_win_rates
from instructray.models import default_cache_dir, resolve_base_model


def measure(
    name: str,
    score: Any,
    attacked: list[str],
    pairs: tuple[list[str], list[str]],
    labelled: tuple[list[str], np.ndarray] | None,
) -> dict[str, Any]:
    """Speed and preference of one judge; fresh/rotten accuracy when its 0 is a boundary."""
    start = time.perf_counter()
    f, r = np.asarray(score(pairs[0])), np.asarray(score(pairs[1]))
    out: dict[str, Any] = {
        "texts_per_s": round((len(f) + len(r)) / (time.perf_counter() - start), 1)
    }
    if labelled is not None:
        texts, labels = labelled
        out["accuracy"] = round(float(np.mean((np.asarray(score(texts)) > 0) == (labels == 1))), 4)
    out["p_fresh_over_rotten"] = round(float(np.mean(f[:, None] > r[None, :])), 4)
    wins = attack_win_rates(score, attacked)
    out["attack_win_rates"] = {k: round(v, 3) for k, v in wins.items()}
    print(name, out, flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=300, help="held-out reviews per attack")
    args = parser.parse_args()
    task = RottenTomatoesTask.build(seed=0)
    held = list(task.judge_eval)
    labels = np.array([r.label == "fresh" for r in held], dtype=int)
    texts = [r.text for r in held]
    fresh = [r.text for r in held if r.label == "fresh"][:150]
    rotten = [r.text for r in held if r.label == "rotten"][:150]
    attacked = texts[: args.texts]
    started = time.perf_counter()
    meaning = task.meaning_judge(resolve_base_model("smollm2", default_cache_dir()))
    fit_seconds = time.perf_counter() - started
    judges = {
        "bag_of_words": task.labeler_judge().score,
        "meaning": meaning.score,
        "meaning_sentiment_only": meaning.sentiment.score,
        "vader": VaderJudge().score,
    }
    # The meaning judge's utility has no fresh/rotten boundary: its accuracy is its sentiment's.
    results = {
        name: measure(
            name, score, attacked, (fresh, rotten), None if name == "meaning" else (texts, labels)
        )
        for name, score in judges.items()
    }
    write_result(
        "labeler_judge",
        {
            "host": host_info(),
            "heldout_reviews": len(held),
            "attacked_reviews": len(attacked),
            "meaning_fit_seconds": round(fit_seconds, 1),
            "meaning_weights": {
                "sentiment_scale": meaning.SENTIMENT_SCALE,
                "fluency_weight": meaning.FLUENCY_WEIGHT,
                "repetition_weight": meaning.REPETITION_WEIGHT,
                "reference_fluency": round(meaning.reference_fluency, 4),
            },
            "judges": results,
        },
    )


if __name__ == "__main__":
    main()
