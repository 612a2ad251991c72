"""Turning a replay into the writes of its step.

A worker's transaction locks a workflow (claiming its task, or recording an
activity attempt's end), replays it here against its history, and writes
what the new step recorded in one statement (``store.record_step``). This
module owns that middle: which version of the code replays, what each
command becomes, and how a step the database refuses fails its workflow
alone instead of stalling its shard.
"""

from __future__ import annotations

import ctypes
import logging
import random
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Callable, Iterator

import msgspec
import psycopg
import uuid6

from flows import codec, history, sharding, store
from flows.context import (
    ConsumeSignal,
    Outcome,
    PendingSignal,
    RecordEvent,
    ScheduleActivity,
    StartTimer,
    replay,
)
from flows.definitions import DEFAULT_RETRY, ActivityDefinition, WorkflowDefinition
from flows.errors import ReplayOverBudget

log = logging.getLogger("flows.worker")

# A lease outlives its attempt's timeout by this much, so the worker running
# the attempt records the timeout itself before another worker takes the
# task for lost.
LEASE_GRACE_SECONDS = 5.0


def lease_seconds(definition: ActivityDefinition[Any, Any] | None) -> float:
    """How long a delivery of this activity holds its task: its timeout (or
    heartbeat timeout, when shorter), plus the grace."""
    if definition is None:
        return 300.0 + LEASE_GRACE_SECONDS
    first = definition.timeout_seconds
    if definition.heartbeat_timeout_seconds is not None:
        first = min(first, definition.heartbeat_timeout_seconds)
    return first + LEASE_GRACE_SECONDS


