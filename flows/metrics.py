"""Prometheus metrics of flows, added up across processes.

Recording is off until ``enable()`` finds a metrics directory
(``PROMETHEUS_MULTIPROC_DIR``): then every process writes its own files
there (prometheus_client's multiprocess mode) and a scrape adds up the
files of every process, alive or dead, so the supervisor's forked workers
and gunicorn's workers each count once, and a killed worker's counts stay
counted. Off, each hook below costs one global lookup. The supervisor
(``FLOWS_METRICS_PORT``) and gunicorn (``gunicorn.conf.py``) make a fresh
directory per fleet and per web server at start (``fresh_directory``) and
mark the files of each dead child (``process_dead``).

Labels name workflows by their base name and activities by their name,
never by an id, so the number of series stays fixed. The queue, dead-letter
and worker gauges are read from the database at scrape time, in one
statement, kept a few seconds (``DATABASE_CACHE_SECONDS``).

docs/metrics.md lists every metric.
"""

from __future__ import annotations

import bisect
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, ContextManager, Iterator, Protocol

from flows import extras, sharding
from flows.ops import fleet as fleet_ops

log = logging.getLogger("flows.metrics")

DIRECTORY_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
DATABASE_CACHE_SECONDS = 5.0  # scrapes within this long of a database read reuse it
DATABASE_TIMEOUT_SECONDS = 5.0
# A worker's steps and attempts reach the files this long after they happen
# (what a process killed outright loses), in one write per series.
FLUSH_SECONDS = 0.5
# Seconds: steps and wake-ups take milliseconds when all is well, minutes when a shard is behind.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
ACTIVITY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


class _Workflow:
    """One workflow name's series (labels resolved once: ``.labels()`` takes a lock)."""

    __slots__ = ("steps", "completed", "failed", "latency", "wakeup", "timer")

    def __init__(self, m: _Metrics, name: str) -> None:
        self.steps = m.steps.labels(name)
        self.completed = m.completed.labels(name)
        self.failed = m.failed.labels(name)
        self.latency = m.step_latency.labels(name)
        self.wakeup = m.wakeup_latency.labels(name)
        self.timer = m.timer_lateness.labels(name)


