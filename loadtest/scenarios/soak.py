"""``soak``: a fleet under a steady mixed load for minutes or hours: does
anything grow, slow down, get lost or run twice?

The fleet (the supervisor and --workers workers) runs ``lt-soak``
workflows (loadtest/soak_app.py) started at --rate a second, in a small
transaction every 0.1 s, for --minutes. Each runs three activities whose
timeout is --activity-timeout (3600 s: a worker must not hold on to an
ended attempt until its timeout passes), sleeps a --timer durable timer and
waits for the signal ``go`` with a --signal-timeout; the harness sends the
signal --signal-after seconds after the start to --signal-share of them,
the others time out. For --retry-share the second activity fails its first
attempt (a retry); for --fail-share the third fails every attempt, and the
workflow fails with a dead letter.

Every --window seconds it samples: RSS and threads of the supervisor and
of each worker (/proc/PID/status); the start-to-end latency p50/p99 of the
workflows that ended in the window (created_at to completed_at, database
clock); workflows started and ended; the queue's due tasks (the backlog)
and all its tasks; each table's dead tuples and total size with indexes
(pg_stat_user_tables, pg_total_relation_size). After the load it waits up
to --grace seconds for every workflow to end, then counts:

- lost: workflows started and not ended by then;
- wrong outcome: a workflow meant to fail that completed, or the reverse;
- duplicated: activity steps whose effect succeeded twice (each attempt
  writes a row keyed by its idempotency key to a ledger table of the
  soak's own, ``lt_soak_effects``).

The bars (issue 21): each worker's RSS grows by at most 10 % from the
sample at --settle seconds (5 minutes; the middle of a shorter soak) to
the last; the p99 of the last window (of at least half a window) is at
most 1.5x that of the first full window (the second: the first holds the
ramp-up); 0 lost; 0 duplicated. A workflow's latency includes its own
waits (the timer, the signal's timeout, a retry's backoff: about 0.8 s
at the p99 with the defaults), so a slower engine shows in the ratio
diluted by them.

``--rate half`` (the default) first measures the fleet's capacity for this
mix in a database of its own: --probe workflows started in one
transaction, no signal sent (each waits out its timeout); capacity is
their number over the time from that commit to the last one's end. The
soak then runs at half of it.

The run's deadline is --timeout (start-up, probe, checks) on top of
--minutes and --grace.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import flows

from loadtest import db, fleet, soak_app, stats, workload
from loadtest.progress import Progress
from loadtest.report import Measurement, Series, Target
from loadtest.session import Run

HELP = "a fleet under a steady mixed load for N minutes: memory, threads, latency, backlog, bloat; lost, duplicated"
APP = "loadtest.soak_app"
DEFAULT_MINUTES = 30.0
DEFAULT_WINDOW_SECONDS = 30.0
DEFAULT_SETTLE_SECONDS = 300.0
DEFAULT_GRACE_SECONDS = 120.0
DEFAULT_PROBE = 2000
TICK_SECONDS = 0.1  # starts go in one transaction per tick; due signals are sent each tick
DRAIN_POLL_SECONDS = 0.5
SEED = 21
TARGET_RSS_GROWTH_PCT = 10.0
TARGET_P99_RATIO = 1.5
LAST_WINDOW_MIN_FRACTION = 0.5  # a shorter trailing window is sampled, not judged


def _rate(text: str) -> float | str:
    if text == "half":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rate takes workflows per second or 'half', not {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("--rate must be > 0")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--minutes", type=_positive, default=DEFAULT_MINUTES, help="how long the load runs (default 30)")
    p.add_argument("--rate", type=_rate, default="half",
                   help="workflows started per second, or 'half': half the capacity a probe measures first"
                   " (default %(default)s)")
    p.add_argument("--window", type=_positive, default=DEFAULT_WINDOW_SECONDS, help="seconds between samples")
    p.add_argument("--settle", type=float, default=DEFAULT_SETTLE_SECONDS,
                   help="worker RSS growth counts from the sample at this second (or the soak's middle, if sooner)")
    p.add_argument("--grace", type=float, default=DEFAULT_GRACE_SECONDS,
                   help="seconds after the load for every workflow to end; later ones are lost")
    p.add_argument("--activity-timeout", type=float, default=soak_app.DEFAULT_ACTIVITY_TIMEOUT_SECONDS,
                   help="the activities' timeout, seconds (default %(default)s)")
    p.add_argument("--timer", type=float, default=0.2, help="each workflow's durable sleep, seconds")
    p.add_argument("--signal-timeout", type=float, default=0.5, help="how long each waits for its signal")
    p.add_argument("--signal-after", type=float, default=0.25,
                   help="the signal is sent this long after the start")
    p.add_argument("--signal-share", type=float, default=0.5, help="share of workflows sent their signal")
    p.add_argument("--retry-share", type=float, default=0.2, help="share whose second activity fails once")
    p.add_argument("--fail-share", type=float, default=0.05, help="share whose third activity always fails")
    p.add_argument("--probe", type=int, default=DEFAULT_PROBE, help="workflows of the capacity probe (--rate half)")


def targets(args: argparse.Namespace) -> list[Target]:
    return [
        Target("worker_rss_growth_pct", "<=", TARGET_RSS_GROWTH_PCT),
        Target("p99_last_vs_first", "<=", TARGET_P99_RATIO),
        Target("lost", "<=", 0),
        Target("duplicated", "<=", 0),
    ]


def _fleet_env(args: argparse.Namespace) -> dict[str, str]:
    return {soak_app.ACTIVITY_TIMEOUT_ENV: repr(args.activity_timeout)}


class Mix:
    """Each workflow's input, drawn from a seeded generator (every run the
    same), and whether the harness sends it its signal."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(SEED)

    def next(self, n: int) -> tuple[soak_app.Order, bool]:
        a = self.args
        signalled = self.rng.random() < a.signal_share
        return soak_app.Order(n, a.timer, a.signal_timeout, flaky=self.rng.random() < a.retry_share,
                              doomed=self.rng.random() < a.fail_share), signalled


