"""RUN_DIR/report/index.html: a static, self-contained page that says whether alignment worked.

It reads eval.json's content (checkpoints summarized vs the baseline, and their verdicts) and
metrics.jsonl's rows (training losses, the PPO reward-hacking monitor), draws PNGs with
matplotlib and writes plain HTML: no JavaScript, no network, viewable from a file:// URL or an
artifact store. Every text that came from a model or a user (samples, prompts, judge names,
messages) is HTML-escaped. Files are written to a temporary name and renamed into place, so a
reader never sees half a page.

Monitor warnings come from two places: the metrics rows with hacking_warning == 1 (the steps
and their monitor_* numbers; a row's own "warnings" field, a list of messages or of dicts with a
"message", is shown too) and the deduplicated list the run log keeps in summary.json's
"warnings" ({stage, step, last_step, kind, key, message}), unless `warnings` is passed.
"""

from __future__ import annotations

import html
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from instructray.evaluation import plots

_SAMPLES_PER_CHECKPOINT = 3
_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
.ok { color: #1a7f37; } .bad { color: #b3261e; } .meh { color: #8a6d00; }
pre { white-space: pre-wrap; margin: 0; font-family: inherit; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any, digits: int = 3) -> str:
    x = plots.number(value)
    return "–" if x is None else f"{x:.{digits}g}"


def _interval(interval: dict[str, Any] | None) -> str:
    if not interval:
        return "–"
    return f"{interval['estimate']:.2f} [{interval['low']:.2f}, {interval['high']:.2f}]"


def _write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a report is meant to be read by others
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _verdicts(eval_result: dict[str, Any]) -> str:
    items = []
    for name, verdict in (eval_result.get("verdicts") or {}).items():
        if verdict.get("possible_reward_hacking"):
            badge = '<b class="bad">possible reward hacking</b>'
        elif verdict.get("aligned"):
            badge = '<b class="ok">aligned</b>'
        else:
            badge = '<b class="meh">not shown to be aligned</b>'
        items.append(f"<li>{_e(name)}: {badge}. {_e(verdict.get('message', ''))}</li>")
    if not items:
        return "<p>No verdicts (no checkpoint was compared with a baseline).</p>"
    return "<ul>" + "".join(items) + "</ul>"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _checkpoint_table(eval_result: dict[str, Any]) -> str:
    proxy = eval_result.get("proxy")
    judges = ([proxy] if proxy else []) + list(eval_result.get("gold") or [])
    checkpoints = eval_result.get("checkpoints") or {}
    for entry in checkpoints.values():
        judges += [j for j in entry.get("scores") or {} if j not in judges]
    baseline = eval_result.get("baseline", "baseline")
    header = ["checkpoint", "n"]
    header += [f"{j} mean" for j in judges] + [f"{j} win-rate vs {baseline}" for j in judges]
    header += ["KL/seq", "KL/token", "LM loss", "ref. log-prob/token", "length", "EOS fraction"]
    header += ["distinct-1", "distinct-2", "repetition"]
    rows = []
    for name, entry in checkpoints.items():
        scores, wins = entry.get("scores") or {}, entry.get("win_rate") or {}
        row = [_e(name), _fmt(entry.get("n"), 6)]
        row += [_fmt(scores.get(j), 4) for j in judges]
        row += [_e(_interval(wins.get(j))) for j in judges]
        row += [
            _fmt(entry.get(k), 4)
            for k in ("kl_per_sequence", "kl_per_token", "lm_loss", "reference_logprob_per_token")
        ]
        row += [_fmt(entry.get(k), 4) for k in ("length", "eos_fraction")]
        row += [_fmt(entry.get(k), 3) for k in ("distinct_1", "distinct_2", "repetition")]
        rows.append(row)
    ci = 100 * float(next(iter(checkpoints.values()), {}).get("confidence", 0.95))
    note = f"<p>Win-rates: estimate [{ci:g}% bootstrap CI] over the same prompts; ties count ½.</p>"
    return _table(header, rows) + note


def _gained_words(eval_result: dict[str, Any]) -> str:
    parts = []
    baseline = eval_result.get("baseline", "baseline")
    for name, entry in (eval_result.get("checkpoints") or {}).items():
        gained = entry.get("top_gained_words") or []
        if not gained:
            continue
        rows = [
            [
                _e(g["word"]),
                _fmt(g["per_1000"], 4),
                _fmt(g["baseline_per_1000"], 4),
                _fmt(g["ratio"], 3),
                _fmt(g["count"], 8),
            ]
            for g in gained
        ]
        header = ["word", "per 1,000 words", f"{baseline} per 1,000", "ratio (add-one)", "count"]
        parts.append(f"<h3>{_e(name)}</h3>" + _table(header, rows))
    return "".join(parts) or "<p>No word gained frequency vs the baseline.</p>"


def _samples(eval_result: dict[str, Any]) -> str:
    parts = []
    for name, entry in (eval_result.get("checkpoints") or {}).items():
        rows = []
        for sample in (entry.get("samples") or [])[:_SAMPLES_PER_CHECKPOINT]:
            scores = ", ".join(
                f"{_e(j)}={_fmt(v, 3)}" for j, v in (sample.get("scores") or {}).items()
            )
            ended = "EOS" if sample.get("ended") else "cut off"
            rows.append(
                [
                    f"<pre>{_e(sample.get('prompt', ''))}</pre>",
                    f"<pre>{_e(sample.get('response', ''))}</pre>",
                    f"{_fmt(sample.get('length'), 6)} tokens, {ended}<br>{scores}",
                ]
            )
        if rows:
            parts.append(f"<h3>{_e(name)}</h3>" + _table(["prompt", "response", "scores"], rows))
    return "".join(parts) or "<p>No samples.</p>"


def _warning_messages(row: dict[str, Any]) -> list[str]:
    messages = []
    for item in row.get("warnings") or []:
        text = item.get("message") if isinstance(item, dict) else item
        if text:
            messages.append(str(text))
    return messages


def _logged_warnings(run_dir: Path) -> list[dict[str, Any]]:
    """summary.json's deduplicated warnings; [] when the file is missing or unreadable."""
    try:
        found = json.loads((run_dir / "summary.json").read_text(encoding="utf-8")).get("warnings")
    except (OSError, ValueError, AttributeError):
        return []
    return [w for w in found or [] if isinstance(w, dict) and w.get("message")]


def _logged_table(logged: Sequence[dict[str, Any]]) -> str:
    rows = [
        [
            _e(w.get("stage", "")),
            _e(w.get("kind", "")),
            _e(w.get("step", "")),
            _e(w.get("last_step", w.get("step", ""))),
            _e(w["message"]),
        ]
        for w in logged
    ]
    return _table(["stage", "kind", "first step", "last step", "message"], rows)


def _warnings(rows: Sequence[dict[str, Any]], logged: Sequence[dict[str, Any]]) -> str:
    flagged = [r for r in rows if plots.number(r.get("hacking_warning")) == 1.0]
    table = _logged_table(logged) if logged else ""
    if not flagged:
        monitored = any("hacking_warning" in r for r in rows)
        note = "No warnings." if monitored else "The monitor did not run."
        return table or f"<p>{note}</p>"
    items = []
    for row in flagged:
        numbers = ", ".join(
            f"{_e(k.removeprefix('monitor_'))}={_fmt(v, 3)}"
            for k, v in row.items()
            if k.startswith("monitor_") and plots.number(v) is not None
        )
        messages = "".join(f"<li>{_e(m)}</li>" for m in _warning_messages(row))
        items.append(
            f"<li>{_e(row.get('stage', ''))} step {_e(row.get('step', '?'))}: {numbers}"
            + (f"<ul>{messages}</ul>" if messages else "")
            + "</li>"
        )
    return table + "<p>Observations that raised a warning:</p><ul>" + "".join(items) + "</ul>"


def _figure(out: Path, name: str, alt: str, draw: Callable[[Path], bool]) -> str:
    return f'<img src="{_e(name)}" alt="{_e(alt)}">' if draw(out / name) else ""


def write_report(
    run_dir: Path,
    eval_result: dict[str, Any] | None,
    metrics_rows: list[dict[str, Any]],
    warnings: list[dict[str, Any]] | None = None,
) -> Path:
    """Write run_dir/report/index.html and its PNGs; return the index path.

    eval_result may be None (training plots only) and metrics_rows may be empty; `warnings`
    defaults to summary.json's logged warnings.
    """
    out = Path(run_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    rows = [r for r in metrics_rows if isinstance(r, dict)]
    logged = _logged_warnings(Path(run_dir)) if warnings is None else warnings
    title = f"instructray report: {Path(run_dir).name}"
    sections = [f"<h1>{_e(title)}</h1>"]
    if eval_result:
        gold = ", ".join(eval_result.get("gold") or []) or "none"
        sections.append(
            f"<p>Baseline: <b>{_e(eval_result.get('baseline', '?'))}</b>; proxy reward model: "
            f"<b>{_e(eval_result.get('proxy') or 'none')}</b>; independent (gold) judges: "
            f"<b>{_e(gold)}</b>; {_fmt(eval_result.get('num_prompts'), 8)} held-out prompts.</p>"
        )
        sections += ["<h2>Verdict</h2>", _verdicts(eval_result)]
    kl_fig = _figure(
        out,
        "scores_vs_kl.png",
        "judge scores vs KL",
        lambda p: plots.plot_scores_vs_kl(eval_result, rows, p),
    )
    win_fig = _figure(
        out,
        "win_rates.png",
        "win-rates vs baseline",
        lambda p: plots.plot_win_rates(eval_result, p),
    )
    if eval_result:
        sections += ["<h2>Win-rates and scores</h2>", win_fig, kl_fig]
        sections += ["<h2>Checkpoints</h2>", _checkpoint_table(eval_result)]
        sections += ["<h2>Words that gained frequency</h2>", _gained_words(eval_result)]
        sections += ["<h2>Samples</h2>", _samples(eval_result)]
    elif kl_fig:
        sections += ["<h2>Scores vs KL</h2>", kl_fig]
    monitor_fig = _figure(out, "monitor.png", "monitor", lambda p: plots.plot_monitor(rows, p))
    sections += ["<h2>Reward-hacking monitor</h2>", monitor_fig, _warnings(rows, logged)]
    loss_fig = _figure(out, "losses.png", "training losses", lambda p: plots.plot_losses(rows, p))
    sections += ["<h2>Training</h2>", loss_fig or "<p>No training metrics.</p>"]
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{_CSS}</style></head><body>\n"
        + "\n".join(s for s in sections if s)
        + "\n</body></html>\n"
    )
    index = out / "index.html"
    _write_text(index, page)
    return index
