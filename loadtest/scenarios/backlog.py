"""``backlog``: ``throughput`` on tables that already hold history.

Two fresh databases, one run: the throughput batch on empty tables, then on
tables holding 100,000 finished lt-three-steps workflows (with their
activities and eight history events each) and 10,000 waiting ones, half for
a signal and half on a timer a day away (whose tasks sit in task_queue).
They are written in bulk as the engine would have left them, with ids from
the engine's own ring, then VACUUM ANALYZE'd as autovacuum would have.
"""

from __future__ import annotations

import argparse
import sys
import time

import uuid6

from flows import sharding
from flows.engine import DEFAULT_TENANT_ID

from loadtest import app, db
from loadtest.report import Measurement, Target
from loadtest.scenarios.throughput import DEFAULT_WORKFLOWS, measure_batch
from loadtest.session import Run

HELP = "throughput with 100,000 finished and 10,000 waiting workflows in the tables"
DEFAULT_FINISHED = 100_000
DEFAULT_WAITING = 10_000
SLEEP_SECONDS = 86_400.0  # the sleeping half's timers: due in a day
TARGET_RATIO = 0.8
UUID7_SQL_VERSION = 180000  # uuidv7() is built in from PostgreSQL 18


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workflows", type=int, default=DEFAULT_WORKFLOWS, help="workflows in each batch")
    p.add_argument("--finished", type=int, default=DEFAULT_FINISHED, help="finished workflows pre-loaded")
    p.add_argument("--waiting", type=int, default=DEFAULT_WAITING, help="waiting workflows pre-loaded")


def targets(args: argparse.Namespace) -> list[Target]:
    return [Target("backlog_vs_empty", ">=", TARGET_RATIO)]


def _ids(base: str, n: int, shards: int) -> db.BulkIds:
    ids = [uuid6.uuid7() for _ in range(n)]
    return db.BulkIds([sharding.sharded_name(base, i, shards) for i in ids], ids)


def preload(run: Run, dsn: str, args: argparse.Namespace) -> dict[str, int]:
    started = time.monotonic()
    print(f"preloading {args.finished} finished and {args.waiting} waiting workflows...", file=sys.stderr)
    db.load_backlog(
        dsn,
        tenant_id=DEFAULT_TENANT_ID,
        finished=_ids(app.three_steps.name, args.finished, run.shards),
        finished_activity=app.step.name,
        waiting_signal=_ids(app.wait_signal.name, args.waiting // 2, run.shards),
        signal_name=app.GO_SIGNAL,
        sleeping=_ids(app.sleep.name, args.waiting - args.waiting // 2, run.shards),
        sleep_seconds=SLEEP_SECONDS,
        uuid7_in_sql=run.server.version_num() >= UUID7_SQL_VERSION,
    )
    rows = db.table_rows(dsn, ["workflows", "activities", "history_events", "timers", "task_queue"])
    print(f"preloaded in {time.monotonic() - started:.1f}s: {rows}", file=sys.stderr)
    run.check_deadline()
    return rows


def measure(run: Run, args: argparse.Namespace) -> Measurement:
    with run.database() as dsn:
        empty = measure_batch(run, dsn, args.workers, args.workflows)
    with run.database() as dsn:
        rows = preload(run, dsn, args)
        loaded = measure_batch(run, dsn, args.workers, args.workflows)
    metrics: dict[str, float | int | None] = {
        "empty_steps_per_s": empty.steps_per_s,
        "backlog_steps_per_s": loaded.steps_per_s,
        "backlog_vs_empty": loaded.steps_per_s / empty.steps_per_s,
        "empty_xacts_per_step": empty.xacts_per_step,
        "backlog_xacts_per_step": loaded.xacts_per_step,
        **{f"rows_{table}": n for table, n in rows.items()},
    }
    return Measurement(
        metrics,
        series={"empty tables": empty.series, "backlog": loaded.series},
        latencies_ms={"empty tables": empty.step_latencies_ms, "backlog": loaded.step_latencies_ms},
        series_title="activity steps recorded per second",
        latency_title="step latency (ms)",
        statements={k: f.statements for k, f in (("empty tables", empty), ("backlog", loaded)) if f.statements},
    )
