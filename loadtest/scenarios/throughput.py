"""``throughput``: N three-activity workflows through fleets of 1 and 2
workers, against the pgbench baseline, with transactions per step.

The workflows are started in one transaction once the fleet listens, so the
clock runs from that commit to the last workflow's completion. Transactions
are pg_stat_database deltas of the run's database taken while nothing else
is connected to it, less the harness's own (counted); they include the
fleet's start-up and shutdown (a few dozen), a small overcount, and the
read-only transactions listening backends run to receive notifications.
With ``--own-server`` the transactions that wrote are counted too, from the
server's transaction id counter.
"""

from __future__ import annotations

import argparse
import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flows

from loadtest import app, db, fleet, pgbench, profiler, stats, workload
from loadtest.report import Measurement, Series, Target
from loadtest.session import Run

HELP = "N three-step workflows, fleets of 1 and 2 workers, vs a pgbench baseline"
DEFAULT_WORKFLOWS = 2000
STEPS_PER_WORKFLOW = 3  # lt-three-steps runs three activities
TARGET_RATIO = 0.25  # steps/s of the largest fleet >= this x pgbench tps
TARGET_XACTS_PER_STEP = 1.2
APP = "loadtest.app"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workflows", type=int, default=DEFAULT_WORKFLOWS, help="workflows per fleet size")
    p.add_argument("--fleets", default="1,2", help="fleet sizes (worker processes) to measure, comma-separated")
    p.add_argument("--pgbench-seconds", type=int, default=pgbench.BASELINE_SECONDS, help="0 skips the baseline")
    p.add_argument("--profile", action="store_true", help="sample the workers with py-spy during each batch")


def fleet_sizes(args: argparse.Namespace) -> list[int]:
    return [int(w) for w in args.fleets.split(",") if w.strip()]


def targets(args: argparse.Namespace) -> list[Target]:
    largest = max(fleet_sizes(args))
    return [
        Target(f"w{largest}_steps_per_s_vs_pgbench", ">=", TARGET_RATIO),
        Target(f"w{largest}_xacts_per_step", "<=", TARGET_XACTS_PER_STEP),
    ]


@dataclass
class BatchFigures:
    workflows: int
    failed: int
    seconds: float
    steps: int
    commits: int
    writes: int | None  # transactions that wrote (XIDs assigned), on a server of our own
    rollbacks: int
    step_latencies_ms: list[float]
    series: Series
    worker_cpu_s: float  # user + system seconds of the worker processes during the batch
    server_cpu_s: float  # of the PostgreSQL server's processes (all of them: the harness's polls included)
    statements: list[dict[str, Any]]  # pg_stat_statements, when the server preloads it
    two_phase_commits: int | None  # on a Citus cluster: PREPARE TRANSACTIONs on the worker nodes during the steps
    profile: dict[str, list[tuple[str, float]]]  # py-spy summary, with --profile

    @property
    def workflows_per_s(self) -> float:
        return self.workflows / self.seconds

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.seconds

    @property
    def xacts_per_step(self) -> float:
        return self.commits / max(1, self.steps)