class Load:
    """Starts ``lt-soak`` workflows at a steady rate and sends the signals
    that a share of them wait for, a little at a time (``tick``)."""

    def __init__(self, engine: flows.Engine, dsn: str, args: argparse.Namespace, rate: float) -> None:
        self.engine = engine
        self.conn = db.connect(dsn)
        self.signal_after = args.signal_after
        self.rate = rate
        self.mix = Mix(args)
        self.shards: list[str] = []
        self.ids: list[uuid.UUID] = []
        self.doomed: set[uuid.UUID] = set()
        self._signals: deque[tuple[float, flows.Execution]] = deque()
        self.signals_sent = 0
        self.signals_late = 0  # the workflow had ended (it timed out and went on to its end)

    def close(self) -> None:
        self.conn.close()

    def tick(self, elapsed: float) -> None:
        """Start the workflows due by ``elapsed`` seconds of load, then send
        the signals due now."""
        due = int(elapsed * self.rate) - len(self.ids)
        if due > 0:
            orders = [self.mix.next(len(self.ids) + i) for i in range(due)]
            with self.conn.transaction():
                runs = [self.engine.start(soak_app.soak, o, conn=self.conn) for o, _ in orders]
            send_at = time.monotonic() + self.signal_after
            for (o, signalled), ex in zip(orders, runs):
                self.shards.append(ex.workflow_name_sharded)
                self.ids.append(ex.workflow_id)
                if o.doomed:
                    self.doomed.add(ex.workflow_id)
                if signalled:
                    self._signals.append((send_at, ex))
        now = time.monotonic()
        while self._signals and self._signals[0][0] <= now:
            _, ex = self._signals.popleft()
            try:
                self.engine.send_signal(ex.workflow_name, ex.workflow_id, soak_app.GO_SIGNAL)
                self.signals_sent += 1
            except flows.WorkflowNotRunning:
                self.signals_late += 1