class _Metrics:
    """The metric objects, made once recording is on (in multiprocess mode)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        def counter(name: str, doc: str, *labels: str) -> Any:
            return Counter(name, doc, labels, registry=None)

        def histogram(name: str, doc: str, label: str, buckets: tuple[float, ...]) -> Any:
            return Histogram(name, doc, [label], registry=None, buckets=buckets)

        self.started = counter("flows_workflows_started", "Workflows started (counted by the process that starts them).",
                               "workflow")
        self.completed = counter("flows_workflows_completed", "Workflows that completed.", "workflow")
        self.failed = counter("flows_workflows_failed", "Workflows that failed (each writes a dead letter).",
                              "workflow")
        self.cancelled = counter("flows_workflows_cancelled", "Workflows cancelled.", "workflow")
        self.signals_rejected = counter(
            "flows_signals_rejected", "Signals a wait rejected: their payload did not decode into its type.",
            "workflow")
        self.steps = counter("flows_steps", "Steps recorded (each committed replay or attempt end).", "workflow")
        self.step_latency = histogram(
            "flows_step_latency_seconds",
            "From when a step was due (its start, signal, timer, or the attempt it records ending) to its commit.",
            "workflow", LATENCY_BUCKETS)
        self.wakeup_latency = histogram(
            "flows_wakeup_latency_seconds", "From a signal's arrival to the commit of the step it woke.",
            "workflow", LATENCY_BUCKETS)
        self.timer_lateness = histogram(
            "flows_timer_lateness_seconds", "From a timer's fire_at to the commit of the step it woke.",
            "workflow", LATENCY_BUCKETS)
        self.attempts = counter("flows_activity_attempts", "Activity attempts ended (completed, failed, timed out or lost).",
                                "activity")
        self.attempt_failures = counter("flows_activity_failures", "Activity attempts that failed.", "activity")
        self.attempt_duration = histogram("flows_activity_duration_seconds", "How long activity attempts ran.",
                                          "activity", ACTIVITY_BUCKETS)
        self.workers = Gauge("flows_workers_alive", "Worker processes running (flows.Worker), among living processes.",
                             registry=None, multiprocess_mode="livesum")
        self.exits = counter("flows_worker_exits", "Worker processes the supervisor saw end, by cause.", "cause")
        self.released = counter("flows_leases_released",
                                "Tasks whose leases were released because the worker holding them died.", "cause")
        self.by_workflow: dict[str, _Workflow] = {}
        self.by_shard: dict[str, _Workflow] = {}
        self.by_activity: dict[str, tuple[Any, Any, Any]] = {}
        self.lock = threading.Lock()

    def workflow(self, shard: str) -> _Workflow:
        series = self.by_shard.get(shard)
        if series is None:
            name = sharding.base_name(shard)
            with self.lock:
                series = self.by_workflow.get(name) or _Workflow(self, name)
                self.by_workflow[name] = self.by_shard[shard] = series
        return series

    def activity(self, name: str) -> tuple[Any, Any, Any]:
        series = self.by_activity.get(name)
        if series is None:
            series = self.by_activity[name] = (
                self.attempts.labels(name), self.attempt_failures.labels(name), self.attempt_duration.labels(name))
        return series


class _Buffer:
    """What the worker's hot path counts, written to the files by a thread of
    the process's own at most FLUSH_SECONDS later, added up per series: a
    step appends to a deque instead of writing (prometheus_client takes
    one lock per process and a few microseconds per write)."""

    def __init__(self) -> None:
        self.counts: deque[tuple[Any, float]] = deque()  # (counter child, amount)
        self.observations: deque[tuple[Any, float]] = deque()  # (histogram child, value)
        self.armed = False  # a flush is coming: appends need not wake the thread
        self.wake = threading.Event()
        self.lock = threading.Lock()  # one flush at a time
        self.pid = 0  # the process whose thread flushes

    def count(self, child: Any, amount: float = 1.0) -> None:
        self.counts.append((child, amount))
        if not self.armed:
            self._arm()

    def observe(self, child: Any, value: float) -> None:
        self.observations.append((child, value))
        if not self.armed:
            self._arm()

    def _arm(self) -> None:
        self.armed = True
        if self.pid != os.getpid():
            with self.lock:
                if self.pid != os.getpid():
                    self.pid = os.getpid()
                    threading.Thread(target=self._loop, name="flows-metrics-flush", daemon=True).start()
        self.wake.set()

    def _loop(self) -> None:
        while True:
            self.wake.wait()
            time.sleep(FLUSH_SECONDS)
            self.wake.clear()
            self.armed = False  # appends from here on wake us again; this flush takes those before it
            self.flush()

    def flush(self) -> None:
        """Write what was counted (the flush thread, a scrape, a stopping worker)."""
        with self.lock:
            try:
                self._write()
            except Exception as exc:  # noqa: BLE001 - the work goes on without its metrics
                _failed(exc)

    def _write(self) -> None:
        totals: dict[Any, float] = defaultdict(float)
        while self.counts:
            child, amount = self.counts.popleft()
            totals[child] += amount
        sums: dict[Any, float] = defaultdict(float)
        buckets: dict[tuple[Any, int], int] = defaultdict(int)
        while self.observations:
            child, value = self.observations.popleft()
            sums[child] += value
            buckets[child, bisect.bisect_left(child._upper_bounds, value)] += 1
        for child, amount in totals.items():
            child.inc(amount)
        for child, total in sums.items():  # what Histogram.observe does, once per series and bucket
            child._sum.inc(total)
        for (child, i), n in buckets.items():
            child._buckets[i].inc(n)

    def forget(self) -> None:
        """In a forked child: what the parent counted is the parent's to write."""
        self.__init__()  # type: ignore[misc]


_buffer = _Buffer()
os.register_at_fork(after_in_child=_buffer.forget)
_m: _Metrics | None = None
_enable_lock = threading.Lock()


def enable() -> bool:
    """Turn recording on in this process when ``PROMETHEUS_MULTIPROC_DIR``
    names a directory; idempotent, and cheap to call again. Returns whether
    recording is on. The variable must be set before prometheus_client is
    first imported in the process (flows imports it here, only then)."""
    global _m
    if _m is not None:
        return True
    directory = os.environ.get(DIRECTORY_VARIABLE)
    if not directory:
        return False
    with _enable_lock:
        if _m is not None:
            return True
        if not os.path.isdir(directory):
            log.warning("metrics-off: %s=%s is not a directory", DIRECTORY_VARIABLE, directory)
            return False
        extras.require("prometheus_client", "metrics", f"Prometheus metrics ({DIRECTORY_VARIABLE} is set)")
        from prometheus_client import values

        if not getattr(values.ValueClass, "_multiprocess", False):
            log.warning("metrics-off: prometheus_client was imported before %s was set", DIRECTORY_VARIABLE)
            return False
        _m = _Metrics()
    return True