def measure_batch(run: Run, dsn: str, workers: int, n: int, *, profile: bool = False) -> BatchFigures:
    """Run ``n`` lt-three-steps workflows through a fleet of ``workers`` on
    ``dsn``; with ``profile``, sample the workers with py-spy meanwhile."""
    dbname = db.dbname_of(dsn)
    engine = flows.Engine(dsn, shards=run.shards)
    run.server.wait_backends_gone(dbname)
    run.reset_statements(dsn)
    before = run.server.xact_counts(dbname)
    xid_before = run.server.next_xid()
    samples: list[Path] = []
    with run.fleet(APP, dsn, workers) as proc, contextlib.ExitStack() as stack:
        workers_pids = proc.children()
        if profile:
            samples = stack.enter_context(
                profiler.record(workers_pids, run.log_path("profile").parent, f"{run.stamp}-w{workers}")
            )
        cpu_before = sum(fleet.cpu_seconds(p) for p in workers_pids)
        server_before = fleet.server_cpu_seconds(dsn)
        started, t0 = workload.start_batch(engine, dsn, app.three_steps, range(n))
        # Counted while the fleet runs steps: not the start (one transaction
        # over every shard) nor the fleet's shutdown (releasing its leases).
        counting_2pc = run.server.reset_two_phase_commits(dbname)
        shards = [e.workflow_name_sharded for e in started]
        ids = [e.workflow_id for e in started]
        monitor = db.Monitor(dsn)
        try:
            run.wait_for(f"{n} workflows, {workers}w", n, lambda: monitor.ended_among(shards, ids), procs=(proc,))
        finally:
            monitor.close()
        prepared = run.server.two_phase_commits(dbname) if counting_2pc else None
        cpu = sum(fleet.cpu_seconds(p) for p in workers_pids) - cpu_before
        server_cpu = fleet.server_cpu_seconds(dsn) - server_before
    run.server.wait_backends_gone(dbname)
    delta = run.server.xact_counts(dbname).minus(before)
    writes = run.server.next_xid() - xid_before - (n + 1)  # less the start: 1 transaction, n savepoints
    ours = monitor.transactions + 1  # the polls and the one start transaction
    results = db.Monitor(dsn)
    try:
        times = results.workflow_times(shards, ids)
        acts = results.activity_times(shards, ids)
    finally:
        results.close()
    ended = [c for _, _, c, _ in times if c is not None]
    return BatchFigures(
        workflows=len(ended),
        failed=sum(1 for *_, status in times if status == "failed"),
        seconds=max(ended) - t0,
        steps=len(acts),
        commits=delta.commits - ours,
        writes=writes if run.own_server else None,
        rollbacks=delta.rollbacks,
        worker_cpu_s=cpu,
        server_cpu_s=server_cpu,
        step_latencies_ms=[(done - scheduled) * 1000.0 for scheduled, done in acts],
        series=stats.rate_series([done for _, done in acts], t0),
        statements=run.statements(dsn, len(acts), "step"),
        two_phase_commits=prepared,
        profile=profiler.summarise(samples) if samples else {},
    )


def measure(run: Run, args: argparse.Namespace) -> Measurement:
    metrics: dict[str, float | int | None] = {}
    m = Measurement(metrics, series_title="activity steps recorded per second", latency_title="step latency (ms)")
    tps = None
    if args.pgbench_seconds > 0:
        with run.database(migrated=False) as dsn:
            baseline = pgbench.run_baseline(dsn, seconds=args.pgbench_seconds, timeout=max(1.0, run.remaining()))
        tps = baseline.tps
        metrics["pgbench_tps"] = tps
        run.note(f"baseline: {baseline.command}")
    for workers in fleet_sizes(args):
        with run.database() as dsn:
            fig = measure_batch(run, dsn, workers, args.workflows, profile=args.profile)
        w = f"w{workers}"
        metrics[f"{w}_workflows_per_s"] = fig.workflows_per_s
        metrics[f"{w}_steps_per_s"] = fig.steps_per_s
        metrics[f"{w}_steps_per_s_vs_pgbench"] = None if tps is None else fig.steps_per_s / tps
        metrics[f"{w}_xacts_per_step"] = fig.xacts_per_step
        metrics[f"{w}_write_xacts_per_step"] = None if fig.writes is None else fig.writes / max(1, fig.steps)
        metrics[f"{w}_worker_cpu_ms_per_step"] = 1000.0 * fig.worker_cpu_s / max(1, fig.steps)
        metrics[f"{w}_server_cpu_ms_per_step"] = 1000.0 * fig.server_cpu_s / max(1, fig.steps)
        metrics[f"{w}_rollbacks"] = fig.rollbacks
        if run.server.citus_workers is not None:  # on Citus only; None (shown "-") after evictions
            metrics[f"{w}_two_phase_commits"] = fig.two_phase_commits
        metrics[f"{w}_failed"] = fig.failed
        metrics[f"{w}_step_p50_ms"] = stats.percentile(fig.step_latencies_ms, 50)
        metrics[f"{w}_step_p99_ms"] = stats.percentile(fig.step_latencies_ms, 99)
        m.series[f"{workers} worker(s)"] = fig.series
        m.latencies_ms[f"{workers} worker(s)"] = fig.step_latencies_ms
        if fig.statements:
            m.statements[f"{workers} worker(s)"] = fig.statements
        if fig.profile:
            m.profiles[f"{workers} worker(s)"] = fig.profile
    return m
