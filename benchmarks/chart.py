"""The bench's PNG: latency distributions per offered rate, and spend against budget over the savings day.

One figure, two panels, drawn on its own Agg canvas: no display, and no pyplot, so rendering
changes no global matplotlib state of whoever imports this.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _rate(key: str) -> float:
    """Order "100/s" before "1000/s"; keys that are not a rate come last, by name."""
    head = key.split("/", 1)[0]
    try:
        return float(head)
    except ValueError:
        return float("inf")


def _latencies(ax: Axes, latencies: dict[str, list[float]]) -> None:
    """One ECDF per offered rate, log-scaled milliseconds (0 drawn as 0.01): the whole distribution, tails included."""
    series = {k: sorted(max(x, 0.01) for x in v) for k, v in sorted(latencies.items(), key=lambda kv: (_rate(kv[0]), kv[0])) if v}
    for key, values in series.items():
        n = len(values)
        p50, p95 = values[n // 2], values[min(n - 1, int(n * 0.95))]
        ax.step(values, [(i + 1) / n for i in range(n)], where="post",
                label=f"{key}: p50 {p50:.1f} / p95 {p95:.1f} ms (n={n})")
    if series:
        ax.set_xscale("log")
        ax.legend(loc="lower right", fontsize="small")
    else:
        ax.text(0.5, 0.5, "no latency data", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("share of tasks at or below")
    ax.set_title("latency per offered rate (ECDF)")
    ax.grid(True, alpha=0.3)


def _spend(ax: Axes, savings: dict[str, Any]) -> None:
    """Committed global spend and the cap in effect, per task decided; downgrades as ticks along the spend."""
    points: Sequence[dict[str, Any]] = savings.get("timeline") or []
    if not points:
        ax.text(0.5, 0.5, "no savings timeline", ha="center", va="center", transform=ax.transAxes)
    else:
        i = [p["i"] for p in points]
        ax.plot(i, [p["spend"] for p in points], label="spend (committed)", color="tab:blue")
        ax.step(i, [p["budget"] for p in points], where="post", label="budget (global cap)", color="tab:red")
        down = [p for p in points if p["downgraded"]]
        ax.scatter([p["i"] for p in down], [p["spend"] for p in down], marker="|", s=40, color="tab:orange",
                   label=f"downgrades ({savings.get('downgrades', len(down))})", zorder=3)
        ax.set_ylim(bottom=0)
        ax.legend(loc="upper left", fontsize="small")
    title = "spend against budget over the savings run"
    if "savings_pct" in savings:
        title += f": {savings['savings_pct']:.1f}% saved vs premium, {savings.get('sla_violations', 0)} SLA violations"
    ax.set_title(title)
    ax.set_xlabel("task (arrival order)")
    ax.set_ylabel(f"{savings.get('currency', 'USD')}")
    ax.grid(True, alpha=0.3)


def render(path: Path, latencies: dict[str, list[float]], savings: dict[str, Any]) -> Path:
    """Write the two-panel chart to ``path`` (PNG) and return it."""
    fig = Figure(figsize=(10, 9), layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1)
    _latencies(top, latencies)
    _spend(bottom, savings)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=110)
    return path
