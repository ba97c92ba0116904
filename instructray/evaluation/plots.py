"""The report's figures, drawn with matplotlib's object API on the Agg canvas.

No pyplot: pyplot keeps global figure state and picks a GUI backend from the environment, and
this runs inside training drivers and Ray workers. Each function returns False (and writes
nothing) when there is nothing to plot, so the report can leave the figure out.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_GOLD_PREFIX = "monitor_gold_"
_GOLD_WIN_PREFIX = "monitor_gold_win_rate_"


def number(value: Any) -> float | None:
    """`value` as a finite float, or None (metrics rows hold None for NaN, and strings)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def new_figure(width: float, height: float) -> Figure:
    """A figure on the Agg canvas (matplotlib is imported here: `import` stays light)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: Path) -> None:
    """Write `fig` as PNG to a temporary file beside `path`, then rename it into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=100, bbox_inches="tight")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a report is meant to be read by others
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _grid(n: int, width: float = 4.2, height: float = 3.4) -> tuple[Figure, list[Any]]:
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = new_figure(width * cols, height * rows)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n)]
    return fig, axes


def monitor_judges(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Gold judge names that appear as monitor_gold_<name> keys (win-rate keys excluded)."""
    names: dict[str, None] = {}
    for row in rows:
        for key in row:
            if key.startswith(_GOLD_PREFIX) and not key.startswith(_GOLD_WIN_PREFIX):
                names[key.removeprefix(_GOLD_PREFIX)] = None
    return list(names)


def plot_scores_vs_kl(
    eval_result: dict[str, Any] | None, rows: Sequence[dict[str, Any]], path: Path
) -> bool:
    """One panel per judge (proxy first, each on its own y axis): mean score vs KL per sequence,
    a labelled point per checkpoint, and the PPO monitor's trajectory as a line."""
    proxy = eval_result.get("proxy") if eval_result else None
    gold = list(eval_result.get("gold") or []) if eval_result else monitor_judges(rows)
    checkpoints = (eval_result or {}).get("checkpoints") or {}
    baseline = (eval_result or {}).get("baseline")
    monitor = [r for r in rows if number(r.get("monitor_kl")) is not None]
    if proxy is None and monitor and any("monitor_proxy" in r for r in monitor):
        proxy = "proxy"
    judges = ([proxy] if proxy else []) + gold
    if not judges or not (checkpoints or monitor):
        return False
    fig, axes = _grid(len(judges))
    for ax, judge in zip(axes, judges, strict=True):
        kind = "proxy reward model" if judge == proxy else "gold judge"
        for name, entry in checkpoints.items():
            kl = number(entry.get("kl_per_sequence"))
            kl = 0.0 if kl is None and name == baseline else kl
            score = number((entry.get("scores") or {}).get(judge))
            if kl is None or score is None:
                continue
            ax.scatter([kl], [score], s=40, zorder=3)
            ax.annotate(name, (kl, score), textcoords="offset points", xytext=(5, 5))
        key = "monitor_proxy" if judge == proxy else f"{_GOLD_PREFIX}{judge}"
        points = [(number(r["monitor_kl"]), number(r.get(key))) for r in monitor]
        points = [(x, y) for x, y in points if y is not None]
        if points:
            xs, ys = zip(*points, strict=True)
            steps = [number(r.get("step")) for r in monitor]
            label = "PPO monitor" + (
                f", steps {min(steps):g}–{max(steps):g}" if None not in steps else ""
            )
            ax.plot(xs, ys, "-o", ms=3, alpha=0.6, color="gray", label=label)
            ax.legend(loc="best", fontsize=8)
        ax.margins(x=0.15, y=0.15)
        ax.set_title(f"{judge} ({kind})")
        ax.set_xlabel("KL(policy ‖ SFT) per sequence, nats")
        ax.set_ylabel(f"mean {judge} score")
        ax.grid(alpha=0.3)
    fig.suptitle("Judge scores vs KL from the reference")
    save_figure(fig, path)
    return True


def plot_win_rates(eval_result: dict[str, Any] | None, path: Path) -> bool:
    """Win-rate vs the baseline per checkpoint and judge, with CI error bars and a 0.5 line."""
    if not eval_result:
        return False
    proxy = eval_result.get("proxy")
    judges = ([proxy] if proxy else []) + list(eval_result.get("gold") or [])
    entries = {
        name: entry["win_rate"]
        for name, entry in (eval_result.get("checkpoints") or {}).items()
        if entry.get("win_rate")
    }
    if not entries or not judges:
        return False
    fig = new_figure(max(5.0, 1.6 * len(entries) * max(1, len(judges)) ** 0.5 + 2), 4.0)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(judges)
    for j, judge in enumerate(judges):
        xs, ys, lows, highs = [], [], [], []
        for i, wins in enumerate(entries.values()):
            interval = wins.get(judge)
            if interval is None:
                continue
            xs.append(i - 0.4 + width * (j + 0.5))
            ys.append(interval["estimate"])
            lows.append(interval["estimate"] - interval["low"])
            highs.append(interval["high"] - interval["estimate"])
        label = f"{judge} (proxy)" if judge == proxy else judge
        ax.errorbar(xs, ys, yerr=[lows, highs], fmt="o", capsize=4, label=label)
    ax.axhline(0.5, color="black", lw=1, ls="--", label="no preference (0.5)")
    ax.set_xticks(range(len(entries)), list(entries))
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel(f"win-rate vs {eval_result.get('baseline', 'baseline')}")
    ax.set_title("Win-rate vs the baseline (bootstrap CI)")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    save_figure(fig, path)
    return True


def plot_losses(rows: Sequence[dict[str, Any]], path: Path) -> bool:
    """Training losses vs step, one panel per stage ("loss" and every "*_loss" field)."""
    series: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for row in rows:
        step = number(row.get("step"))
        if step is None or "stage" not in row:
            continue
        for key, value in row.items():
            y = number(value)
            if y is not None and (key == "loss" or key.endswith("_loss")):
                stage = series.setdefault(str(row["stage"]), {})
                stage.setdefault(key, []).append((step, y))
    if not series:
        return False
    fig, axes = _grid(len(series))
    for ax, (stage, curves) in zip(axes, series.items(), strict=True):
        for key, points in curves.items():
            xs, ys = zip(*sorted(points), strict=True)
            ax.plot(xs, ys, "-", marker="o" if len(xs) < 30 else None, ms=3, label=key)
        ax.set_title(stage)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend(loc="best", fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("Training losses")
    save_figure(fig, path)
    return True


def plot_monitor(rows: Sequence[dict[str, Any]], path: Path) -> bool:
    """The PPO monitor's win-rates vs the SFT samples over steps; red lines mark warnings."""
    monitor = [r for r in rows if number(r.get("monitor_proxy_win_rate")) is not None]
    if not monitor:
        return False
    fig = new_figure(7.0, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    keys = [("monitor_proxy_win_rate", "proxy")] + [
        (f"{_GOLD_WIN_PREFIX}{name}", name) for name in monitor_judges(monitor)
    ]
    for key, label in keys:
        points = [(number(r.get("step")), number(r.get(key))) for r in monitor]
        points = [(x, y) for x, y in points if x is not None and y is not None]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, "-o", ms=3, label=label)
    for row in monitor:
        if number(row.get("hacking_warning")) == 1.0 and number(row.get("step")) is not None:
            ax.axvline(float(row["step"]), color="red", alpha=0.3, lw=2)
    ax.axhline(0.5, color="black", lw=1, ls="--")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("PPO step")
    ax.set_ylabel("win-rate vs SFT samples")
    ax.set_title("Reward-hacking monitor (red: warning raised)")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(fig, path)
    return True
