"""``long``: one workflow of many steps (a loop of activities), to see that a
step costs the same at the end of a long history as at its start.

For each length in --steps, a fresh database and a fleet of one worker run
one ``lt-long`` workflow to its end. Wall time per step is measured from the
activities' completion times (the database clock): the median over the
first, middle and last --window steps. Worker and server CPU per step is
sampled from /proc while the workflow runs, over the first, middle and last
tenth of its steps (the server's: the postmaster and its children), and in
total, so runs of different lengths compare: linear growth keeps the total
per step flat.
"""

from __future__ import annotations

import argparse
import time

import flows

from loadtest import app, db, fleet, stats
from loadtest.report import Measurement, Series, Target
from loadtest.session import Run

HELP = "one workflow of 1,000 / 5,000 / 10,000 steps: the cost of a step at its start, middle and end"
DEFAULT_STEPS = "1000,5000,10000"
DEFAULT_WINDOW = 100
TARGET_END_VS_START = 1.5  # the last window's cost per step <= this x the first's
SAMPLE_SECONDS = 0.1
APP = "loadtest.app"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", default=DEFAULT_STEPS, help="workflow lengths, comma-separated (default %(default)s)")
    p.add_argument("--window", type=int, default=DEFAULT_WINDOW, help="steps per wall-time window")


def lengths(args: argparse.Namespace) -> list[int]:
    return [int(s) for s in args.steps.split(",") if s.strip()]


def targets(args: argparse.Namespace) -> list[Target]:
    longest = max(lengths(args))
    return [
        Target(f"s{longest}_wall_end_vs_start", "<=", TARGET_END_VS_START),
        Target(f"s{longest}_worker_cpu_end_vs_start", "<=", TARGET_END_VS_START),
    ]


def cpu_at(samples: list[tuple[int, float, float]], step: int, which: int) -> float:
    """CPU seconds (column ``which``: 1 worker, 2 server) when ``step`` steps
    were done, interpolated between the samples."""
    for (s0, *c0), (s1, *c1) in zip(samples, samples[1:]):
        if s0 <= step <= s1:
            if s1 == s0:
                return c0[which - 1]
            return c0[which - 1] + (c1[which - 1] - c0[which - 1]) * (step - s0) / (s1 - s0)
    return samples[-1][which]


def measure_one(run: Run, steps: int, window: int) -> tuple[dict[str, float | None], Series, list[float]]:
    with run.database() as dsn:
        engine = flows.Engine(dsn, shards=run.shards)
        with run.fleet(APP, dsn, 1) as proc:
            workers = proc.children()
            servers = fleet.server_pids(dsn)
            execution = engine.start(app.long_loop, steps)
            samples: list[tuple[int, float, float]] = []  # (steps done, worker cpu s, server cpu s)
            with db.connect(dsn, autocommit=True) as conn:
                while True:
                    row = conn.execute(
                        "SELECT count(*) FILTER (WHERE status = 'completed') FROM activities"
                        " WHERE workflow_name = %s AND workflow_id = %s",
                        (execution.workflow_name_sharded, execution.workflow_id)).fetchone()
                    done = int(row[0]) if row else 0
                    samples.append((done, sum(fleet.cpu_seconds(p) for p in workers),
                                    sum(fleet.cpu_seconds(p) for p in servers)))
                    status = engine.query(execution.workflow_name, execution.workflow_id).status
                    if status != "running":
                        break
                    proc.check_alive()
                    run.check_deadline()
                    time.sleep(SAMPLE_SECONDS)
            if status != "completed":
                raise RuntimeError(f"lt-long ended {status}; see {proc.log_path}")
            with db.connect(dsn, autocommit=True) as conn:
                done_at = [float(t) for (t,) in conn.execute(
                    "SELECT extract(epoch FROM completed_at) FROM activities WHERE workflow_name = %s"
                    " AND workflow_id = %s ORDER BY sequence_num",
                    (execution.workflow_name_sharded, execution.workflow_id))]
    per_step_ms = [(b - a) * 1000.0 for a, b in zip(done_at, done_at[1:])]
    n = len(per_step_ms)
    middle = n // 2 - window // 2
    windows = {"start": per_step_ms[:window], "middle": per_step_ms[middle:middle + window],
               "end": per_step_ms[-window:]}
    figures: dict[str, float | None] = {
        f"wall_ms_per_step_{k}": stats.percentile(v, 50) for k, v in windows.items()}
    tenth = max(1, steps // 10)
    for which, who in ((1, "worker"), (2, "server")):
        for label, (a, b) in {"start": (0, tenth), "middle": (steps // 2 - tenth // 2, steps // 2 + tenth // 2),
                              "end": (steps - tenth, steps)}.items():
            figures[f"{who}_cpu_ms_per_step_{label}"] = 1000.0 * (cpu_at(samples, b, which)
                                                                 - cpu_at(samples, a, which)) / (b - a)
        figures[f"{who}_cpu_ms_per_step_total"] = 1000.0 * (samples[-1][which] - samples[0][which]) / steps
    start, end = figures["wall_ms_per_step_start"], figures["wall_ms_per_step_end"]
    figures["wall_end_vs_start"] = None if not start or end is None else end / start
    w_start, w_end = figures["worker_cpu_ms_per_step_start"], figures["worker_cpu_ms_per_step_end"]
    figures["worker_cpu_end_vs_start"] = None if not w_start or w_end is None else w_end / w_start
    rolling: Series = [
        (float(i + window), stats.percentile(per_step_ms[i:i + window], 50) or 0.0)
        for i in range(0, max(1, n - window + 1), max(1, window // 2))
    ]
    return figures, rolling, per_step_ms


def measure(run: Run, args: argparse.Namespace) -> Measurement:
    metrics: dict[str, float | int | None] = {}
    m = Measurement(metrics, series_title="ms per step (median of a window)", series_xlabel="step",
                    latency_title="ms per step")
    for steps in lengths(args):
        figures, rolling, per_step = measure_one(run, steps, args.window)
        for name, value in figures.items():
            metrics[f"s{steps}_{name}"] = value
        m.series[f"{steps} steps"] = rolling
        m.latencies_ms[f"{steps} steps"] = per_step
    return m
