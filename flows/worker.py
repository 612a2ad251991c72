"""One worker process: listen, claim, run, commit.

NOTIFY is a hint and the claim query is the truth: the loop waits for a
notification, the earliest due task, or a stop, then claims until nothing is
left. Workflow and timer tasks are replayed in the claiming transaction;
activities run on a bounded thread pool under a lease, and the transaction
that records an activity's result also replays its workflow.
"""

from __future__ import annotations

import logging
import os
import random
import select
import signal
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Iterable

import msgspec
import uuid6

from flows import codec, history, sharding, store
from flows.context import (
    ActivityContext,
    ConsumeSignal,
    Outcome,
    PendingSignal,
    RecordEvent,
    ScheduleActivity,
    StartTimer,
    replay,
)
from flows.definitions import (
    DEFAULT_RETRY,
    ActivityDefinition,
    WorkflowDefinition,
    registered_activities,
    registered_workflows,
)
from flows.engine import Engine
from flows.errors import ConfigurationError

log = logging.getLogger("flows.worker")

# Longest the loop sleeps without news when heartbeats are off; with them on,
# each beat asks whether a task of ours is due and wakes the loop if so (a
# missed notification costs at most one beat), and the loop sleeps on.
SAFETY_POLL_SECONDS = float(os.environ.get("FLOWS_SAFETY_POLL_SECONDS", "30"))
BEATING_POLL_SECONDS = 3600.0
BUSY_RECHECK_SECONDS = 0.25  # due work held by another worker: look again soon
DUE_MARGIN_SECONDS = 0.001  # wake this long after a task falls due, never just before it
RECONNECT_MAX_SECONDS = 5.0
GRACEFUL_TIMEOUT_SECONDS = float(os.environ.get("FLOWS_GRACEFUL_TIMEOUT", "30"))
RECORD_RETRY_SECONDS = 60.0  # keep trying to record an activity result this long
# Threads claiming and replaying workflow and timer tasks: replays mostly wait
# on the database, so a few overlap well even under the GIL.
REPLAY_THREADS = int(os.environ.get("FLOWS_REPLAY_THREADS", "3"))
# How long a busy thread may keep the GIL from one that woke (Python's
# default is 5 ms): the loop woken by a notification or a due timer, or a
# replay thread whose answer arrived, waits that long at worst.
GIL_SWITCH_SECONDS = 0.0005
# How often a worker refreshes its worker_heartbeats row (0 = never): one
# query each time, so keep it at ~10 s or more; supervisors take a worker
# silent for FLOWS_STALE_SECONDS (default 30) for dead.
HEARTBEAT_SECONDS = float(os.environ.get("FLOWS_HEARTBEAT_SECONDS", "10"))
# Bytes on the wake pipe: why the loop should look again (any other byte, a
# signal number or a stop, is "pipe").
_DRY, _SLOT, _DUE = b"d", b"s", b"u"
_WAKE_REASONS = {
    _DRY[0]: "dry", _SLOT[0]: "slot", _DUE[0]: "due",
    # Our own steps' news, in place of a NOTIFY (see Worker._alone).
    store.REPLAY_WORK.encode()[0]: "notify-replay", store.ACTIVITY_WORK.encode()[0]: "notify-activity",
}
_HOST = socket.gethostname()