def enabled() -> bool:
    return _m is not None


def fresh_directory(role: str) -> str:
    """Make a new, empty metrics directory for a fleet or a web server and
    point ``PROMETHEUS_MULTIPROC_DIR`` at it, for this process and the ones
    it forks or starts after. Call before anything records."""
    path = tempfile.mkdtemp(prefix=f"flows-metrics-{role}-{os.getpid()}-")
    os.environ[DIRECTORY_VARIABLE] = path
    return path


def remove_directory(path: str) -> None:
    if path:
        shutil.rmtree(path, ignore_errors=True)


def process_dead(pid: int, directory: str | None = None) -> None:
    """A process writing in this directory (default: ours) ended: drop its
    live gauges (its counters and histograms stay counted)."""
    directory = directory or os.environ.get(DIRECTORY_VARIABLE)
    if directory and os.path.isdir(directory):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call,unused-ignore]


# -- hooks: the client side ---------------------------------------------------------


def workflow_started(name: str) -> None:
    m = _m
    if m is not None:
        m.started.labels(name).inc()


def workflow_cancelled(name: str) -> None:
    m = _m
    if m is not None:
        m.cancelled.labels(name).inc()


def signal_rejected(name: str) -> None:
    m = _m
    if m is not None:
        m.signals_rejected.labels(name).inc()


# -- hooks: the worker -------------------------------------------------------------------


@dataclass(slots=True)
class Woke:
    """When a step's work fell due, to time its commit by: ``late``
    seconds before ``began`` (a ``time.monotonic()``), by the database
    clock; or ``late`` comes with the commit (``pending``). ``cause`` is
    start, signal, timer, attempt (an attempt's end) or claim (a task whose
    due time is not known: timed from its claim)."""

    cause: str
    began: float
    late: float = 0.0
    pending: Pending | None = None


class Pending(Protocol):
    """A value read with the step's commit (``statements.Deferred``): its
    first column, once committed, is ``late``."""

    row: tuple[Any, ...] | None


def attempt_woke(ended: float) -> Woke | None:
    """A step recording an attempt's end is due from that end."""
    return None if _m is None else Woke("attempt", ended)


def _failed(exc: Exception) -> None:
    """Recording failed (the directory removed, the disk full): the work
    goes on; say so once per process."""
    global _warned
    if not _warned:
        _warned = True
        log.warning("metrics-record-failed error=%s: %s", type(exc).__name__, exc)


_warned = False


def step_recorded(shard: str, status: str | None, woke: Woke | None) -> None:
    """A step of a workflow of ``shard`` committed, leaving it ``status``:
    count it, its workflow's end, and time it."""
    m = _m
    if m is None:
        return
    try:
        _step(m, shard, status, woke)
    except Exception as exc:  # noqa: BLE001 - never fail a committed step over its metrics
        _failed(exc)


def _step(m: _Metrics, shard: str, status: str | None, woke: Woke | None) -> None:
    series, buffer = m.workflow(shard), _buffer
    buffer.count(series.steps)
    if status == "completed":
        buffer.count(series.completed)
    elif status == "failed":
        buffer.count(series.failed)
    if woke is None:
        return
    late = woke.late
    if woke.pending is not None:
        row = woke.pending.row
        late = row[0] if row is not None and row[0] is not None else 0.0
    seconds = late + time.monotonic() - woke.began
    buffer.observe(series.latency, seconds)
    if woke.cause == "signal":
        buffer.observe(series.wakeup, seconds)
    elif woke.cause == "timer":
        buffer.observe(series.timer, seconds)


def attempt_ended(activity: str, duration_seconds: float | None, failed: bool) -> None:
    m = _m
    if m is None:
        return
    try:
        attempts, failures, duration = m.activity(activity)
        _buffer.count(attempts)
        if failed:
            _buffer.count(failures)
        if duration_seconds is not None:
            _buffer.observe(duration, duration_seconds)
    except Exception as exc:  # noqa: BLE001 - the attempt's end is recorded all the same
        _failed(exc)


def worker_running(delta: int) -> None:
    """A flows.Worker started (+1) or stopped (-1, after writing what it counted) in this process."""
    m = _m
    if m is not None:
        if delta < 0:
            _buffer.flush()
        m.workers.inc(delta)


