"""``wakeup``: signals at a steady rate to workflows waiting for them.

Each lt-wakeup workflow consumes its signal and completes in one
transaction, whose commit sends the shard's ``flows-done`` notification. The
headline latency runs on the harness's monotonic clock from the moment the
signal's commit returned to the moment that notification arrived: signal
commit to next-step commit, plus one notification delivery. A second
figure, from the database, is the signal commit (wall clock) to the
clock_timestamp() of the consuming transaction's last write.
"""

from __future__ import annotations

import argparse
import time

import flows

from loadtest import app, db, stats, workload
from loadtest.report import Measurement, Target
from loadtest.session import Run

HELP = "signals at a steady rate to waiting workflows: signal commit to next step commit"
DEFAULT_SIGNALS = 200
DEFAULT_RATE_PER_S = 20.0
TARGET_P50_MS = 3.0
TARGET_P99_MS = 10.0
APP = "loadtest.app"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--signals", type=int, default=DEFAULT_SIGNALS, help="signals, one per waiting workflow")
    p.add_argument("--rate", type=float, default=DEFAULT_RATE_PER_S, help="signals per second")


def targets(args: argparse.Namespace) -> list[Target]:
    return [Target("commit_to_commit_p50_ms", "<=", TARGET_P50_MS), Target("commit_to_commit_p99_ms", "<=", TARGET_P99_MS)]


def measure(run: Run, args: argparse.Namespace) -> Measurement:
    n = args.signals
    with run.database() as dsn, run.fleet(APP, dsn, args.workers) as proc:
        engine = flows.Engine(dsn, shards=run.shards)
        shards = engine.shard_names(app.wakeup.name)
        monitor = db.Monitor(dsn)
        try:
            executions, _ = workload.start_batch(engine, dsn, app.wakeup, range(n))
            waiting = f"signal:{app.GO_SIGNAL}"
            run.wait_for("workflows waiting", n, lambda: monitor.waiting(shards, waiting), procs=(proc,))
            engine.ping()  # open the client pool before the clock starts
            sent: list[tuple[str, float]] = []
            committed_wall: dict[object, float] = {}
            with workload.DoneListener(dsn, shards) as listener:
                start = time.monotonic()
                for i, ex in enumerate(executions):
                    pause = start + i / args.rate - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)
                    engine.send_signal(ex.workflow_name, ex.workflow_id, app.GO_SIGNAL, i)
                    sent.append((ex.workflow_name_sharded, time.monotonic()))
                    committed_wall[ex.workflow_id] = time.time()
                    run.check_deadline()
                sending_s = time.monotonic() - start
                run.wait_for("woken workflows", n, lambda: monitor.ended(shards)[0], procs=(proc,))
                time.sleep(0.1)  # the last notifications
            delays = listener.match(sent)
            consumed = monitor.event_times(shards, "workflow_completed")
        finally:
            monitor.close()
            engine.close()
    client_ms = [d * 1000.0 for d in delays if d is not None]
    db_ms = [(consumed[w] - t) * 1000.0 for w, t in committed_wall.items() if w in consumed]
    c = stats.summary_ms([x / 1000.0 for x in client_ms])
    d = stats.summary_ms([x / 1000.0 for x in db_ms])
    run.note("commit_to_commit: signal commit returned -> flows-done notification received (harness clock)")
    run.note("db_commit_to_write: signal commit returned (wall) -> consuming transaction's last write (clock_timestamp)")
    metrics: dict[str, float | int | None] = {
        "signals": n,
        "signals_per_s": n / sending_s if sending_s > 0 else None,
        "unmatched": sum(1 for x in delays if x is None),
        **{f"commit_to_commit_{k}": v for k, v in c.items()},
        **{f"db_commit_to_write_{k}": v for k, v in d.items()},
    }
    ends = sorted(t + x for (_, t), x in zip(sent, delays) if x is not None)
    return Measurement(
        metrics,
        series={"wake-ups": stats.rate_series(ends, sent[0][1] if sent else 0.0)},
        latencies_ms={"commit to commit": client_ms, "db: commit to write": db_ms},
        series_title="wake-ups per second",
        latency_title="signal commit to next step (ms)",
    )
