"""``fairness``: one tenant's burst against another tenant's steady trickle.

Tenant B starts one-activity workflows at a steady rate (``--rate``, 4/s):
first on a quiet fleet for ``--quiet-seconds``, then while tenant A's burst
of ``--burst`` workflows (started at once, in transactions of 1,000) is
being worked through: from its first commit until a tenth of it is left. B's latency is each workflow's start to its end, on
the database clock (workflows.created_at to completed_at). The bar: B's
p99 during the burst at most 3x its quiet p99.
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid

import flows

from loadtest import app, db, stats
from loadtest.report import Measurement, Target
from loadtest.session import Run

HELP = "tenant B's latency on a quiet fleet, then while tenant A's burst of 20,000 is worked through"
DEFAULT_BURST = 20_000
DEFAULT_RATE_PER_S = 4.0
DEFAULT_QUIET_SECONDS = 15.0
TARGET_RATIO = 3.0
BURST_TRANSACTION = 1000
APP = "loadtest.app"
TENANT_A = uuid.UUID("00000000-0000-7000-8000-00000000000a")
TENANT_B = uuid.UUID("00000000-0000-7000-8000-00000000000b")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--burst", type=int, default=DEFAULT_BURST, help="tenant A's workflows, started at once")
    p.add_argument("--rate", type=float, default=DEFAULT_RATE_PER_S, help="tenant B's starts per second")
    p.add_argument("--quiet-seconds", type=float, default=DEFAULT_QUIET_SECONDS,
                   help="how long B runs alone first")


def targets(args: argparse.Namespace) -> list[Target]:
    return [Target("b_p99_ratio", "<=", TARGET_RATIO)]


def _trickle(engine: flows.Engine, rate: float, until: float, run: Run, n: int) -> tuple[list[str], list[uuid.UUID]]:
    """Start B's workflows at ``rate`` until ``until`` (monotonic)."""
    shards: list[str] = []
    ids: list[uuid.UUID] = []
    begin = time.monotonic()
    while (due := begin + len(ids) / rate) < until:
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        ex = engine.start(app.one_step, n + len(ids), tenant_id=TENANT_B)
        shards.append(ex.workflow_name_sharded)
        ids.append(ex.workflow_id)
        run.check_deadline()
    return shards, ids


def _latencies(monitor: db.Monitor, shards: list[str], ids: list[uuid.UUID]) -> list[float]:
    return [end - start for _, start, end, status in monitor.workflow_times(shards, ids)
            if end is not None and status == "completed"]


def measure(run: Run, args: argparse.Namespace) -> Measurement:
    with run.database() as dsn, run.fleet(APP, dsn, args.workers) as proc:
        engine = flows.Engine(dsn, shards=run.shards)
        all_shards = engine.shard_names(app.one_step.name)
        monitor = db.Monitor(dsn)
        try:
            engine.ping()
            quiet_shards, quiet_ids = _trickle(engine, args.rate, time.monotonic() + args.quiet_seconds, run, 0)
            run.wait_for("quiet workflows", len(quiet_ids), lambda: monitor.ended(all_shards)[0], procs=(proc,))

            burst_began = time.monotonic()
            inserted: list[float] = []

            def insert_burst() -> None:
                with db.connect(dsn) as conn:
                    for k in range(0, args.burst, BURST_TRANSACTION):
                        with conn.transaction():
                            for i in range(k, min(args.burst, k + BURST_TRANSACTION)):
                                engine.start(app.one_step, i, tenant_id=TENANT_A, conn=conn)
                inserted.append(time.monotonic() - burst_began)

            inserter = threading.Thread(target=insert_burst, name="burst", daemon=True)
            inserter.start()
            # B trickles on from the burst's first commit while A has work left (a tenth at most).
            total = len(quiet_ids) + args.burst
            burst_shards: list[str] = []
            burst_ids: list[uuid.UUID] = []
            while inserter.is_alive() or total + len(burst_ids) - monitor.ended(all_shards)[0] > args.burst // 10:
                s, i = _trickle(engine, args.rate, time.monotonic() + 1.0, run, 100_000 + len(burst_ids))
                burst_shards += s
                burst_ids += i
                proc.check_alive()
            inserter.join()
            started_s = inserted[0] if inserted else None
            total += len(burst_ids)
            run.wait_for("all workflows", total, lambda: monitor.ended(all_shards)[0], procs=(proc,))
            drained_s = time.monotonic() - burst_began
            quiet = _latencies(monitor, quiet_shards, quiet_ids)
            burst = _latencies(monitor, burst_shards, burst_ids)
        finally:
            monitor.close()
            engine.close()
    q, b = stats.summary_ms(quiet), stats.summary_ms(burst)
    run.note("B's latency: workflows.created_at -> completed_at (database clock); during the burst: B's workflows"
             " started from A's first commit until a tenth of A's was left")
    metrics: dict[str, float | int | None] = {
        "burst": args.burst,
        "burst_start_s": started_s,
        "burst_drained_s": drained_s,
        "b_quiet": len(quiet),
        **{f"b_quiet_{k}": v for k, v in q.items()},
        "b_during_burst": len(burst),
        **{f"b_burst_{k}": v for k, v in b.items()},
        "b_p99_ratio": (b["p99_ms"] / q["p99_ms"]) if b.get("p99_ms") and q.get("p99_ms") else None,
    }
    return Measurement(
        metrics,
        latencies_ms={"B quiet": [x * 1000.0 for x in quiet], "B during A's burst": [x * 1000.0 for x in burst]},
        latency_title="tenant B: start to end (ms)",
    )
