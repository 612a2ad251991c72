"""``wakeup``: signals at a steady rate to workflows waiting for them.

Each lt-wakeup workflow consumes its signal and completes in one
transaction, so "the workflow's next step committing" is that transaction's
commit. The headline latency is measured on the database clock, from the
signal's insert (signals.created_at, clock_timestamp(): the signal's own
commit follows within a millisecond or two, so this errs long) to:

- the consuming transaction's commit timestamp, on a server with
  track_commit_timestamp (``--own-server``);
- else the clock_timestamp() of that transaction's last write (its commit
  follows; this errs short by the commit).

The signal's own commit lies inside the first figure; ``send_signal_p50_ms``
(the whole call, client side: a pool check, the row lock, the insert and
the commit) bounds it.

With ``--client-view``, a second figure is the client's view (the engine
announces a workflow's end only to ``Engine.result()`` waiters, so the
harness registers as one on each): from the moment the harness called
``send_signal`` (so it includes the signal's own transaction) until the
shard's ``flows-done`` notification of the consuming commit reached a
listener process (``loadtest/listener.py``). It is not timed from the
signal's commit returning: on a loaded machine the sender sometimes got
that answer after the workflow had already woken.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import flows

from loadtest import app, db, stats, workload
from loadtest.listener import DoneListener
from loadtest.report import Measurement, Target
from loadtest.session import Run

HELP = "signals at a steady rate to waiting workflows: signal commit to next step commit"
DEFAULT_SIGNALS = 200
DEFAULT_RATE_PER_S = 20.0
TARGET_P50_MS = 3.0
TARGET_P99_MS = 10.0
LAST_NOTIFICATIONS_SECONDS = 0.2
APP = "loadtest.app"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--signals", type=int, default=DEFAULT_SIGNALS, help="signals, one per waiting workflow")
    p.add_argument("--rate", type=float, default=DEFAULT_RATE_PER_S, help="signals per second")
    p.add_argument("--client-view", action="store_true",
                   help="also time the client's view: wait on each workflow's result as Engine.result() does (its"
                   " end is then announced with a NOTIFY, which the consuming commit pays for)")


def targets(args: argparse.Namespace) -> list[Target]:
    return [Target("latency_p50_ms", "<=", TARGET_P50_MS), Target("latency_p99_ms", "<=", TARGET_P99_MS)]


def measure(run: Run, args: argparse.Namespace) -> Measurement:
    n = args.signals
    exact = run.server.commit_timestamps()
    with run.database() as dsn, run.fleet(APP, dsn, args.workers) as proc:
        engine = flows.Engine(dsn, shards=run.shards)
        shards = engine.shard_names(app.wakeup.name)
        monitor = db.Monitor(dsn)
        try:
            executions, _ = workload.start_batch(engine, dsn, app.wakeup, range(n))
            waiting = f"signal:{app.GO_SIGNAL}"
            run.wait_for("workflows waiting", n, lambda: monitor.waiting(shards, waiting), procs=(proc,))
            if args.client_view:
                monitor.await_results(shards)
            engine.ping()  # open the client pool before the clock starts
            run.reset_statements(dsn)
            sent: list[tuple[str, float]] = []
            send_s: list[float] = []  # each send_signal call, from the client
            listening = DoneListener(dsn, shards) if args.client_view else contextlib.nullcontext(None)
            with listening as listener:
                start = time.monotonic()
                for i, ex in enumerate(executions):
                    pause = start + i / args.rate - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)
                    called = time.monotonic()
                    sent.append((ex.workflow_name_sharded, called))
                    engine.send_signal(ex.workflow_name, ex.workflow_id, app.GO_SIGNAL, i)
                    send_s.append(time.monotonic() - called)
                    run.check_deadline()
                sending_s = time.monotonic() - start
                run.wait_for("woken workflows", n, lambda: monitor.ended(shards)[0], procs=(proc,))
                time.sleep(LAST_NOTIFICATIONS_SECONDS)
            statements = run.statements(dsn, n, "signal")
            signalled = monitor.signal_times(shards)
            if exact:
                woken = monitor.event_commit_times(shards, "workflow_completed")
            else:
                woken = monitor.event_times(shards, "workflow_completed")
        finally:
            monitor.close()
            engine.close()
    db_s = [woken[w] - t for w, t in signalled.items() if w in woken]
    delays = listener.match(sent) if listener is not None else []
    client_s = [d for d in delays if d is not None]
    run.note("latency: signal inserted (clock_timestamp, before its commit) -> "
             + ("consuming transaction's commit timestamp" if exact else
                "consuming transaction's last write (clock_timestamp, before its commit)"))
    if args.client_view:
        run.note("client: send_signal called -> flows-done notification received by a listener process")
    metrics: dict[str, float | int | None] = {
        "signals": n,
        "signals_per_s": n / sending_s if sending_s > 0 else None,
        "woken": len(db_s),
        **{f"latency_{k}": v for k, v in stats.summary_ms(db_s).items()},
        **({f"client_{k}": v for k, v in stats.summary_ms(client_s).items()} if args.client_view else {}),
        **({"client_unmatched": sum(1 for d in delays if d is None)} if args.client_view else {}),
        "send_signal_p50_ms": stats.percentile([s * 1000.0 for s in send_s], 50),
    }
    return Measurement(
        metrics,
        statements={"per signal (send to wake-up)": statements} if statements else {},
        series={"wake-ups": stats.rate_series(sorted(woken.values()), min(signalled.values(), default=0.0))},
        latencies_ms={"database": [x * 1000.0 for x in db_s], **({"client": [x * 1000.0 for x in client_s]}
                                                                 if args.client_view else {})},
        series_title="wake-ups per second",
        latency_title="signal to next step committed (ms)",
    )
