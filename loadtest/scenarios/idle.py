"""``idle``: what an idle fleet costs: queries reaching PostgreSQL and CPU.

The fleet starts on an empty database and is left to settle (a backend
that was busy may hold its statistics up to 10 s before flushing them), then
is watched for the window. Queries are the database's committed plus rolled
back transactions (pg_stat_database; read from another database, so the
harness adds none), or statements when pg_stat_statements is preloaded.
CPU is user + system time from /proc of each worker and of the supervisor.
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

from loadtest import db, fleet
from loadtest.progress import Progress
from loadtest.report import Measurement, Target
from loadtest.session import Run

HELP = "the fleet idle for 30 s: queries/s reaching PostgreSQL and CPU"
DEFAULT_WINDOW_SECONDS = 30.0
SETTLE_SECONDS = 12.0  # > PostgreSQL's 10 s idle statistics flush interval
TARGET_QUERIES_PER_S_PER_WORKER = 0.2
TARGET_WORKER_CPU_PCT = 1.0
TICK_SECONDS = 1.0
APP = "loadtest.app"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--window", type=float, default=DEFAULT_WINDOW_SECONDS, help="seconds watched")


def targets(args: argparse.Namespace) -> list[Target]:
    return [
        Target("queries_per_s_per_worker", "<=", TARGET_QUERIES_PER_S_PER_WORKER),
        Target("worker_cpu_pct_max", "<=", TARGET_WORKER_CPU_PCT),
    ]


def _watch(
    run: Run, what: str, seconds: float, procs: tuple[fleet.ProcessGroup, ...],
    on_tick: Callable[[float], None] | None = None,
) -> None:
    """Wait ``seconds`` with a progress line, calling ``on_tick(elapsed)`` each tick."""
    progress = Progress(what, int(seconds))
    start = time.monotonic()
    try:
        while (elapsed := time.monotonic() - start) < seconds:
            progress.update(int(elapsed))
            if on_tick is not None:
                on_tick(elapsed)
            for p in procs:
                p.check_alive()
            run.check_deadline()
            time.sleep(min(TICK_SECONDS, seconds - elapsed))
        progress.update(int(seconds))
    finally:
        progress.close()


def measure(run: Run, args: argparse.Namespace) -> Measurement:
    statements = run.server.enable_statements()
    with run.database() as dsn:
        dbname = db.dbname_of(dsn)
        with run.fleet(APP, dsn, args.workers) as proc:
            workers = proc.children()
            _watch(run, "settling", SETTLE_SECONDS, (proc,))
            before = run.server.xact_counts(dbname)
            run.reset_statements(dsn)
            cpu_before = {pid: fleet.cpu_seconds(pid) for pid in [proc.pid, *workers]}
            over_time: list[tuple[float, float]] = []  # (seconds, transactions so far)

            def sample(elapsed: float) -> None:
                so_far = run.server.xact_counts(dbname).minus(before)
                over_time.append((elapsed, float(so_far.commits + so_far.rollbacks)))

            t0 = time.monotonic()
            _watch(run, "idle window", args.window, (proc,), sample)
            elapsed = time.monotonic() - t0
            delta = run.server.xact_counts(dbname).minus(before)
            over_time.append((elapsed, float(delta.commits + delta.rollbacks)))
            calls = run.server.statement_calls(dbname) if statements else None
            top = run.statements(dsn, 1, "window")
            cpu = {pid: fleet.cpu_seconds(pid) - cpu_before[pid] for pid in cpu_before}
    xacts = delta.commits + delta.rollbacks
    queries = calls if calls is not None else xacts
    worker_pct = [100.0 * cpu[pid] / elapsed for pid in workers]
    run.note("queries = " + ("pg_stat_statements calls" if statements else
             "transactions (pg_stat_database xact_commit + xact_rollback; pg_stat_statements is not preloaded)"))
    metrics: dict[str, float | int | None] = {
        "workers": len(workers),
        "window_s": elapsed,
        "queries_per_s": queries / elapsed,
        "queries_per_s_per_worker": queries / elapsed / max(1, len(workers)),
        "xacts_per_s": xacts / elapsed,
        "worker_cpu_pct_max": max(worker_pct, default=None),
        "worker_cpu_pct_mean": sum(worker_pct) / len(worker_pct) if worker_pct else None,
        "supervisor_cpu_pct": 100.0 * cpu[proc.pid] / elapsed,
    }
    m = Measurement(
        metrics, series={"database": over_time}, series_title="transactions so far",
        latency_title="(no latencies in this scenario)",
    )
    if top:
        m.statements["idle window"] = [
            {**r, "per": r["calls"] / elapsed / max(1, len(workers)), "per_unit": "s/wkr"} for r in top
        ]
    return m