@dataclass
class Sample:
    """The fleet and the database at the end of a window (or at the start)."""

    t: float  # seconds since the load began
    procs: dict[str, tuple[float, int]]  # label -> (RSS MiB, threads)
    started: int
    ended: int
    latencies_s: list[float]  # start to end of the workflows that ended in the window
    due_tasks: int
    tasks: int
    tables: dict[str, tuple[int, int, float]]  # name -> (live, dead, MiB)


@dataclass
class Sampler:
    proc: fleet.ProcessGroup
    monitor: db.Monitor
    shards: list[str]  # every shard of lt-soak
    labels: dict[int, str] = field(default_factory=dict)  # worker pid -> "worker N"
    samples: list[Sample] = field(default_factory=list)
    _since: float = 0.0  # database clock: the last sample's

    def take(self, t: float, started: int) -> Sample:
        now = self.monitor.now()
        latencies = self.monitor.ended_between(self.shards, self._since, now) if self.samples else []
        self._since = now
        procs: dict[str, tuple[float, int]] = {}
        for label, pid in [("supervisor", self.proc.pid), *self._workers()]:
            got = fleet.rss_and_threads(pid)
            if got is not None:
                procs[label] = got
        due, tasks = self.monitor.tasks()
        sample = Sample(t, procs, started, self.monitor.ended(self.shards)[0], latencies, due, tasks,
                        {k: v for k, v in self.monitor.table_stats().items() if k != soak_app.LEDGER_TABLE})
        self.samples.append(sample)
        return sample

    def _workers(self) -> list[tuple[str, int]]:
        for pid in sorted(self.proc.children()):
            self.labels.setdefault(pid, f"worker {len(self.labels) + 1}")
        return [(label, pid) for pid, label in self.labels.items()]


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _window_line(s: Sample, prev: Sample) -> str:
    ms = stats.summary_ms(s.latencies_s)
    workers = " ".join(f"{rss:.0f}MiB/{th}t" for label, (rss, th) in s.procs.items() if label != "supervisor")
    p50, p99 = ms["p50_ms"], ms["p99_ms"]
    return (f"soak t={s.t:6.0f}s started {s.started - prev.started:5d} ended {s.ended - prev.ended:5d}"
            f"  p50 {p50 or 0:6.0f} ms p99 {p99 or 0:6.0f} ms  due {s.due_tasks:4d}/{s.tasks:5d} tasks"
            f"  workers {workers}")


def probe_capacity(run: Run, args: argparse.Namespace) -> float:
    """Workflows per second the fleet ends of this mix: --probe of them
    started in one transaction, from its commit to the last one's end (as
    ``throughput`` measures; each workflow's own waits, under 1 s, make
    it err low by that over the batch's length)."""
    with run.database() as dsn:
        soak_app.create_ledger(dsn)
        with run.fleet(APP, dsn, args.workers, env=_fleet_env(args)) as proc:
            engine = flows.Engine(dsn, shards=run.shards)
            shards = engine.shard_names(soak_app.soak.name)
            mix = Mix(args)
            monitor = db.Monitor(dsn)
            try:
                _, committed = workload.start_batch(engine, dsn, soak_app.soak,
                                                    [mix.next(i)[0] for i in range(args.probe)])
                run.wait_for("capacity probe", args.probe, lambda: monitor.ended(shards)[0], procs=(proc,))
                ends = sorted(c for _, _, c, _ in monitor.workflow_times(shards) if c is not None)
            finally:
                monitor.close()
                engine.close()
    return len(ends) / max(ends[-1] - committed, 1e-3)


def _drain(run: Run, proc: fleet.ProcessGroup, monitor: db.Monitor, shards: list[str], total: int,
           grace: float) -> float:
    """Wait up to ``grace`` seconds for ``total`` workflows to have ended;
    return how long it took."""
    progress = Progress("soak: draining", total)
    began = time.monotonic()
    try:
        while (ended := monitor.ended(shards)[0]) < total and time.monotonic() - began < grace:
            progress.update(ended)
            proc.check_alive()
            run.check_deadline()
            time.sleep(DRAIN_POLL_SECONDS)
        progress.update(ended)
    finally:
        progress.close()
    return time.monotonic() - began


