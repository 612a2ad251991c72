"""Running activity attempts: slots, timeouts, heartbeats, and recording.

An attempt runs on a thread of its own, outside any transaction, under a
lease: its timeout plus a grace (``steps.LEASE_GRACE_SECONDS``). A watchdog
records an attempt that runs past its timeout, or stops heartbeating, as a
failed attempt ("timed out") at once, so the retry policy's next attempt
follows; whatever the late attempt returns is then refused, because only the
delivery holding the lease (its fencing token) may record. An attempt whose
worker died is found by another worker when the lease runs out (or at once,
when a supervisor or a heartbeat releases the dead worker's leases) and is
recorded as failed the same way.
"""

from __future__ import annotations

import asyncio
import ctypes
import heapq
import logging
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from flows import codec, metrics, sharding, store
from flows.context import ActivityContext
from flows.definitions import DEFAULT_ACTIVITY_TIMEOUT_SECONDS, ActivityDefinition
from flows.errors import ConfigurationError
from flows.steps import LEASE_GRACE_SECONDS, Attempt, News, StepWriter
from flows.store import leases as lease_store
from flows.threads import Threads
from flows.wakeups import BUSY_RECHECK_SECONDS, Ticket, Wake, Wakeups

log = logging.getLogger("flows.worker")

RECORD_RETRY_SECONDS = 60.0  # keep trying to record an attempt's end this long while the database is away
RECONNECT_MAX_SECONDS = 5.0
HEARTBEAT_FLUSH_MAX_SECONDS = 30.0  # the longest a heartbeat's details wait before reaching the database
# Most attempt ends of one shard recorded in one transaction (1: each alone).
RECORD_BATCH = int(os.environ.get("FLOWS_RECORD_BATCH", "8"))


class AttemptInterrupted(BaseException):
    """Raised in an attempt's thread once it ran past its timeout (and was
    recorded so): a BaseException, so the activity's ``except Exception``
    lets it through while its ``finally`` blocks run."""


@dataclass(eq=False)
class _Pending:
    """An attempt's end waiting to be recorded with others of its shard."""

    attempt: Attempt
    lease_to: str | None
    wake: threading.Event | None = None  # only for an attempt that waits for another thread's recording
    done: bool = False
    leased: lease_store.ActivityTask | None = None
    error: BaseException | None = None

    def finish(self, leased: lease_store.ActivityTask | None, error: BaseException | None = None) -> None:
        self.leased, self.error, self.done = leased, error, True
        if self.wake is not None:
            self.wake.set()


@dataclass(eq=False)
class Running:
    """An attempt in progress, as the watchdog and heartbeats see it."""

    task: lease_store.ActivityTask
    definition: ActivityDefinition[Any, Any] | None
    ctx: ActivityContext
    started: float  # time.monotonic()
    deadline: float  # start-to-close
    beat_deadline: float | None  # with a heartbeat timeout: the last beat plus it
    beat_timeout: float | None = None
    flush_every: float = 0.0  # send heartbeats to the database at most this often
    details: bytes | None = None  # the last heartbeat's details (JSON)
    pending: bool = False  # details not yet sent
    flushed_at: float = -math.inf
    held: bool = True  # the lease is ours, as far as the last heartbeat knew
    ended: bool = False  # recorded, by the attempt or by the watchdog
    thread: int | None = None  # the thread running the activity's code, while it does
    aio_task: asyncio.Future[Any] | None = None  # an async def attempt's task, while it runs
    loop: asyncio.AbstractEventLoop | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def end(self) -> bool:
        """True for the first caller only: who records this attempt's end."""
        with self.lock:
            if self.ended:
                return False
            self.ended = True
            return True


