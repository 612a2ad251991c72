"""The supervisor's database work, done off its loop by a helper thread.

The supervisor's loop never waits on the network, as gunicorn's arbiter
never does: a dead worker is reaped and replaced, and a signal answered,
however the database fares. What the supervisor asks of the database (at
start-up, whether it is migrated; then a dead worker's leases to release,
stale workers elsewhere to sweep, a probe) is a ``Job``:

- ``Helper`` keeps the supervisor's queue of jobs and hands them one at a
  time to a helper thread; the thread answers on a pipe the loop selects
  on with its other descriptors. Nothing the loop calls here blocks.
- The thread holds a connection of its own on which every wait is bounded
  (connect_timeout, statement_timeout, TCP keepalives: ``ops.fleet.connect``).
- Each job has a deadline. Past it the loop gives up on the thread (a
  thread cannot be killed: it is left to end once its connection gives
  up, and its late answer is dropped), the job fails, to be retried like
  one the database refused, and a new thread with a new connection takes
  the next job.

The supervisor forks workers while the thread may be in the middle of a
statement: a worker closes the helper's descriptors first thing
(``fds``), never uses its connection, and leaves with ``os._exit``.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import select
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from flows.errors import DatabaseError, DatabaseUnavailable, FlowsError
from flows.ops import fleet as fleet_ops

log = logging.getLogger("supervisor")

STATEMENT_SECONDS = 5.0  # connect, each statement, a silent network: the helper's connection gives up after this
JOB_DEADLINE_SECONDS = 20.0  # a job not answered by then is given up, and its thread with it
MAX_ABANDONED = 3  # threads given up on and still stuck: past this many, jobs fail at once until one ends


@dataclass
class Job:
    """What to ask: ``kind`` is one of ``JOBS``, ``args`` its arguments;
    ``context`` is the supervisor's own (what to do with the answer)."""

    kind: str
    args: tuple[Any, ...] = ()
    context: Any = None
    deadline: float = 0.0  # time.monotonic() by which it must be answered, once handed over


@dataclass(frozen=True)
class Answer:
    """A job's outcome: ``value``, or ``failure``: 'unavailable' (the
    database did not answer: worth a retry), 'database' (it refused a
    statement, or one timed out), 'refused' (a FlowsError: migration files
    changed, none found), 'error' (a bug of ours) or 'timeout' (no answer
    by the deadline)."""

    job: Job
    value: Any = None
    failure: str | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.failure is None


JOBS: dict[str, Callable[..., Any]] = {
    "check": fleet_ops.check,
    "probe": fleet_ops.probe,
    "release": fleet_ops.release_worker,
    "sweep": fleet_ops.release_stale,
}


class _Thread(threading.Thread):
    """A helper thread: runs the jobs put in its inbox on its connection,
    and posts each answer (unless it has been given up on)."""

    def __init__(self, dsn: str, post: Callable[[_Thread, Answer], None], blocked: Iterable[signal.Signals]) -> None:
        super().__init__(name="flows-supervisor-db", daemon=True)
        self.dsn, self.post, self.blocked = dsn, post, set(blocked)
        self.inbox: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.abandoned = False
        self.conn_fd = -1  # its connection's socket, for a forked worker to close

    def run(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, self.blocked)  # the supervisor's signals go to its loop
        conn: Any = None
        try:
            while (job := self.inbox.get()) is not None:
                answer, conn = _run(self.dsn, conn, job)
                self.conn_fd = -1 if conn is None else conn.fileno()
                if self.abandoned:
                    return
                self.post(self, answer)
        finally:
            if conn is not None:
                _close(conn)
            self.conn_fd = -1