class ReplayBudget:
    """Bounds how long one replay may run while its transaction holds the
    workflow row: past ``seconds``, ReplayOverBudget is raised in the
    replaying thread (between two bytecodes: a replay blocked in C, which
    workflow code should never be, is ended by the server's
    idle_in_transaction_session_timeout instead). One thread watches all
    replays; it sleeps while none runs."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._running: dict[int, float] = {}  # thread id -> deadline (time.monotonic())
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopped = False

    @contextmanager
    def watch(self) -> Iterator[None]:
        if self.seconds <= 0:
            yield
            return
        tid = threading.get_ident()
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="flows-replay-budget", daemon=True)
                self._thread.start()
            self._running[tid] = time.monotonic() + self.seconds
            if len(self._running) == 1:
                self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._running.pop(tid, None)

    def _loop(self) -> None:
        with self._cond:
            while not self._stopped:
                now = time.monotonic()
                for tid, deadline in list(self._running.items()):
                    if deadline <= now:
                        del self._running[tid]  # raised once; the thread's own exit finds it gone
                        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(tid),
                                                                   ctypes.py_object(ReplayOverBudget))
                wait = min(self._running.values(), default=None)
                self._cond.wait(None if wait is None else max(0.0, wait - now))

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()


@dataclass
class News:
    """Work a step made due, for this worker's own wake-ups when no other
    worker serves the shard (instead of a NOTIFY): activity tasks due now,
    activity retries due in ``retries_in`` seconds and timers in
    ``timers_in`` seconds (by the database clock)."""

    shard: str
    activities: bool = False
    retries_in: list[float] = field(default_factory=list)
    timers_in: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Attempt:
    """How an activity attempt ended, to be recorded: ``output`` (JSON) or
    ``error``, how long it ran, and its last heartbeat details (JSON)."""

    task: store.ActivityTask
    definition: ActivityDefinition[Any, Any] | None
    output: bytes | None = None
    error: str | None = None
    duration_seconds: float | None = None
    details: bytes | None = None


class StepWriter:
    """Replays locked workflows with the code a worker has, and turns what
    each replay decided into a ``store.Step``.

    ``alone()`` says whether no other worker serves the worker's shards:
    then work a step makes due is returned as ``News`` for the worker's own
    wake-ups instead of a NOTIFY (which costs every listening backend a
    transaction)."""

    def __init__(
        self,
        workflows: dict[tuple[str, int], WorkflowDefinition[Any, Any]],
        activities: dict[str, ActivityDefinition[Any, Any]],
        alone: Callable[[], bool],
        budget: ReplayBudget,
    ) -> None:
        self.workflows = workflows
        self.activities = activities
        self.alone = alone
        self.budget = budget

    # -- replays --------------------------------------------------------------

    def advance(
        self, tx: store.StepTransaction, state: store.ReplayState, lease_to: str | None,
        ended: store.ActivityEnd | None = None, recorded: tuple[int, msgspec.Struct] | None = None,
    ) -> tuple[list[store.ActivityTask], News | None]:
        """Replay a locked workflow and write what the new step recorded; an
        activity it schedules is leased to ``lease_to`` (and returned, with a
        copy of the history and signals) when set. ``ended`` is the activity
        attempt this transaction records and ``recorded`` its event: replayed
        from memory, written with the replay's own."""
        wf = state.workflow
        step = store.Step(wf.name, wf.id, wf.tenant_id, wf.version, "running", wf.sequence_num, activity=ended)
        if recorded is not None:
            step.events.append(store.event(*recorded))
            if ended is not None and ended.output is not None:  # workflows.activity_results
                step.results[str(recorded[0])] = ended.output
        # What the replay reads: the stored history and the event recorded
        # here; with the step's new events after it, the worker's copy.
        events = list(state.events or []) + [(e.seq, e.kind, e.data) for e in step.events]
        recorded_events = len(step.events)
        definition = self.workflows.get((sharding.base_name(wf.name), wf.version))
        if definition is None:  # claims only take versions we run; an activity's end may still get here
            outcome = Outcome([], "failed", wf.sequence_num, error=(
                f"NonDeterminismError: no code for version {wf.version} of workflow {sharding.base_name(wf.name)}"
                " in this worker"))
        else:
            with self.budget.watch():
                outcome = replay(
                    definition, workflow_id=wf.id, workflow_name=wf.name, tenant_id=wf.tenant_id, input=wf.input,
                    events=events, signals=[PendingSignal(i, n, p) for i, n, p in state.signals or []],
                    db_now=state.now,
                )
        step.status, step.seq = outcome.status, outcome.last_seq
        leased, news = self._apply(step, outcome, lease_to, state.now)
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
        self, step: store.Step, outcome: Outcome, lease_to: str | None, db_now: datetime
    ) -> tuple[list[store.ActivityTask], News | None]:
        """Turn a replay's commands into the step's writes; return the
        activities leased to ``lease_to`` and the news for our wake-ups."""
        shard, wid, tenant = step.shard, step.workflow_id, step.tenant_id
        news = News(shard)
        leased: list[store.ActivityTask] = []
        for cmd in outcome.commands:
            if isinstance(cmd, ScheduleActivity):
                act = cmd.activity
                owner = lease_to if act.name in self.activities else None
                task_id = uuid6.uuid7()
                step.activities.append(store.NewActivity(
                    cmd.activity_id, task_id, act.name, cmd.seq, msgspec.Raw(cmd.input), act.retry.max_attempts,
                    lease_seconds(self.activities.get(act.name, act)), owner,
                ))
                step.events.append(store.event(
                    cmd.seq, history.ActivityScheduled(act.name, cmd.activity_id, msgspec.Raw(cmd.input))))
                if owner is None:
                    news.activities = True
                else:
                    leased.append(store.ActivityTask(
                        shard, task_id, wid, tenant, cmd.activity_id, act.name, cmd.seq, cmd.input, 0, token=1))
            elif isinstance(cmd, ConsumeSignal):
                sig = cmd.signal
                step.signals.append(store.ConsumedSignal(sig.id, cmd.seq))
                step.events.append(store.event(
                    cmd.seq, history.SignalReceived(sig.name, sig.id, msgspec.Raw(sig.payload or b"null"))))
            elif isinstance(cmd, StartTimer):
                step.timers.append(store.NewTimer(cmd.timer_id, uuid6.uuid7(), cmd.seq, cmd.fire_at))
                step.events.append(store.event(cmd.seq, history.TimerStarted(cmd.timer_id, cmd.fire_at, cmd.seconds)))
                news.timers_in.append((cmd.fire_at - db_now).total_seconds())
            elif isinstance(cmd, RecordEvent):
                step.events.append(store.event(cmd.seq, cmd.event))
        if outcome.status == "running":
            step.waiting_for = outcome.waiting_for
        else:
            self._end(step, outcome.status, outcome.output, outcome.error)
        if not news.activities and not news.timers_in:
            return leased, None
        if self.alone():
            return leased, news
        step.wake_channel = sharding.channel(shard)
        step.wake_work = (
            store.ANY_WORK if news.activities and news.timers_in
            else store.ACTIVITY_WORK if news.activities else store.REPLAY_WORK
        )
        return leased, None

    @staticmethod
    def _end(step: store.Step, status: str, output: bytes | None, error: str | None) -> None:
        if status == "failed":
            log.warning("workflow-failed shard=%s id=%s error=%s", step.shard, step.workflow_id, error)
            step.error = codec.text(error or "")
            step.dlq_id = uuid6.uuid7()
            step.end_event = store.event(0, history.WorkflowFailed(step.error))
        else:
            step.output = msgspec.Raw(output or b"null")
            step.end_event = store.event(0, history.WorkflowCompleted(step.output))
        step.done_channel = sharding.channel(step.shard, "flows-done")

    # -- activity attempts ------------------------------------------------------

    def record_attempt(
        self, tx: store.StepTransaction, attempt: Attempt, owner: str, lease_to: str | None
    ) -> tuple[list[store.ActivityTask], News | None]:
        """Record how an attempt ended, if its delivery still holds the lease:
        a completion or a last failure replays the workflow in this same
        transaction; a failure with attempts left queues the next attempt
        after the retry policy's delay. Returns the activity the replay
        leased to ``lease_to``, if any, and the news for our wake-ups."""
        task = attempt.task
        state = store.lock_activity(tx, task, owner)
        if state is None:
            log.info("activity-result-discarded name=%s id=%s attempt=%s: this delivery no longer holds the lease",
                     task.name, task.activity_id, task.attempt + 1)
            return [], None
        if state.workflow.status != "running":
            return [], None
        seq, name = task.sequence_num, task.name
        details = None if attempt.details is None else msgspec.Raw(attempt.details)
        recorded: tuple[int, msgspec.Struct]
        if attempt.error is None:
            assert attempt.output is not None
            output = msgspec.Raw(attempt.output)
            ended = store.ActivityEnd(task.activity_id, "completed", task.attempt, output=output, details=details)
            recorded = (seq, history.ActivityCompleted(name, output, task.attempt, attempt.duration_seconds))
        else:
            error = codec.text(attempt.error)
            retry = attempt.definition.retry if attempt.definition is not None else DEFAULT_RETRY
            failures = task.attempt + 1
            if failures < retry.max_attempts:
                wf = state.workflow
                delay = retry.delay_seconds(failures, random.random)
                event = store.event(seq, history.ActivityRetrying(
                    name, task.attempt, error, delay, attempt.duration_seconds))
                step = store.Step(
                    wf.name, wf.id, wf.tenant_id, wf.version, None, wf.sequence_num,
                    retry=store.Retry(task.activity_id, failures, error, delay, uuid6.uuid7(), name,
                                      lease_seconds(attempt.definition), event, details),
                )
                alone = self.alone()
                if not alone:
                    step.wake_channel, step.wake_work = sharding.channel(wf.name), store.ACTIVITY_WORK
                store.record_step(tx, step)
                return [], News(wf.name, retries_in=[delay]) if alone else None
            ended = store.ActivityEnd(task.activity_id, "failed", task.attempt, error=error, details=details)
            recorded = (seq, history.ActivityFailed(name, error, failures, attempt.duration_seconds))
        return self.advance(tx, state, lease_to, ended, recorded)

    # -- steps the database refuses -------------------------------------------------

    def fail(self, conn: Any, shard: str, workflow_id: Any, error: str) -> bool:
        """End a running workflow as failed, with a dead-letter row, in a
        transaction of its own: for a step that cannot be recorded (a value
        the database refuses, or an error that repeats), so the workflow
        fails alone instead of being retried in place for ever. False if it
        was not running (any more)."""
        with store.StepTransaction(conn) as tx:
            found = store.lock_workflow(tx, shard, workflow_id)
            if found is None or found[1] != "running":
                return False
            tenant, _, version, seq = found
            step = store.Step(shard, workflow_id, tenant, version, "failed", seq)
            self._end(step, "failed", None, error)
            store.record_step(tx, step)
        return True


def refused_by_database(exc: BaseException) -> bool:
    """A step the database refuses for what it holds, not for its state:
    data exceptions (SQLSTATE class 22) and integrity violations (23).
    Retrying it in place would fail the same way for ever."""
    return isinstance(exc, psycopg.Error) and (exc.sqlstate or "")[:2] in ("22", "23")
