"""``timers``: workflows sleeping a short durable timer; how late each wakes.

Lateness is measured on the database clock against the timer's
``fire_at``: ``fired_at`` is now() of the transaction that fired it (when
that worker began), and the TimerFired event's clock_timestamp() is when
the wake-up was written, just before its commit. The headline is the
latter. Early means either is before ``fire_at``.
"""

from __future__ import annotations

import argparse

import flows

from loadtest import app, db, stats, workload
from loadtest.report import Measurement, Target
from loadtest.session import Run

HELP = "workflows sleeping 1 s: lateness of each wake-up after fire_at"
DEFAULT_WORKFLOWS = 500
DEFAULT_SLEEP_SECONDS = 1.0
TARGET_P99_MS = 20.0
APP = "loadtest.app"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workflows", type=int, default=DEFAULT_WORKFLOWS, help="sleeping workflows")
    p.add_argument("--sleep", type=float, default=DEFAULT_SLEEP_SECONDS, help="seconds each sleeps")
    p.add_argument("--start-rate", type=float, default=0.0,
                   help="workflows started per second, in small batches (default 0: all in one transaction,"
                   " so the timers fall due together and lateness shows firing capacity)")


def targets(args: argparse.Namespace) -> list[Target]:
    return [Target("lateness_p99_ms", "<=", TARGET_P99_MS), Target("early", "<=", 0)]


def measure(run: Run, args: argparse.Namespace) -> Measurement:
    n = args.workflows
    with run.database() as dsn, run.fleet(APP, dsn, args.workers) as proc:
        engine = flows.Engine(dsn, shards=run.shards)
        shards = engine.shard_names(app.sleep.name)
        monitor = db.Monitor(dsn)
        try:
            run.reset_statements(dsn)
            if args.start_rate > 0:
                workload.start_paced(engine, dsn, app.sleep, [args.sleep] * n, args.start_rate, run.check_deadline)
            else:
                workload.start_batch(engine, dsn, app.sleep, [args.sleep] * n)
            run.wait_for("timers fired", n, lambda: monitor.ended(shards)[0], procs=(proc,))
            rows = monitor.timer_times(shards)
            statements = run.statements(dsn, n, "timer")
        finally:
            monitor.close()
    claimed = [fired - due for due, fired, _ in rows if fired is not None]
    written = [event - due for due, _, event in rows if event is not None]
    early = sum(
        1 for due, fired, event in rows if (fired is not None and fired < due) or (event is not None and event < due)
    )
    run.note("lateness: TimerFired event written (clock_timestamp) - fire_at;"
             " claim: fired_at (the firing transaction's now()) - fire_at")
    metrics: dict[str, float | int | None] = {
        "timers": len(rows),
        "unfired": sum(1 for _, fired, _ in rows if fired is None),
        "early": early,
        **{f"lateness_{k}": v for k, v in stats.summary_ms(written).items()},
        **{f"claim_lateness_{k}": v for k, v in stats.summary_ms(claimed).items()},
    }
    first_due = min((due for due, _, _ in rows), default=0.0)
    last_due = max((due for due, _, _ in rows), default=0.0)
    last_fired = max((e for _, _, e in rows if e is not None), default=first_due)
    metrics["due_span_s"] = last_due - first_due
    metrics["fired_per_s"] = len(rows) / (last_fired - first_due) if last_fired > first_due else None
    return Measurement(
        metrics,
        statements={"per timer (start to wake-up)": statements} if statements else {},
        series={"wake-ups": stats.rate_series([e for _, _, e in rows if e is not None], first_due)},
        latencies_ms={"written": [x * 1000.0 for x in written], "claimed": [x * 1000.0 for x in claimed]},
        series_title="timers fired per second",
        latency_title="lateness after fire_at (ms)",
    )