class Helper:
    """The supervisor's side of its database work: a queue of jobs, one in
    flight at a time, the thread that runs them (started when there is
    work and none runs), and the pipe its answers wake the loop by. Only
    ``call`` (one answer, waited for until its deadline, at start-up) and
    ``stop`` wait."""

    def __init__(self, dsn: str, blocked: Iterable[signal.Signals] = ()) -> None:
        self.dsn = dsn
        self.blocked = tuple(blocked)
        self.queue: list[Job] = []
        self.in_flight: Job | None = None
        self._thread: _Thread | None = None
        self._abandoned: list[_Thread] = []
        self._answers: collections.deque[tuple[_Thread, Answer]] = collections.deque()
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)

    def __len__(self) -> int:
        """Jobs not answered yet."""
        return len(self.queue) + (self.in_flight is not None)

    def fileno(self) -> int:
        """Readable when an answer is in."""
        return self._wake_r

    def fds(self) -> list[int]:
        """The descriptors a forked child must close: the pipe, and the
        helper threads' connections (a thread connecting at that very moment
        may leave one open in the child, which never uses it)."""
        threads = [t for t in [self._thread, *self._abandoned] if t is not None]
        return [self._wake_r, self._wake_w] + [t.conn_fd for t in threads if t.conn_fd >= 0]

    def deadline(self) -> float | None:
        return None if self.in_flight is None else self.in_flight.deadline

    def submit(self, job: Job) -> None:
        self.queue.append(job)

    def pump(self) -> list[Answer]:
        """Hand the next job to the thread if none is in flight, starting a
        thread if need be. Returns the answers of jobs that cannot run now
        (too many threads stuck)."""
        if self.in_flight is not None or not self.queue:
            return []
        if self._thread is None:
            self._abandoned = [t for t in self._abandoned if t.is_alive()]
            if len(self._abandoned) >= MAX_ABANDONED:
                return [Answer(self.queue.pop(0), failure="timeout",
                               error=f"{len(self._abandoned)} helper threads still stuck on the database")]
            self._thread = _Thread(self.dsn, self._post, self.blocked)
            self._thread.start()
        job = self.queue.pop(0)
        job.deadline = time.monotonic() + JOB_DEADLINE_SECONDS
        self.in_flight = job
        self._thread.inbox.put(job)
        return []

    def read(self) -> list[Answer]:
        """The pipe is readable: the answers in (a given-up thread's are dropped)."""
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass
        answers = []
        while self._answers:
            thread, answer = self._answers.popleft()
            if thread is self._thread and answer.job is self.in_flight:
                self.in_flight = None
                answers.append(answer)
        return answers

    def overdue(self, now: float) -> list[Answer]:
        """Give up on a job past its deadline, and on its thread."""
        job = self.in_flight
        if job is None or now < job.deadline or self._thread is None:
            return []
        log.error("database-helper-stuck job=%s: no answer in %.0fs; a new connection takes the next job",
                  job.kind, JOB_DEADLINE_SECONDS)
        self._thread.abandoned = True
        self._thread.inbox.put(None)  # should it ever answer, it ends there
        self._abandoned.append(self._thread)
        self._thread, self.in_flight = None, None
        return [Answer(job, failure="timeout", error=f"no answer within {JOB_DEADLINE_SECONDS:.0f}s")]

    def call(self, job: Job) -> Answer:
        """Run ``job`` (with nothing else queued) and wait for its answer,
        at most until its deadline: at start-up, before the loop runs."""
        self.submit(job)
        while True:
            answers = self.pump()
            if not answers:
                assert self.in_flight is not None
                select.select([self._wake_r], [], [], max(0.0, self.in_flight.deadline - time.monotonic()))
                answers = self.read() or self.overdue(time.monotonic())
            for answer in answers:
                if answer.job is job:
                    return answer

    def stop(self, wait_seconds: float = 1.0) -> None:
        """The thread ends after its job, closing its connection (waited for
        up to ``wait_seconds``; a thread stuck on the database is left to
        end with the process)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.inbox.put(None)
            thread.join(wait_seconds)
            if thread.is_alive():
                return  # it may still post: the pipe stays open
        if self._wake_r >= 0:
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1

    def _post(self, thread: _Thread, answer: Answer) -> None:
        """From the thread: an answer is in; wake the loop."""
        self._answers.append((thread, answer))
        try:
            os.write(self._wake_w, b".")
        except (BlockingIOError, OSError):  # the pipe is full (the loop wakes anyway), or closed (stopping)
            pass


def ready_to_start(helper: Helper, wait_seconds: float) -> bool:
    """At start-up, before the loop: whether the database answers, is
    migrated, and holds no migration file changed since it was applied.
    An unreachable server may be starting with us: it is asked again for up
    to ``wait_seconds``; anything else is refused at once (logged)."""
    deadline = time.monotonic() + wait_seconds
    while True:
        answer = helper.call(Job("check"))
        if answer.ok:
            break
        if answer.failure == "refused":  # a changed migration file, or none found
            log.error("database-migrations-refused error=%s", answer.error)
            return False
        if answer.failure != "unavailable" or time.monotonic() >= deadline:
            log.error("database-unreachable error=%s", answer.error)
            return False
        time.sleep(0.5)
    if answer.value:
        log.error("database-not-migrated: run `flows migrate` first (pending: %s)", ", ".join(answer.value))
        return False
    return True


# -- in the helper thread -----------------------------------------------------------------------


def _run(dsn: str, conn: Any, job: Job) -> tuple[Answer, Any]:
    """One job on ``conn`` (connected first if need be): its answer, and the
    connection to keep (None after a failure: the next job connects again)."""
    try:
        if conn is None:
            conn = fleet_ops.connect(dsn, seconds=STATEMENT_SECONDS)
        return Answer(job, JOBS[job.kind](conn, *job.args)), conn
    except DatabaseError as exc:
        answer = Answer(job, failure="unavailable" if isinstance(exc, DatabaseUnavailable) else "database",
                        error=str(exc))
    except FlowsError as exc:
        answer = Answer(job, failure="refused", error=str(exc))
    except Exception as exc:  # noqa: BLE001 - a bug of ours: say so, and keep serving
        log.exception("database-helper-failed job=%s", job.kind)
        answer = Answer(job, failure="error", error=f"{type(exc).__name__}: {exc}")
    if conn is not None:
        _close(conn)
    return answer, None


def _close(conn: Any) -> None:
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - it may be broken already
        pass