def measure(run: Run, args: argparse.Namespace) -> Measurement:
    duration = args.minutes * 60.0
    run.extend_deadline(duration + args.grace)
    capacity = None
    if args.rate == "half":
        capacity = probe_capacity(run, args)
        rate = capacity / 2.0
        _say(f"soak: the fleet ends {capacity:.1f} workflows/s of this mix; the soak runs at {rate:.1f}/s")
    else:
        rate = float(args.rate)
    with run.database() as dsn:
        soak_app.create_ledger(dsn)
        with run.fleet(APP, dsn, args.workers, env=_fleet_env(args)) as proc:
            engine = flows.Engine(dsn, shards=run.shards)
            shards = engine.shard_names(soak_app.soak.name)
            monitor = db.Monitor(dsn)
            load = Load(engine, dsn, args, rate)
            try:
                sampler = Sampler(proc, monitor, shards)
                first = sampler.take(0.0, 0)
                begin = time.monotonic()
                next_sample = args.window
                while (elapsed := time.monotonic() - begin) < duration:
                    load.tick(elapsed)
                    if elapsed >= next_sample:
                        prev = sampler.samples[-1]
                        _say(_window_line(sampler.take(elapsed, len(load.ids)), prev))
                        next_sample += args.window
                    proc.check_alive()
                    run.check_deadline()
                    time.sleep(max(0.0, min(TICK_SECONDS, begin + duration - time.monotonic())))
                load.tick(duration)
                prev = sampler.samples[-1]
                _say(_window_line(sampler.take(time.monotonic() - begin, len(load.ids)), prev))
                drained_s = _drain(run, proc, monitor, shards, len(load.ids), args.grace)
                times = monitor.workflow_times(load.shards, load.ids)
                signalled = monitor.output_counts(shards, "signalled")
                activities = monitor.activity_counts(shards)
                ledger = soak_app.ledger_counts(dsn)
            finally:
                load.close()
                monitor.close()
                engine.close()
    return _report(run, args, rate, capacity, duration, drained_s, sampler, first, load, times, signalled,
                   activities, ledger)