def leases_released(count: int, cause: str) -> None:
    """``count`` tasks leased by a dead worker were made due again: it
    ``exited`` (seen by its supervisor) or went ``stale`` (no heartbeat)."""
    m = _m
    if m is not None and count:
        m.released.labels(cause).inc(count)


def worker_exited(pid: int, cause: str) -> None:
    """The supervisor reaped a worker: ``stopped`` (asked to), ``crashed``
    (exited unasked) or ``killed`` (by a signal it was not sent)."""
    m = _m
    if m is not None:
        m.exits.labels(cause).inc()
        process_dead(pid)


# -- scraping ------------------------------------------------------------------------------


Connect = Callable[[], ContextManager[Any]]


class _DatabaseCollector:
    """The gauges read from the database at scrape time: per shard, the
    tasks due and the oldest one's age, dead letters, live workers."""

    _cache: dict[str, tuple[float, list[fleet_ops.ShardGauges] | None]] = {}
    _lock = threading.Lock()

    def __init__(self, key: str, connect: Connect) -> None:
        self.key, self.connect = key, connect

    def _read(self) -> list[fleet_ops.ShardGauges] | None:
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(self.key)
            if cached is not None and cached[0] > now:
                return cached[1]
            try:
                with self.connect() as conn:
                    rows: list[fleet_ops.ShardGauges] | None = fleet_ops.shard_gauges(conn, fleet_ops.stale_seconds())
            except Exception as exc:  # noqa: BLE001 - the scrape still answers, with flows_database_up 0
                log.warning("metrics-database-failed error=%s", type(exc).__name__)
                rows = None
            self._cache[self.key] = (now + DATABASE_CACHE_SECONDS, rows)
            return rows

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        rows = self._read()
        up = GaugeMetricFamily("flows_database_up", "Whether the last read of the database gauges succeeded.")
        up.add_metric([], 0.0 if rows is None else 1.0)
        yield up
        if rows is None:
            return
        labels = ["workflow", "shard"]
        depth = GaugeMetricFamily("flows_queue_depth", "Tasks due now and not held by a worker.", labels=labels)
        oldest = GaugeMetricFamily("flows_queue_oldest_due_age_seconds",
                                   "How long the oldest due task has waited (0: none due).", labels=labels)
        dead = GaugeMetricFamily("flows_dead_letters", "Dead letters not retried.", labels=labels)
        workers = GaugeMetricFamily("flows_shard_workers", "Workers with a fresh heartbeat serving the shard.",
                                    labels=labels)
        for row in rows:
            base, index = sharding.split_sharded(row.shard)
            values = [base, "" if index is None else str(index)]
            depth.add_metric(values, row.due)
            oldest.add_metric(values, row.oldest_due_seconds or 0.0)
            dead.add_metric(values, row.dead_letters)
            workers.add_metric(values, row.workers)
        yield from (depth, oldest, dead, workers)


def exposition(
    key: str, connect: Connect, accept: str | None = None, directory: str | None = None
) -> tuple[bytes, str]:
    """The scrape's body and content type: the metrics of every process of
    ``directory`` (default: this process's, when recording is on), added
    up, and the database gauges (``connect()``: a connection to read them;
    ``key``: their cache's key, e.g. the DSN). ``accept``: the request's
    Accept header (OpenMetrics or Prometheus text)."""
    extras.require("prometheus_client", "metrics", "Prometheus metrics")
    from prometheus_client import CollectorRegistry
    from prometheus_client.exposition import choose_encoder
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    if directory is None and _m is not None:
        _buffer.flush()  # this process's own counts, current
        directory = os.environ.get(DIRECTORY_VARIABLE)
    if directory:
        MultiProcessCollector(registry, directory)  # type: ignore[no-untyped-call,unused-ignore]
    registry.register(_DatabaseCollector(key, connect))
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


def serve(port: int, dsn: str, host: str = "", directory: str | None = None) -> ThreadingHTTPServer:
    """Serve ``GET /metrics`` (``exposition``) on ``port`` from a daemon
    thread (the supervisor's), the database gauges from ``dsn``. Returns
    the server (``shutdown()`` stops it)."""

    def connect() -> ContextManager[Any]:
        return fleet_ops.connect(dsn, seconds=DATABASE_TIMEOUT_SECONDS)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server protocol
            if self.path.split("?", 1)[0] != "/metrics":
                self.send_error(404, "only /metrics here")
                return
            body, content_type = exposition(dsn, connect, self.headers.get("Accept"), directory)
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - scrapes are not worth a line each
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="flows-metrics-http", daemon=True).start()
    return server
