"""What a run hands back, and how it is shown: a table, a JSON file, a plot.

Metric names carry their unit (``_per_s``, ``_ms``, ``_s``). With several
repeats the table shows each metric's median; the JSON keeps every run.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loadtest.stats import median

Series = list[tuple[float, float]]
HISTOGRAM_BINS = 50
PROFILE_LINES = 15


@dataclass(frozen=True)
class Target:
    """A bar from the issue: ``metric op bound``."""

    metric: str
    op: str  # "<=" or ">="
    bound: float

    def met(self, value: float | None) -> bool | None:
        if value is None:
            return None
        return value <= self.bound if self.op == "<=" else value >= self.bound


@dataclass
class Measurement:
    """One repeat of a scenario."""

    metrics: dict[str, float | int | None]
    series: dict[str, Series] = field(default_factory=dict)  # label -> (seconds, per second)
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)  # label -> values
    series_title: str = "completed per second"
    series_xlabel: str = "seconds"
    latency_title: str = "latency (ms)"
    statements: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # label -> pg_stat_statements rows
    profiles: dict[str, dict[str, list[tuple[str, float]]]] = field(default_factory=dict)  # label -> py-spy summary
    # Several quantities over time, one plot each (the soak's): title -> label -> (seconds, value).
    panels: dict[str, dict[str, Series]] = field(default_factory=dict)


@dataclass
class Result:
    scenario: str
    params: dict[str, Any]
    runs: list[Measurement]
    targets: list[Target]
    notes: list[str] = field(default_factory=list)

    def metrics(self) -> dict[str, float | int | None]:
        """The median over the runs of each metric (the only value with one run)."""
        out: dict[str, float | int | None] = {}
        for name in self.runs[0].metrics:
            values = [r.metrics.get(name) for r in self.runs]
            numbers = [float(v) for v in values if v is not None]
            out[name] = None if not numbers else values[0] if len(numbers) == 1 else median(numbers)
        return out


def _fmt(value: float | int | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) or float(value).is_integer() and abs(value) >= 100:
        return f"{int(value)}"
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def table(result: Result) -> str:
    metrics = result.metrics()
    targets = {t.metric: t for t in result.targets}
    head = f"{result.scenario}" + (f" (median of {len(result.runs)} runs)" if len(result.runs) > 1 else "")
    rows = [("metric", "value", "target", "")]
    for name, value in metrics.items():
        t = targets.get(name)
        ok = "" if t is None else {True: "ok", False: "MISSED", None: "?"}[t.met(value)]
        rows.append((name, _fmt(value), "" if t is None else f"{t.op} {_fmt(t.bound)}", ok))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [head] + ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(2, "  ".join("-" * w for w in widths))
    lines += [f"note: {n}" for n in result.notes]
    for label, stmts in result.runs[-1].statements.items():
        lines.append(f"statements by calls (pg_stat_statements), {label}:")
        lines += [
            f"  {r['per']:6.3f}/{r['per_unit']:<6} {r['total_ms'] / max(1, r['calls']):7.3f} ms/call"
            f"  {' '.join(r['query'].split())[:90]}"
            for r in stmts
        ]
    for label, prof in result.runs[-1].profiles.items():
        for kind in ("inclusive", "self"):
            lines.append(f"worker profile, {label}, {kind} (% of samples holding the GIL):")
            lines += [f"  {pct:5.1f}%  {fn}" for fn, pct in prof[kind][:PROFILE_LINES]]
    return "\n".join(lines)


def write_json(result: Result, path: Path) -> None:
    metrics = result.metrics()
    body = {
        "scenario": result.scenario,
        "params": result.params,
        "metrics": metrics,
        "targets": [
            {**asdict(t), "value": metrics.get(t.metric), "met": t.met(metrics.get(t.metric))} for t in result.targets
        ],
        "notes": result.notes,
        "runs": [
            {"metrics": r.metrics, "series": r.series, "statements": r.statements, "profiles": r.profiles,
             **({"panels": r.panels} if r.panels else {})}
            for r in result.runs
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body, indent=2, default=str) + "\n")


def write_plot(result: Result, path: Path) -> bool:
    """Throughput over time and the latency histogram of the last run, as a
    PNG; False (and a word on stderr) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("loadtest: matplotlib is not installed; no plot written", file=sys.stderr)
        return False
    run = result.runs[-1]
    if run.panels:
        _plot_panels(plt, result.scenario, run.panels, run.series_xlabel, path)
        return True
    if not any(run.series.values()) and not any(run.latencies_ms.values()):
        return False  # nothing over time to show (idle)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, series in run.series.items():
        if series:
            xs, ys = zip(*series)
            left.step(xs, ys, where="post", label=label)
    left.set_ylim(bottom=0)
    left.set_xlabel(run.series_xlabel)
    left.set_ylabel(run.series_title)
    left.set_title(f"{result.scenario}: {run.series_title} over time")
    if run.series:
        left.legend()
    values = [v for vs in run.latencies_ms.values() for v in vs if v > 0]
    if values:
        lo, hi = min(values), max(values)
        log_bins = hi / lo > 50
        bins: Any = (
            [lo * (hi / lo) ** (i / HISTOGRAM_BINS) for i in range(HISTOGRAM_BINS + 1)] if log_bins else HISTOGRAM_BINS
        )
        for label, vs in run.latencies_ms.items():
            right.hist([v for v in vs if v > 0], bins=bins, alpha=0.6, label=label)
        if log_bins:
            right.set_xscale("log")
        right.legend()
    right.set_xlabel(run.latency_title)
    right.set_ylabel("count")
    right.set_title(f"{result.scenario}: {run.latency_title}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


PANEL_COLUMNS = 2
PANEL_LINES = 8  # a panel draws its lines with the highest peaks, this many (the JSON keeps them all)


def _plot_panels(plt: Any, scenario: str, panels: dict[str, dict[str, Series]], xlabel: str, path: Path) -> None:
    """One plot per panel, in a grid, each line a label (markers: a point
    per sample); lines that stay at 0 are left out."""
    rows = (len(panels) + PANEL_COLUMNS - 1) // PANEL_COLUMNS
    fig, axes = plt.subplots(rows, PANEL_COLUMNS, figsize=(12, 3.2 * rows), squeeze=False)
    cells = [ax for row in axes for ax in row]
    for ax, (title, lines) in zip(cells, panels.items()):
        peaks = {label: max(y for _, y in series) for label, series in lines.items() if series}
        drawn = sorted((label for label, peak in peaks.items() if peak), key=lambda k: -peaks[k])[:PANEL_LINES]
        for label in sorted(drawn, key=list(lines).index):
            xs, ys = zip(*lines[label])
            ax.plot(xs, ys, marker=".", label=label)
        ax.set_ylim(bottom=0)
        ax.set_xlabel(xlabel)
        ax.set_title(f"{scenario}: {title}")
        if drawn:
            ax.legend(fontsize="small")
    for ax in cells[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