def _report(
    run: Run, args: argparse.Namespace, rate: float, capacity: float | None, duration: float, drained_s: float,
    sampler: Sampler, first: Sample, load: Load, times: list[tuple[uuid.UUID, float, float | None, str]],
    signalled: dict[str, int], activities: dict[str, int], ledger: dict[str, int],
) -> Measurement:
    samples = sampler.samples
    windows = list(zip(samples, samples[1:]))  # (start, end) of each window
    end = samples[-1]

    # Latency: the first full window (the second; the first holds the ramp-up) against the last one.
    judged = [(a, b) for a, b in windows if b.t - a.t >= LAST_WINDOW_MIN_FRACTION * args.window]
    first_full = judged[1][1] if len(judged) > 1 else judged[0][1] if judged else None
    last = judged[-1][1] if judged else None
    p99_first = stats.summary_ms(first_full.latencies_s)["p99_ms"] if first_full else None
    p99_last = stats.summary_ms(last.latencies_s)["p99_ms"] if last else None

    # Memory: each worker from the sample at --settle (or the middle) to the last.
    settle = min(args.settle, duration / 2.0)
    base = next((s for s in samples if s.t >= settle), end)
    workers = [label for label in sampler.labels.values() if label in base.procs and label in end.procs]
    growth = [100.0 * (end.procs[w][0] - base.procs[w][0]) / base.procs[w][0] for w in workers]
    sup = "supervisor"
    sup_growth = (100.0 * (end.procs[sup][0] - base.procs[sup][0]) / base.procs[sup][0]
                  if sup in base.procs and sup in end.procs else None)
    if settle < args.settle:
        run.note(f"the soak is shorter than 2 x --settle: RSS growth counts from its middle ({settle:.0f} s)")

    outcome = {wid: status for wid, _, done, status in times if done is not None}
    lost = len(load.ids) - len(outcome)
    wrong = sum(1 for wid, status in outcome.items() if status != ("failed" if wid in load.doomed else "completed"))
    everything = [x for s in samples for x in s.latencies_s]
    all_ms = stats.summary_ms(everything)
    metrics: dict[str, float | int | None] = {
        "capacity_per_s": capacity,
        "rate_per_s": rate,
        "minutes": args.minutes,
        "activity_timeout_s": args.activity_timeout,
        "started": len(load.ids),
        "started_per_s": len(load.ids) / duration,
        "ended_per_s": (end.ended - first.ended) / max(end.t, 1e-3),
        "failed": sum(1 for s in outcome.values() if s == "failed"),
        "lost": lost,
        "wrong_outcome": wrong,
        "drain_s": drained_s,
        "signals_sent": load.signals_sent,
        "signals_late": load.signals_late,
        "signalled": signalled.get("true", 0),
        "signal_timed_out": signalled.get("false", 0),
        "activities_completed": activities.get("completed", 0),
        "effects": ledger["effects"],
        "failed_attempts": ledger["failed_attempts"],
        "duplicated": ledger["duplicated"],
        "p50_ms": all_ms["p50_ms"],
        "p99_ms": all_ms["p99_ms"],
        "p99_first_full_window_ms": p99_first,
        "p99_last_window_ms": p99_last,
        "p99_last_vs_first": p99_last / p99_first if p99_first and p99_last is not None else None,
        "worker_rss_mib_start": max((first.procs[w][0] for w in workers if w in first.procs), default=None),
        "worker_rss_mib_settled": max((base.procs[w][0] for w in workers), default=None),
        "worker_rss_mib_end": max((end.procs[w][0] for w in workers), default=None),
        "worker_rss_growth_pct": max(growth, default=None),
        "supervisor_rss_growth_pct": sup_growth,
        "worker_threads_max": max((th for s in samples for w, (_, th) in s.procs.items() if w != sup), default=None),
        "worker_restarts": len(sampler.labels) - sum(1 for p in first.procs if p != sup),
        "due_tasks_max": max(s.due_tasks for s in samples),
        "dead_tuples_max": max(sum(d for _, d, _ in s.tables.values()) for s in samples),
        "tables_mib_end": sum(mib for _, _, mib in end.tables.values()),
    }
    run.note("latency: workflows.created_at -> completed_at (database clock) of those ended in the window;"
             " RSS and threads: /proc/PID/status; dead tuples and sizes: pg_stat_user_tables,"
             " pg_total_relation_size (the ledger table left out)")
    return Measurement(metrics, panels=_panels(samples), series_xlabel="seconds of load")


def _panels(samples: list[Sample]) -> dict[str, dict[str, Series]]:
    procs = sorted({label for s in samples for label in s.procs}, key=lambda k: (k != "supervisor", k))
    tables = sorted({name for s in samples for name in s.tables})
    windows = list(zip(samples, samples[1:]))

    def per_window(value: Callable[[Sample, Sample], float | None]) -> Series:
        return [(b.t, v) for a, b in windows if (v := value(a, b)) is not None]

    def latency(q: float) -> Series:
        return per_window(lambda a, b: stats.percentile([x * 1000.0 for x in b.latencies_s], q))

    return {
        "RSS (MiB)": {p: [(s.t, s.procs[p][0]) for s in samples if p in s.procs] for p in procs},
        "threads": {p: [(s.t, float(s.procs[p][1])) for s in samples if p in s.procs] for p in procs},
        "latency of the workflows ended in the window (ms)": {"p50": latency(50), "p99": latency(99)},
        "workflows per second": {
            "started": per_window(lambda a, b: (b.started - a.started) / max(b.t - a.t, 1e-3)),
            "ended": per_window(lambda a, b: (b.ended - a.ended) / max(b.t - a.t, 1e-3)),
        },
        "task queue": {"due (backlog)": [(s.t, float(s.due_tasks)) for s in samples],
                       "all": [(s.t, float(s.tasks)) for s in samples]},
        "dead tuples": {t: [(s.t, float(s.tables[t][1])) for s in samples if t in s.tables] for t in tables},
        "table size with indexes (MiB)": {t: [(s.t, s.tables[t][2]) for s in samples if t in s.tables]
                                          for t in tables},
    }