class Worker:
    """Runs the given workflows' and activities' tasks for some shards.

    ``shards=None`` serves every shard; otherwise the shard indices listed.
    ``concurrency`` bounds the activity attempts running at once."""

    def __init__(
        self,
        engine: Engine,
        workflows: Iterable[WorkflowDefinition[Any, Any]] | None = None,
        activities: Iterable[ActivityDefinition[Any, Any]] | None = None,
        shards: Iterable[int] | None = None,
        concurrency: int = 8,
        *,
        worker_id: str | None = None,
        graceful_timeout: float = GRACEFUL_TIMEOUT_SECONDS,
        watch_fd: int | None = None,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
    ) -> None:
        self.engine = engine
        wfs = list(registered_workflows() if workflows is None else workflows)
        acts = list(registered_activities() if activities is None else activities)
        if not wfs:
            raise ConfigurationError("a worker needs at least one workflow")
        self.workflows = {w.name: w for w in wfs}
        self.activities = {a.name: a for a in acts}
        indices = list(range(engine.shards)) if shards is None else sorted(set(shards))
        bad = [k for k in indices if not (isinstance(k, int) and 0 <= k < engine.shards)]
        if bad or not indices:
            raise ConfigurationError(f"shard indices must be within 0..{engine.shards - 1}, got {indices}")
        self.shard_indices = indices
        self.shards = [sharding.shard_name(w, k) for w in self.workflows for k in indices]
        if concurrency < 1:
            raise ConfigurationError("concurrency must be >= 1")
        self.concurrency = concurrency
        self.graceful_timeout = graceful_timeout
        self.watch_fd = watch_fd  # readable (EOF) = our supervisor is gone: stop
        self._worker_id = worker_id
        self._stopping = threading.Event()
        self._immediate = False
        self._in_flight = 0
        self._replayers = 0
        self._replay_failures = 0
        self._turn = 0  # which shard a workflow-task claim tries first
        self._rechecked = False  # looked again at once for work that seemed due
        # Unleased activity tasks may be due (a notification said so, or we
        # cannot know): cleared when a claim leaves slots unfilled, so a slot
        # freed after that claims nothing (the deadline still covers leases
        # that run out, which announce nothing).
        self._activity_news = True
        # No other registered worker serves our shards (learnt at each
        # heartbeat): work a step of ours makes due for "others" is ours, and
        # a byte on our wake pipe announces it instead of a NOTIFY, which
        # costs every listening backend of the database a transaction.
        self._alone = False
        self._was_alone = False
        self._deadline = 0.0  # time.monotonic() of the next look at the queue
        self._deadline_for_task = False  # the deadline is a task falling due, not the safety poll
        self._deadline_ignores_activities = False  # computed while every slot was busy
        self._in_flight_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._pool: Any = None
        self._listener: Any = None
        self.heartbeat_seconds = heartbeat_seconds
        self._safety_poll = SAFETY_POLL_SECONDS if heartbeat_seconds <= 0 else max(
            SAFETY_POLL_SECONDS, BEATING_POLL_SECONDS)
        self._beat_stop = threading.Event()
        self._beat_thread: threading.Thread | None = None

    @property
    def owner(self) -> str:
        """What leases carry: the supervisor releases a dead worker's by it."""
        return self._worker_id or f"{_HOST}:{os.getpid()}"

    # -- control ------------------------------------------------------------

    def stop(self, graceful: bool = True) -> None:
        """Stop claiming; with ``graceful`` let running activities finish
        (within ``graceful_timeout``), otherwise leave them to their leases."""
        self._immediate = self._immediate or not graceful
        self._stopping.set()
        self._wake()

    def _wake(self, why: bytes = b"\0") -> None:
        try:
            if why:
                os.write(self._wake_w, why)
        except BlockingIOError:  # the pipe is full: a wake-up is pending anyway
            pass

    def _install_signal_handlers(self) -> None:
        # Handlers only record; the loop acts (a byte on the wake pipe wakes it).
        if threading.current_thread() is not threading.main_thread():
            return
        signal.set_wakeup_fd(self._wake_w)

        def graceful(signum: int, frame: object) -> None:
            self._stopping.set()

        def immediate(signum: int, frame: object) -> None:
            self._immediate = True
            self._stopping.set()

        signal.signal(signal.SIGTERM, graceful)
        signal.signal(signal.SIGINT, graceful)
        signal.signal(signal.SIGQUIT, immediate)

    # -- the loop -----------------------------------------------------------

    def run(self) -> None:
        """Serve until ``stop()`` or SIGTERM/SIGINT (graceful) or SIGQUIT."""
        self._install_signal_handlers()
        sys.setswitchinterval(GIL_SWITCH_SECONDS)
        self._pool = store.open_pool(self.engine.dsn, min_size=1, max_size=self.concurrency + 2, name="flows-worker")
        executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix="flows-activity")
        self._replay_executor = ThreadPoolExecutor(REPLAY_THREADS, thread_name_prefix="flows-replay")
        log.info("worker-start owner=%s shards=%s concurrency=%s", self.owner, ",".join(self.shards), self.concurrency)
        self._start_heartbeat()
        backoff = 0.0
        woken_by = {"start"}
        try:
            while not self._stopping.is_set():
                try:
                    if self._listener is None:
                        self._connect_listener()
                        woken_by.add("start")  # claim at once: notifications may have been lost
                    timeout = self._drain(executor, woken_by)
                    backoff = 0.0
                except store.TRANSIENT_ERRORS as exc:
                    backoff = min(RECONNECT_MAX_SECONDS, backoff * 2 or 0.1)
                    log.warning("database-unavailable owner=%s error=%s retry_in=%.1fs", self.owner, exc, backoff)
                    self._close_listener()
                    timeout = backoff
                woken_by = self._wait(timeout)
        finally:
            self._shutdown(executor)

    def _connect_listener(self) -> None:
        conn = store.connect(self.engine.dsn, autocommit=True)
        try:
            store.listen(conn, {sharding.channel(s) for s in self.shards})
        except BaseException:
            conn.close()
            raise
        self._listener = conn

    def _close_listener(self) -> None:
        if self._listener is not None:
            try:
                self._listener.close()
            except Exception:  # noqa: BLE001 - it is broken already
                pass
            self._listener = None

    def _wait(self, timeout: float) -> set[str]:
        """Sleep until a notification, a wake-up byte or ``timeout``; say which:
        ``notify-replay`` or ``notify-activity`` (what the notifications
        announced), ``dry`` (the replay threads ran out of work), ``slot``
        (an activity slot freed), ``pipe`` (anything else: a signal, a stop)
        or ``timeout``."""
        fds = [self._wake_r]
        if self._listener is not None:
            fds.append(self._listener.fileno())
        if self.watch_fd is not None:
            fds.append(self.watch_fd)
        try:
            ready, _, _ = select.select(fds, [], [], max(0.0, timeout))
        except InterruptedError:
            return {"pipe"}
        woken_by = set() if ready else {"timeout"}
        if self._wake_r in ready:
            try:
                while data := os.read(self._wake_r, 512):
                    woken_by |= {_WAKE_REASONS.get(byte, "pipe") for byte in data}
            except BlockingIOError:
                pass
        if self.watch_fd is not None and self.watch_fd in ready:
            log.warning("supervisor-gone owner=%s: stopping", self.owner)
            self.watch_fd = None
            self.stop(graceful=True)
        if self._listener is not None and self._listener.fileno() in ready:
            try:
                for note in self._listener.notifies(timeout=0):
                    if note.payload != store.ACTIVITY_WORK:
                        woken_by.add("notify-replay")
                    if note.payload != store.REPLAY_WORK:
                        woken_by.add("notify-activity")
            except store.TRANSIENT_ERRORS as exc:
                log.warning("listen-connection-lost owner=%s error=%s", self.owner, exc)
                self._close_listener()
        return woken_by

    def _drain(self, executor: ThreadPoolExecutor, woken_by: set[str]) -> float:
        """Claim what is due: activities up to the free slots here, workflow
        and timer tasks on the replay threads. Return how long to sleep."""
        if woken_by == {"timeout"} and not self._deadline_for_task and self._time_to_next_due() > 0:
            return self._deadline - time.monotonic()  # a safety poll that found nothing: one query
        if woken_by & {"start", "notify-replay", "timeout", "due"}:
            self._start_replayer(executor, here=True)  # first: a signal's replay is what someone waits for
        if woken_by & {"start", "timeout", "notify-activity", "pipe", "due"}:
            self._activity_news = True  # activity tasks may wait unleased in the queue
        if self._activity_news and woken_by - {"notify-replay", "dry"}:
            self._claim_activities(executor)
        with self._in_flight_lock:
            if self._replayers:  # the last replay thread to run dry wakes the loop
                return self._safety_poll
        slot_freed = "slot" in woken_by and self._deadline_ignores_activities and self._free_slots() > 0
        if woken_by & {"start", "notify-replay", "notify-activity", "timeout", "dry", "due"} or slot_freed:
            if self._time_to_next_due() > 0:
                self._rechecked = False
            elif self._rechecked:  # due, yet still not ours: another worker holds it
                self._deadline = time.monotonic() + BUSY_RECHECK_SECONDS
            else:  # it may have fallen due just after our claim looked: look once more now
                self._rechecked = True
        return self._deadline - time.monotonic()

    def _time_to_next_due(self) -> float:
        """Seconds until the earliest task we could claim is due (by the
        database clock; activity tasks count only while a slot is free);
        sets the deadline, capped by the safety poll."""
        free = self._free_slots() > 0
        with self._pool.connection() as conn:
            due_in = store.next_due(conn, self.shards, activities=free)
        self._deadline_ignores_activities = not free
        self._deadline_for_task = due_in is not None and due_in < self._safety_poll  # then claim at once
        due_in = self._safety_poll if due_in is None else min(due_in, self._safety_poll)
        self._deadline = time.monotonic() + (due_in + DUE_MARGIN_SECONDS if due_in > 0 else 0.0)
        return due_in

    def _start_replayer(self, executor: ThreadPoolExecutor, here: bool = False) -> None:
        """One more replayer, up to REPLAY_THREADS: they ramp up while they
        find work and wind down as they run dry. With ``here`` and none
        running, the loop's own thread claims the first task and hands on to
        a replay thread only if another is due: the task a wake-up announced
        starts at once, without waking a thread and passing it the GIL."""
        with self._in_flight_lock:
            if self._replayers >= REPLAY_THREADS or self._stopping.is_set():
                return
            self._replayers += 1
            here = here and self._replayers == 1
        if here:
            self._replay_until_dry(executor, once=True)
            return
        try:
            self._replay_executor.submit(self._replay_until_dry, executor)
        except RuntimeError:  # shut down meanwhile: we are stopping
            with self._in_flight_lock:
                self._replayers -= 1

    def _replay_until_dry(self, executor: ThreadPoolExecutor, once: bool = False) -> None:
        """Claim and replay while tasks are due; with ``once`` (the loop's
        thread) one task, leaving the rest to a replay thread."""
        try:
            more = True
            while more and not self._stopping.is_set():
                claimed, more = self._run_workflow_task(executor)
                if not claimed:
                    break
                self._replay_failures = 0
                self._rechecked = False
                if more:
                    self._start_replayer(executor)
                if once:
                    break
        except Exception as exc:  # noqa: BLE001 - the database went away, or a bug: back off, then the loop retries
            self._replay_failures += 1
            level = logging.WARNING if isinstance(exc, store.TRANSIENT_ERRORS) else logging.ERROR
            log.log(level, "replay-failed owner=%s error=%s", self.owner, exc, exc_info=level == logging.ERROR)
            self._stopping.wait(min(RECONNECT_MAX_SECONDS, 0.05 * 2 ** self._replay_failures))
        finally:
            with self._in_flight_lock:
                self._replayers -= 1
                last = self._replayers == 0
            if last and not once:  # the loop looks for the next due task itself after running once
                self._wake(_DRY)

    def _free_slots(self) -> int:
        with self._in_flight_lock:
            return self.concurrency - self._in_flight

    def _reserve(self, wanted: int) -> int:
        """Take up to ``wanted`` free activity slots; return how many."""
        with self._in_flight_lock:
            got = max(0, min(wanted, self.concurrency - self._in_flight))
            self._in_flight += got
            return got

    def _release(self, unused: int) -> None:
        if unused <= 0:
            return
        with self._in_flight_lock:
            self._in_flight -= unused
        if self._deadline_ignores_activities:  # the loop slept as if no slot would free
            self._wake(_SLOT)

    def _claim_activities(self, executor: ThreadPoolExecutor) -> bool:
        if not self.activities:
            return False
        slots = self._reserve(self.concurrency)
        tasks: list[store.ActivityTask] = []
        try:
            if slots:
                with self._pool.connection() as conn:  # one statement: no BEGIN and COMMIT
                    tasks = store.claim_activity_tasks(conn, self.shards, self.owner, slots)
                self._start_attempts(executor, tasks)
                if len(tasks) < slots:  # the queue is empty: a freed slot need not look again
                    self._activity_news = False
        finally:
            self._release(slots - len(tasks))
        return bool(tasks)

    def _run_workflow_task(self, executor: ThreadPoolExecutor) -> tuple[bool, bool]:
        """Claim one workflow or timer task and replay its workflow, all in one
        transaction. With a slot free, the activity the replay schedules is
        leased to this worker and started here at once. Returns whether a
        task was claimed, and whether another was due when it was."""
        slot = 0 if self._stopping.is_set() else self._reserve(1)
        leased: list[store.ActivityTask] = []
        try:
            with self._pool.connection() as conn, store.StepTransaction(conn) as tx:
                state = store.claim_workflow_task(tx, self._shards_in_turn())
                if state is None:
                    return False, False
                more = state.task is None or state.task[3]
                if state.workflow.status != "running":
                    return True, more
                leased, news = self._advance(tx, state, self.owner if slot else None)
            self._wake(news)
            self._start_attempts(executor, leased)
            return True, more
        finally:
            self._release(slot - len(leased))

    def _shards_in_turn(self) -> list[str]:
        """Our shards, starting one further each call: no shard waits behind another."""
        with self._in_flight_lock:
            self._turn = (self._turn + 1) % len(self.shards)
            turn = self._turn
        return self.shards[turn:] + self.shards[:turn]

    def _start_attempts(self, executor: ThreadPoolExecutor, tasks: list[store.ActivityTask]) -> None:
        """Run attempts in slots already reserved for them."""
        for task in tasks:
            executor.submit(self._run_activity, task)

    # -- replay ---------------------------------------------------------------

    def _advance(
        self, tx: store.StepTransaction, state: store.ReplayState, lease_to: str | None,
        ended: store.ActivityEnd | None = None,
        recorded: tuple[int, msgspec.Struct] | None = None,
    ) -> tuple[list[store.ActivityTask], bytes]:
        """Replay a locked workflow and write what the new step recorded; an
        activity it schedules is leased to ``lease_to`` (and returned, with
        a copy of the history and signals) when set. ``ended`` is the
        activity attempt this transaction records, and ``recorded`` its
        event: replayed from memory, written with the replay's own. Also
        returns the news for our own wake pipe once this commits (work made
        due, when no other worker serves the shard; else a NOTIFY says it)."""
        wf = state.workflow
        definition = self.workflows[sharding.base_name(wf.name)]
        step = store.Step(wf.name, wf.id, wf.tenant_id, "running", wf.sequence_num, activity=ended)
        if recorded is not None:
            step.events.append(store.event(*recorded))
            if ended is not None and ended.output is not None:  # workflows.activity_results
                step.results[str(recorded[0])] = ended.output
        # What the replay reads, the stored history and the event recorded
        # here; with the step's new events after it, the worker's copy.
        events = list(state.events or []) + [(e.seq, e.kind, e.data) for e in step.events]
        recorded_events = len(step.events)
        if wf.version != definition.version:
            outcome = Outcome(
                [], "failed", wf.sequence_num,
                error=f"NonDeterminismError: workflow started as version {wf.version},"
                f" this worker runs version {definition.version}",
            )
        else:
            outcome = replay(
                definition, workflow_id=wf.id, workflow_name=wf.name, tenant_id=wf.tenant_id, input=wf.input,
                events=events, signals=[PendingSignal(i, n, p) for i, n, p in state.signals or []], db_now=state.now,
            )
        step.status, step.seq = outcome.status, outcome.last_seq
        leased, news = self._apply(step, outcome, lease_to)
        store.record_step(tx, step)
        if not leased or outcome.status != "running":
            return leased, news
        consumed = {c.id for c in step.signals}
        copy = store.Replayed(
            max(wf.sequence_num, outcome.last_seq),
            events + [(e.seq, e.kind, e.data) for e in step.events[recorded_events:]],
            [s for s in state.signals or [] if s[0] not in consumed],
        )
        return [replace(task, replayed=copy) for task in leased], news

    def _apply(
        self, step: store.Step, outcome: Outcome, lease_to: str | None
    ) -> tuple[list[store.ActivityTask], bytes]:
        """Turn a replay's commands into the step's writes; return the
        activities leased to ``lease_to`` and the news for our wake pipe."""
        shard, wid, tenant = step.shard, step.workflow_id, step.tenant_id
        wake: set[str] = set()  # the kinds of task this step makes due for others
        leased: list[store.ActivityTask] = []
        for cmd in outcome.commands:
            if isinstance(cmd, ScheduleActivity):
                act = cmd.activity
                owner = lease_to if act.name in self.activities else None
                task_id = uuid6.uuid7()
                step.activities.append(store.NewActivity(
                    cmd.activity_id, task_id, act.name, cmd.seq, msgspec.Raw(cmd.input), act.retry.max_attempts,
                    act.timeout_seconds, owner,
                ))
                step.events.append(store.event(
                    cmd.seq, history.ActivityScheduled(act.name, cmd.activity_id, msgspec.Raw(cmd.input))))
                if owner is None:
                    wake.add(store.ACTIVITY_WORK)
                else:
                    leased.append(store.ActivityTask(
                        shard, task_id, wid, tenant, cmd.activity_id, act.name, cmd.seq, cmd.input, 0))
            elif isinstance(cmd, ConsumeSignal):
                sig = cmd.signal
                step.signals.append(store.ConsumedSignal(sig.id, cmd.seq))
                step.events.append(store.event(
                    cmd.seq, history.SignalReceived(sig.name, sig.id, msgspec.Raw(sig.payload or b"null"))))
            elif isinstance(cmd, StartTimer):
                step.timers.append(store.NewTimer(cmd.timer_id, uuid6.uuid7(), cmd.seq, cmd.fire_at))
                step.events.append(store.event(cmd.seq, history.TimerStarted(cmd.timer_id, cmd.fire_at, cmd.seconds)))
                wake.add(store.REPLAY_WORK)
            elif isinstance(cmd, RecordEvent):
                step.events.append(store.event(cmd.seq, cmd.event))
        if outcome.status == "running":
            step.waiting_for = outcome.waiting_for
        else:
            if outcome.status == "failed":
                log.warning("workflow-failed shard=%s id=%s error=%s", shard, wid, outcome.error)
                step.error = outcome.error
                step.dlq_id = uuid6.uuid7()
                step.end_event = store.event(0, history.WorkflowFailed(outcome.error or ""))
            else:
                step.output = msgspec.Raw(outcome.output or b"null")
                step.end_event = store.event(0, history.WorkflowCompleted(step.output))
            step.done_channel = sharding.channel(shard, "flows-done")
        if wake and self._alone and not self._stopping.is_set():
            return leased, "".join(sorted(wake)).encode()
        if wake:
            step.wake_channel = sharding.channel(shard)
            step.wake_work = wake.pop() if len(wake) == 1 else store.ANY_WORK
        return leased, b""

    # -- activities -------------------------------------------------------------

    def _run_activity(self, task: store.ActivityTask) -> None:
        """Run an attempt and record it; then run the workflow's next
        activity in this same slot, if recording it leased one to us."""
        try:
            next_task: store.ActivityTask | None = task
            while next_task is not None and not self._immediate:
                next_task = self._attempt(next_task)
        except Exception:  # noqa: BLE001 - never lose the slot
            log.exception("activity-record-failed name=%s id=%s", task.name, task.activity_id)
        finally:
            with self._in_flight_lock:
                self._in_flight -= 1
            self._wake(_SLOT)

    def _attempt(self, task: store.ActivityTask) -> store.ActivityTask | None:
        definition = self.activities.get(task.name)
        if task.lost:  # deliveries that never reported back count as failed attempts
            attempt = task.attempt + task.lost
            retry = definition.retry if definition is not None else DEFAULT_RETRY
            if attempt >= retry.max_attempts:
                lost = (f"WorkerLost: the attempt's worker died or its lease ran out, {task.lost} time(s);"
                        f" no attempts left")
                log.warning("activity-attempts-lost name=%s id=%s lost=%s", task.name, task.activity_id, task.lost)
                return self._record(replace(task, attempt=attempt - 1), definition, None, lost)
            task = replace(task, attempt=attempt)
        ctx = ActivityContext(
            task.workflow_id, task.shard, task.tenant_id, task.activity_id, task.name, task.sequence_num,
            task.attempt,
        )
        output: bytes | None = None
        error: str | None = None
        try:
            if definition is None:
                raise ConfigurationError(f"activity {task.name!r} is not registered in this worker")
            result = definition.fn(ctx, codec.decode(task.input, definition.input_type))
            output = codec.encode(result, "activity result")
        except Exception as exc:  # noqa: BLE001 - an activity may raise anything
            error = f"{type(exc).__name__}: {exc}"
            log.info("activity-attempt-failed name=%s id=%s attempt=%s error=%s", task.name, task.activity_id,
                     task.attempt, error)
        return self._record(task, definition, output, error)

    def _record(
        self, task: store.ActivityTask, definition: ActivityDefinition[Any, Any] | None, output: bytes | None,
        error: str | None,
    ) -> store.ActivityTask | None:
        """Record an attempt's result, retrying while the database is away; if
        that fails for too long the lease runs out and the attempt is redone.
        Returns the workflow's next activity when it was leased to us."""
        deadline = time.monotonic() + RECORD_RETRY_SECONDS
        delay = 0.1
        while True:
            try:
                with self._pool.connection() as conn, store.StepTransaction(conn) as tx:
                    leased, news = self._record_once(tx, task, definition, output, error)
                self._wake(news)
                return leased[0] if leased else None
            except store.TRANSIENT_ERRORS as exc:
                if time.monotonic() > deadline or self._immediate:
                    raise
                log.warning("activity-record-retry name=%s error=%s", task.name, exc)
                time.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_SECONDS)

    def _record_once(
        self, tx: store.StepTransaction, task: store.ActivityTask, definition: ActivityDefinition[Any, Any] | None,
        output: bytes | None, error: str | None,
    ) -> tuple[list[store.ActivityTask], bytes]:
        shard, wid = task.shard, task.workflow_id
        state = store.lock_activity_step(tx, task, self.owner)
        if state is None:
            log.info("activity-lease-lost name=%s id=%s", task.name, task.activity_id)
            return [], b""
        if state.workflow.status != "running":
            return [], b""
        seq, name = task.sequence_num, task.name
        recorded: tuple[int, msgspec.Struct]
        if error is None:
            assert output is not None
            ended = store.ActivityEnd(task.activity_id, "completed", task.attempt, output=msgspec.Raw(output))
            recorded = (seq, history.ActivityCompleted(name, msgspec.Raw(output), task.attempt))
        else:
            retry = definition.retry if definition is not None else DEFAULT_RETRY
            failures = task.attempt + 1
            if failures < retry.max_attempts:
                lease = definition.timeout_seconds if definition is not None else 300.0
                store.retry_activity(
                    tx.conn, shard=shard, workflow_id=wid, tenant_id=task.tenant_id, activity_id=task.activity_id,
                    seq=seq, name=name, error=error, attempt=task.attempt,
                    delay_seconds=retry.delay_seconds(failures, random.random), lease_seconds=lease,
                    event_id=uuid6.uuid7(), task_id=uuid6.uuid7(),
                )
                return [], b""
            ended = store.ActivityEnd(task.activity_id, "failed", task.attempt, error=error)
            recorded = (seq, history.ActivityFailed(name, error, failures))
        lease_to = None if self._stopping.is_set() else self.owner
        return self._advance(tx, state, lease_to, ended, recorded)

    # -- heartbeat --------------------------------------------------------------

    def _start_heartbeat(self) -> None:
        """Keep a worker_heartbeats row fresh from a thread, so it beats on
        while the loop is busy or waiting for activities at shutdown. A
        supervisor that finds the row stale (this machine died) releases
        our leases. Best effort: a failed beat is retried at the next one."""
        if self.heartbeat_seconds > 0:
            self._beat_thread = threading.Thread(target=self._heartbeat_loop, name="flows-heartbeat", daemon=True)
            self._beat_thread.start()

    def _heartbeat_loop(self) -> None:
        registered = failing = False
        while True:
            try:
                with self._pool.connection() as conn:
                    beat = store.beat_worker(conn, self.owner, self.shards) if registered else None
                    if beat is None:
                        shared = store.register_worker(
                            conn, owner=self.owner, pid=os.getpid(), host=_HOST,
                            shard_group=",".join(map(str, self.shard_indices)), shards=self.shards,
                        )
                        registered = True
                    else:
                        shared, due = beat
                        if due:  # a notification may have been missed: the loop looks now
                            self._wake(_DUE)
                self._alone = not shared and not self._stopping.is_set()
                self._was_alone = self._was_alone or self._alone
                failing = False
            except Exception as exc:  # noqa: BLE001 - the loop reports the database; keep beating
                if not failing:
                    log.warning("heartbeat-failed owner=%s error=%s", self.owner, exc)
                failing = True
            if self._beat_stop.wait(self.heartbeat_seconds):
                return

    def _stop_heartbeat(self) -> None:
        if self._beat_thread is None:
            return
        self._beat_stop.set()
        self._beat_thread.join(5.0)
        try:
            with self._pool.connection(timeout=5.0) as conn:
                store.unregister_worker(conn, self.owner)
        except Exception as exc:  # noqa: BLE001 - a supervisor sweeps the stale row later
            log.warning("heartbeat-unregister-failed owner=%s error=%s", self.owner, exc)

    # -- shutdown ---------------------------------------------------------------

    def _shutdown(self, executor: ThreadPoolExecutor) -> None:
        self._replay_executor.shutdown(wait=not self._immediate, cancel_futures=True)
        if self._immediate:
            executor.shutdown(wait=False, cancel_futures=True)
        else:
            deadline = time.monotonic() + self.graceful_timeout
            while self._free_slots() < self.concurrency and time.monotonic() < deadline:
                time.sleep(0.05)
            executor.shutdown(wait=False, cancel_futures=True)
        if self._free_slots() < self.concurrency:  # attempts still running: let others redo them now
            try:
                with self._pool.connection() as conn, conn.transaction():
                    released = store.release_leases(conn, self.shards, self.owner)
                log.warning("worker-released-leases owner=%s count=%s", self.owner, released)
            except Exception as exc:  # noqa: BLE001 - best effort; leases expire anyway
                log.warning("worker-release-failed owner=%s error=%s", self.owner, exc)
        if self._was_alone:  # work we announced only to ourselves may be unclaimed: tell who serves these shards now
            try:
                with self._pool.connection(timeout=5.0) as conn:
                    store.notify(conn, self.shards)
            except Exception as exc:  # noqa: BLE001 - best effort; a worker claims all it finds at start
                log.warning("worker-handover-failed owner=%s error=%s", self.owner, exc)
        self._stop_heartbeat()
        self._close_listener()
        self._pool.close()
        if threading.current_thread() is threading.main_thread():
            signal.set_wakeup_fd(-1)
        log.info("worker-stop owner=%s", self.owner)
