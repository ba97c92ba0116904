"""The static HTML report: PNGs are real images, verdicts are shown, samples are escaped."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from instructray.evaluation.report import write_report
from instructray.evaluation.samples import SampleSet
from instructray.evaluation.summary import summarize, verdict

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
N = 32


def _eval_result() -> dict:
    rng = np.random.default_rng(0)
    prompts = [f"prompt {i}" for i in range(N)]
    effect = rng.normal(size=N)

    def samples(shift: float, kl: float, first: str) -> SampleSet:
        responses = [first] + [f"a fine film number {i} with good acting" for i in range(1, N)]
        scores = {
            "rm": effect + 2 * shift + rng.normal(0, 0.3, N),
            "labeler": effect + shift + rng.normal(0, 0.3, N),
            "vader": effect + rng.normal(0, 0.3, N),
        }
        return SampleSet(
            prompts, responses, np.full(N, 9), np.ones(N, bool), scores, np.full(N, kl)
        )

    sft = samples(0.0, 0.0, "plain opening")
    checkpoints = {
        "sft": summarize(sft, None, "rm", n_resamples=300),
        "ppo": summarize(
            samples(1.0, 6.0, "<script>alert('x')</script> & more"), sft, "rm", n_resamples=300
        ),
        "dpo": summarize(samples(0.5, 3.0, "dpo says hi"), sft, "rm", n_resamples=300),
    }
    for i, entry in enumerate(checkpoints.values()):
        entry.update(path=f"checkpoints/{i}", lm_loss=3.0 + i)
    gold = ["labeler", "vader"]
    verdicts = {
        name: verdict(checkpoints[name], gold, "rm", name=name, baseline="sft")
        for name in ("ppo", "dpo")
    }
    return {
        "baseline": "sft",
        "proxy": "rm",
        "gold": gold,
        "num_prompts": N,
        "checkpoints": checkpoints,
        "verdicts": verdicts,
    }


def _metrics_rows() -> list[dict]:
    rows: list[dict] = [{"stage": "sft", "step": s, "loss": 3.0 / (s + 1)} for s in range(1, 11)]
    rows += [
        {"stage": "rm", "step": s, "loss": 0.7 - 0.02 * s, "accuracy": 0.6} for s in range(1, 6)
    ]
    for s in range(1, 21):
        row = {
            "stage": "ppo",
            "step": s,
            "loss": 0.1,
            "value_loss": 1 / s,
            "reward_mean": 0.1 * s,
            "kl": 0.2 * s,
        }
        if s % 5 == 0:
            row.update(
                monitor_proxy=0.2 * s,
                monitor_gold_labeler=0.5 - 0.01 * s,
                monitor_gold_vader=0.1,
                monitor_kl=0.3 * s,
                monitor_proxy_win_rate=0.5 + 0.02 * s,
                monitor_gold_win_rate_labeler=0.5 - 0.01 * s,
                monitor_gold_win_rate_vader=0.5,
                monitor_top_word_ratio=1.0,
                hacking_warning=1.0 if s == 20 else 0.0,
            )
        rows.append(row)
    rows[-1]["warnings"] = ['reward hacking? "and" is 5.1× as frequent as in the SFT samples']
    rows.append({"stage": "ppo", "step": 21, "loss": None})  # NaN logged as null
    return rows


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC), path
    assert len(data) > 5_000, (path, len(data))


def test_full_report(tmp_path: Path) -> None:
    result = _eval_result()
    index = write_report(tmp_path, result, _metrics_rows())
    assert index == tmp_path / "report" / "index.html"
    page = index.read_text(encoding="utf-8")
    for name in ("scores_vs_kl.png", "win_rates.png", "losses.png", "monitor.png"):
        _assert_png(tmp_path / "report" / name)
        assert f'<img src="{name}"' in page
    for v in result["verdicts"].values():
        assert html.escape(v["message"]) in page
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in page
    assert "5.1× as frequent" in page  # the monitor warning from the metrics rows
    assert "win-rate vs sft" in page and "LM loss" in page and "distinct-2" in page
    assert not [
        p for p in (tmp_path / "report").iterdir() if p.name.startswith(".")
    ]  # no temp files


def test_report_without_eval_and_without_metrics(tmp_path: Path) -> None:
    index = write_report(tmp_path, None, [])
    page = index.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<img" not in page and "No training metrics" in page
    assert sorted(p.name for p in index.parent.iterdir()) == ["index.html"]


def test_report_training_plots_only(tmp_path: Path) -> None:
    index = write_report(tmp_path, None, _metrics_rows())
    page = index.read_text(encoding="utf-8")
    _assert_png(index.parent / "losses.png")
    _assert_png(index.parent / "scores_vs_kl.png")  # the monitor trajectory alone
    assert '<img src="losses.png"' in page and "win_rates.png" not in page
    # rewriting over an existing report replaces it
    assert write_report(tmp_path, _eval_result(), []) == index
    assert "Verdict" in index.read_text(encoding="utf-8")


def test_report_lists_the_logged_warnings_of_summary_json(tmp_path: Path) -> None:
    logged = {
        "stage": "ppo",
        "step": 10,
        "last_step": 20,
        "kind": "token_explosion",
        "key": "and",
        "message": 'reward hacking? "and" is 5.1× as frequent <b>',
    }
    (tmp_path / "summary.json").write_text(json.dumps({"warnings": [logged, "junk"]}))
    page = write_report(tmp_path, None, []).read_text(encoding="utf-8")
    assert "&quot;and&quot; is 5.1× as frequent &lt;b&gt;" in page and "token_explosion" in page
    assert "<td>20</td>" in page  # last step
    (tmp_path / "summary.json").write_text("{not json")
    page = write_report(tmp_path, None, []).read_text(encoding="utf-8")
    assert "The monitor did not run" in page
    page = write_report(tmp_path, None, [], warnings=[logged]).read_text(encoding="utf-8")
    assert "token_explosion" in page