class ActivityRunner:
    """Runs leased activity attempts on ``concurrency`` threads and records
    each end with ``steps``. ``lease_to()`` names who a completion's next
    activity is leased to (None once the worker stops), ``on_news`` takes a
    step's news for the worker's wake-ups."""

    def __init__(
        self,
        activities: dict[str, ActivityDefinition[Any, Any]],
        *,
        owner: str,
        concurrency: int,
        steps: StepWriter,
        wakeups: Wakeups,
        lease_to: Callable[[], str | None],
        on_news: Callable[[News | None], None],
    ) -> None:
        self.activities = activities
        self.names = sorted(activities)
        self.owner = owner
        self.concurrency = concurrency
        self.steps = steps
        self.wakeups = wakeups
        self.lease_to = lease_to
        self.on_news = on_news
        self.pool: Any = None
        self.immediate = False  # stop without recording anything more
        self._in_flight = 0
        self._lock = threading.Lock()
        self._pending: dict[str, list[_Pending]] = {}  # attempt ends waiting for the shard's recorder
        self._recording: set[str] = set()  # shards with a recorder at work
        self._executor = Threads(concurrency, "flows-activity")
        self._watch: list[tuple[float, int, Running]] = []
        self._watch_seq = 0
        self._watch_cond = threading.Condition()
        self._watch_stop = False
        self._watchdog = threading.Thread(target=self._watchdog_loop, name="flows-activity-watchdog", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None  # for async def activities, started on first use
        self._loop_thread: threading.Thread | None = None
        self._recorders = ThreadPoolExecutor(4, thread_name_prefix="flows-activity-record")

    def start(self, pool: Any) -> None:
        self.pool = pool
        self._watchdog.start()

    # -- slots ------------------------------------------------------------------

    def free_slots(self) -> int:
        with self._lock:
            return self.concurrency - self._in_flight

    def reserve(self, wanted: int) -> int:
        """Take up to ``wanted`` free slots; return how many."""
        with self._lock:
            got = max(0, min(wanted, self.concurrency - self._in_flight))
            self._in_flight += got
            return got

    def release(self, unused: int) -> None:
        if unused > 0:
            with self._lock:
                self._in_flight -= unused

    # -- claiming and starting --------------------------------------------------

    def claim(self, ticket: Ticket) -> int:
        """Lease due tasks of our activities in the ticket's shard, up to the
        free slots, and start them; learn when the shard's next falls due."""
        slots = self.reserve(self.concurrency)
        tasks: list[lease_store.ActivityTask] = []
        try:
            if not slots:
                return 0
            with self.pool.connection() as conn:  # one statement: no BEGIN and COMMIT
                tasks, next_due = lease_store.claim_activities(conn, ticket.shard, self.names, self.owner, slots)
            if len(tasks) < slots and next_due is not None and next_due <= 0:
                next_due = BUSY_RECHECK_SECONDS  # due, but held by another worker
            self.wakeups.learn(ticket, next_due)
            self.run(tasks)
            return len(tasks)
        finally:
            self.release(slots - len(tasks))

    def run(self, tasks: list[lease_store.ActivityTask]) -> None:
        """Run attempts in slots already reserved for them."""
        for task in tasks:
            self._executor.submit(self._run, task)

    def _is_async(self, task: lease_store.ActivityTask) -> bool:
        definition = self.activities.get(task.name)
        return definition is not None and definition.is_async and not task.lost

    def _run(self, task: lease_store.ActivityTask) -> None:
        """Run an attempt and record it; then the workflow's next activity in
        this same slot, if recording it leased one to us. An async def
        attempt goes to the event loop with its slot."""
        handed = False
        try:
            next_task: lease_store.ActivityTask | None = task
            while next_task is not None and not self.immediate:
                if self._is_async(next_task):
                    asyncio.run_coroutine_threadsafe(self._run_async(next_task), self._event_loop())
                    handed = True
                    return
                next_task = self._attempt(next_task)
        except Exception as exc:  # noqa: BLE001 - never lose the slot
            store.log_error(log, logging.ERROR, "activity-record-failed", exc, name=task.name, id=task.activity_id)
        finally:
            if not handed:
                self.release(1)
                self.wakeups.wake(Wake.SLOT)

    async def _run_async(self, task: lease_store.ActivityTask) -> None:
        """``_run`` on the event loop: async def attempts, one after the
        other in this slot; a plain one goes back to a thread with the slot."""
        handed = False
        try:
            next_task: lease_store.ActivityTask | None = task
            while next_task is not None and not self.immediate:
                if not self._is_async(next_task):
                    self._executor.submit(self._run, next_task)
                    handed = True
                    return
                next_task = await self._attempt_async(next_task)
        except Exception as exc:  # noqa: BLE001 - never lose the slot
            store.log_error(log, logging.ERROR, "activity-record-failed", exc, name=task.name, id=task.activity_id)
        finally:
            if not handed:
                self.release(1)
                self.wakeups.wake(Wake.SLOT)

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                self._loop_thread = threading.Thread(target=loop.run_forever, name="flows-activity-loop", daemon=True)
                self._loop_thread.start()
                self._loop = loop
            return self._loop

    def _lost(
        self, task: lease_store.ActivityTask, definition: ActivityDefinition[Any, Any] | None
    ) -> lease_store.ActivityTask | None:
        """Deliveries that never reported back are failed attempts: record
        them (the retry policy then schedules the next) instead of running
        the activity at once."""
        attempt = task.attempt + task.lost - 1
        timeout = definition.timeout_seconds if definition is not None else DEFAULT_ACTIVITY_TIMEOUT_SECONDS
        error = (f"TimeoutError: attempt {attempt + 1} did not report back within its lease"
                 f" (timeout {timeout:g}s): its worker hung or died" if task.expired_owner else
                 f"WorkerLost: attempt {attempt + 1} was lost with its worker")
        log.warning("activity-attempt-lost name=%s id=%s attempt=%s", task.name, task.activity_id, attempt + 1)
        return self._record(Attempt(replace(task, attempt=attempt), definition, error=error), self.lease_to())

    def _running(self, task: lease_store.ActivityTask, definition: ActivityDefinition[Any, Any] | None) -> Running:
        """An attempt about to start, with its context, deadlines and heartbeats."""
        timeout = definition.timeout_seconds if definition is not None else DEFAULT_ACTIVITY_TIMEOUT_SECONDS
        beat_timeout = definition.heartbeat_timeout_seconds if definition is not None else None
        ctx = ActivityContext(
            task.workflow_id, sharding.base_name(task.shard), task.tenant_id, task.activity_id, task.name,
            task.sequence_num, task.attempt + 1, _details(task.details),
        )
        started = time.monotonic()
        running = Running(task, definition, ctx, started, started + timeout,
                          None if beat_timeout is None else started + beat_timeout, beat_timeout,
                          min(HEARTBEAT_FLUSH_MAX_SECONDS, (beat_timeout or timeout) / 3))
        ctx._beat = lambda details: self._beat(running, details)
        return running

    def _attempt(self, task: lease_store.ActivityTask) -> lease_store.ActivityTask | None:
        definition = self.activities.get(task.name)
        if task.lost:
            return self._lost(task, definition)
        running = self._running(task, definition)
        ctx, started = running.ctx, running.started
        output: bytes | None = None
        error: str | None = None
        try:
            try:
                with running.lock:
                    running.thread = threading.get_ident()
                self._watch_attempt(running)
                if definition is None:
                    raise ConfigurationError(f"activity {task.name!r} is not registered in this worker")
                result = definition.fn(ctx, codec.decode(task.input, definition.input_type))
                output = codec.encode(result, "activity result")
            except Exception as exc:  # noqa: BLE001 - an activity may raise anything
                error = f"{type(exc).__name__}: {exc}"
            finally:
                with running.lock:  # from here on the watchdog leaves this thread alone
                    running.thread = None
            recording = running.end()
        except AttemptInterrupted:  # the watchdog recorded the timeout, then stopped the attempt here
            recording = False
        duration = time.monotonic() - started
        if not recording:  # the watchdog recorded it as timed out: whatever it returned comes too late
            log.warning("activity-late-result-discarded name=%s id=%s attempt=%s ran=%.1fs",
                        task.name, task.activity_id, ctx.attempt, duration)
            return None
        if error is not None:
            log.info("activity-attempt-failed name=%s id=%s attempt=%s error=%s", task.name, task.activity_id,
                     ctx.attempt, error.split(":", 1)[0])
        return self._record(Attempt(task, definition, output, error, duration, running.details), self.lease_to())

    async def _attempt_async(self, task: lease_store.ActivityTask) -> lease_store.ActivityTask | None:
        """An async def attempt: its coroutine runs as a task of its own on
        this loop, cancelled by the watchdog at its timeout; the end is
        recorded on a thread (the store is synchronous)."""
        definition = self.activities[task.name]
        running = self._running(task, definition)
        loop = asyncio.get_running_loop()
        output: bytes | None = None
        error: str | None = None
        try:
            inp = codec.decode(task.input, definition.input_type)
            with running.lock:
                running.loop = loop
                running.aio_task = asyncio.ensure_future(definition.fn(running.ctx, inp))
            self._watch_attempt(running)
            result = await running.aio_task
            output = codec.encode(result, "activity result")
        except asyncio.CancelledError:
            error = f"CancelledError: attempt {task.attempt + 1} was cancelled"
        except Exception as exc:  # noqa: BLE001 - an activity may raise anything
            error = f"{type(exc).__name__}: {exc}"
        finally:
            with running.lock:
                running.aio_task = None
        recording = running.end()
        duration = time.monotonic() - running.started
        if not recording:
            log.warning("activity-late-result-discarded name=%s id=%s attempt=%s ran=%.1fs",
                        task.name, task.activity_id, running.ctx.attempt, duration)
            return None
        if error is not None:
            log.info("activity-attempt-failed name=%s id=%s attempt=%s error=%s", task.name, task.activity_id,
                     running.ctx.attempt, error.split(":", 1)[0])
        attempt = Attempt(task, definition, output, error, duration, running.details)
        return await loop.run_in_executor(self._recorders, self._record, attempt, self.lease_to())

    # -- heartbeats -------------------------------------------------------------

    def _beat(self, running: Running, details: Any) -> bool:
        """ctx.heartbeat(): keep the details and move the heartbeat deadline;
        tell the database (which extends the lease) at most a few times per
        heartbeat timeout, the watchdog sending details left pending. False
        when the lease is no longer ours."""
        data = codec.encode(details, "heartbeat details")
        now = time.monotonic()
        with running.lock:
            running.details, running.pending = data, True
            if running.beat_timeout is not None:
                running.beat_deadline = now + running.beat_timeout
            flush = now >= running.flushed_at + running.flush_every
        if flush and running.loop is None:
            self._flush(running)
        elif running.pending:  # (an async attempt never waits for the database on its loop)
            self._rewatch(running)  # the watchdog sends it by the flush time
        return not running.ended and running.held

    def _flush(self, running: Running) -> None:
        """Send an attempt's pending heartbeat; a lease found taken cancels it."""
        with running.lock:
            running.flushed_at, running.pending, details = time.monotonic(), False, running.details
        beat_timeout = running.beat_timeout
        try:
            with self.pool.connection() as conn:
                held = lease_store.heartbeat_activity(
                    conn, running.task, self.owner, details or b"null",
                    None if beat_timeout is None else beat_timeout + LEASE_GRACE_SECONDS,
                    running.deadline - running.started + LEASE_GRACE_SECONDS,
                )
        except store.TRANSIENT_ERRORS as exc:  # the lease still runs; the next beat tries again
            log.warning("activity-heartbeat-failed name=%s error=%s", running.task.name, type(exc).__name__)
            return
        if not held:
            running.held = False
            running.ctx._cancelled = True

    # -- the watchdog -------------------------------------------------------------

    def _watch_attempt(self, running: Running) -> None:
        deadline = self._deadline_of(running)
        with self._watch_cond:
            self._watch_seq += 1
            earliest = not self._watch or deadline < self._watch[0][0]
            heapq.heappush(self._watch, (deadline, self._watch_seq, running))
            if earliest:  # else the watchdog wakes for an earlier deadline first anyway
                self._watch_cond.notify()

    def _rewatch(self, running: Running) -> None:
        with self._watch_cond:
            self._watch_seq += 1
            heapq.heappush(self._watch, (self._deadline_of(running), self._watch_seq, running))
            self._watch_cond.notify()

    @staticmethod
    def _deadline_of(running: Running) -> float:
        """When the watchdog looks at an attempt next: its timeout, its
        heartbeat deadline, or when its pending heartbeat is to be sent."""
        at = running.deadline
        if running.beat_deadline is not None:
            at = min(at, running.beat_deadline)
        if running.pending:
            at = min(at, running.flushed_at + running.flush_every)
        return at

    def _watchdog_loop(self) -> None:
        """Record attempts that run past their timeout or stop beating."""
        while True:
            with self._watch_cond:
                while not self._watch_stop:
                    while self._watch and self._watch[0][2].ended:
                        heapq.heappop(self._watch)
                    wait = self._watch[0][0] - time.monotonic() if self._watch else None
                    if wait is not None and wait <= 0:
                        break
                    self._watch_cond.wait(wait)
                if self._watch_stop:
                    return
                _, _, running = heapq.heappop(self._watch)
                deadline = self._deadline_of(running)
                if deadline > time.monotonic():  # it beat meanwhile: watch it again
                    self._watch_seq += 1
                    heapq.heappush(self._watch, (deadline, self._watch_seq, running))
                    continue
            now = time.monotonic()
            if now >= running.deadline or (running.beat_deadline is not None and now >= running.beat_deadline):
                self._time_out(running)
            elif running.pending:
                self._flush(running)
                if not running.ended:
                    self._rewatch(running)

    def _time_out(self, running: Running) -> None:
        if not running.end():
            return
        running.ctx._cancelled = True
        with running.lock:  # stop the activity's code at its next Python instruction (or await)
            if running.thread is not None:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(running.thread),
                                                           ctypes.py_object(AttemptInterrupted))
            if running.aio_task is not None and running.loop is not None:
                running.loop.call_soon_threadsafe(running.aio_task.cancel)
        task, now = running.task, time.monotonic()
        if running.beat_deadline is not None and running.beat_deadline < running.deadline:
            assert running.definition is not None and running.definition.heartbeat_timeout_seconds is not None
            error = (f"TimeoutError: attempt {task.attempt + 1} sent no heartbeat for"
                     f" {running.definition.heartbeat_timeout_seconds:g}s (heartbeat_timeout)")
        else:
            error = (f"TimeoutError: attempt {task.attempt + 1} ran past its timeout of"
                     f" {running.deadline - running.started:g}s")
        log.warning("activity-timed-out name=%s id=%s attempt=%s: %s (its thread keeps its slot until it returns)",
                    task.name, task.activity_id, task.attempt + 1, error.split(": ", 1)[1])
        try:
            self._record(Attempt(task, running.definition, None, error, now - running.started, running.details),
                         None)  # its slot stays busy until the thread returns
        except Exception as exc:  # noqa: BLE001 - the lease runs out and another worker records it
            store.log_error(log, logging.ERROR, "activity-timeout-record-failed", exc, name=task.name,
                            id=task.activity_id)

    # -- recording ------------------------------------------------------------------

    def _record(self, attempt: Attempt, lease_to: str | None) -> lease_store.ActivityTask | None:
        """Record an attempt's end. Attempts of one shard ending while another
        is being recorded are recorded together next, in one transaction (a
        group commit: the first to come records at once; those arriving
        meanwhile wait for that, then go together). Returns the workflow's
        next activity when it was leased to ``lease_to`` (us)."""
        metrics.attempt_ended(attempt.task.name, attempt.duration_seconds, attempt.error is not None)
        if RECORD_BATCH <= 1:
            return self._record_alone(attempt, lease_to)
        mine = _Pending(attempt, lease_to)
        shard = attempt.task.shard
        with self._lock:
            lead = shard not in self._recording
            if not lead:
                mine.wake = threading.Event()
            self._pending.setdefault(shard, []).append(mine)
            self._recording.add(shard)
        if mine.wake is not None:
            mine.wake.wait()  # recorded by the leader, or made the next leader
        if not mine.done:
            self._lead(shard)
        if mine.error is not None:
            raise mine.error
        return mine.leased

    def _lead(self, shard: str) -> None:
        """Record the shard's waiting attempts (this thread's first, at most
        one per workflow, up to RECORD_BATCH), then hand the lead on."""
        with self._lock:
            queue = self._pending.get(shard, [])
            batch: list[_Pending] = []
            rest: list[_Pending] = []
            workflows: set[Any] = set()
            for pending in queue:
                wid = pending.attempt.task.workflow_id
                if len(batch) < RECORD_BATCH and wid not in workflows:
                    batch.append(pending)
                    workflows.add(wid)
                else:
                    rest.append(pending)
            self._pending[shard] = rest
        try:
            self._record_batch(batch)
        finally:
            with self._lock:
                rest = self._pending.get(shard, [])
                if rest:
                    assert rest[0].wake is not None
                    rest[0].wake.set()  # it leads the next round
                else:
                    self._recording.discard(shard)
                    self._pending.pop(shard, None)

    def _record_batch(self, batch: list[_Pending]) -> None:
        if len(batch) > 1:
            ordered = sorted(batch, key=lambda p: str(p.attempt.task.workflow_id))  # one lock order: no deadlocks
            try:
                with self.pool.connection() as conn, store.StepTransaction(conn) as tx:
                    results = self.steps.record_attempts(tx, [(p.attempt, p.lease_to) for p in ordered], self.owner)
            except Exception as exc:  # noqa: BLE001 - each on its own then, with its retries
                log.warning("record-batch-failed attempts=%s error=%s: one at a time", len(batch), type(exc).__name__)
            else:
                for pending, (leased, news) in zip(ordered, results):
                    self.on_news(news)
                    pending.finish(leased[0] if leased else None)
                return
        for pending in batch:
            try:
                pending.finish(self._record_alone(pending.attempt, pending.lease_to))
            except BaseException as exc:  # noqa: BLE001 - handed to the attempt's own thread
                pending.finish(None, exc)

    def _record_alone(self, attempt: Attempt, lease_to: str | None) -> lease_store.ActivityTask | None:
        """Record one attempt's end, retrying while the database is away; if
        that fails for too long the lease runs out and another worker records
        it as lost."""
        deadline = time.monotonic() + RECORD_RETRY_SECONDS
        delay = 0.1
        while True:
            try:
                with self.pool.connection() as conn, store.StepTransaction(conn) as tx:
                    leased, news = self.steps.record_attempt(tx, attempt, self.owner, lease_to)
                self.on_news(news)
                return leased[0] if leased else None
            except store.TRANSIENT_ERRORS as exc:
                if time.monotonic() > deadline or self.immediate:
                    raise
                log.warning("activity-record-retry name=%s error=%s", attempt.task.name, type(exc).__name__)
                time.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_SECONDS)

    # -- stopping -------------------------------------------------------------------

    def shutdown(self, graceful_timeout: float) -> bool:
        """Stop: with a ``graceful_timeout`` > 0 let running attempts finish
        within it. Returns whether attempts are still running."""
        if graceful_timeout > 0 and not self.immediate:
            deadline = time.monotonic() + graceful_timeout
            while self.free_slots() < self.concurrency and time.monotonic() < deadline:
                time.sleep(0.05)
        self._executor.shutdown(wait=False)
        self._recorders.shutdown(wait=False, cancel_futures=True)
        if self._loop is not None and self._loop_thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop_thread.join(5.0)
            if not self._loop_thread.is_alive():
                for task in asyncio.all_tasks(self._loop):
                    task.cancel()
                self._loop.close()
        with self._watch_cond:
            self._watch_stop = True
            self._watch_cond.notify()
        return self.free_slots() < self.concurrency


def _details(data: str | None) -> Any:
    return None if data is None else codec.decode(data)
