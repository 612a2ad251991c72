"""Turning a replay into the writes of its step.

A worker's transaction locks a workflow (claiming its task, or recording an
activity attempt's end), replays it here against its history, and writes
what the new step recorded in one statement (``step_store.record_step``). This
module owns that middle: which version of the code replays, what each
command becomes, and how a step the database refuses fails its workflow
alone instead of stalling its shard.
"""

from __future__ import annotations

import ctypes
import logging
import os
import random
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Callable, Iterator

import msgspec
import uuid6

from flows import codec, context, history, metrics, sharding, store
from flows.context import (
    AwaitSignal,
    CancelTimer,
    ConsumeSignal,
    Outcome,
    PendingSignal,
    RecordEvent,
    RejectSignal,
    ScheduleActivity,
    StartChild,
    StartTimer,
    replay,
)
from flows.continuation import PARK_MIN_EVENTS, Memory, Parked, ReplayCache
from flows.definitions import DEFAULT_RETRY, ActivityDefinition, WorkflowDefinition
from flows.errors import ReplayOverBudget
from flows.store import client as client_store
from flows.store import leases as lease_store
from flows.store import steps as step_store

# The most history events one run of a workflow may have; a warning is logged
# as a run passes HISTORY_WARN_FRACTION of it. Each event is read back by
# replays: a workflow that runs for ever calls ctx.continue_as_new().
HISTORY_LIMIT = int(os.environ.get("FLOWS_HISTORY_LIMIT", "50000"))
HISTORY_WARN_FRACTION = 0.8

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
    replays, looking every quarter of the budget, so starting and ending a
    replay costs a lock and a dict entry, never a wake-up."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._running: dict[int, float] = {}  # thread id -> deadline (time.monotonic())
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @contextmanager
    def watch(self) -> Iterator[None]:
        """Bound the calling thread's replay inside the block."""
        self.arm()
        try:
            yield
        finally:
            self.disarm()

    def arm(self) -> None:
        """Start the calling thread's budget (parked code runs in pieces)."""
        if self.seconds <= 0:
            return
        with self._lock:
            self._running[threading.get_ident()] = time.monotonic() + self.seconds
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="flows-replay-budget", daemon=True)
                self._thread.start()

    def disarm(self) -> None:
        if self.seconds > 0:
            with self._lock:
                self._running.pop(threading.get_ident(), None)

    def _loop(self) -> None:
        while not self._stop.wait(max(0.05, self.seconds / 4)):
            now = time.monotonic()
            with self._lock:
                for tid, deadline in list(self._running.items()):
                    if deadline <= now:
                        del self._running[tid]  # raised once; the thread's own disarm finds it gone
                        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(tid),
                                                                   ctypes.py_object(ReplayOverBudget))

    def stop(self) -> None:
        self._stop.set()


@dataclass
class News:
    """Work a step made due, for this worker's own wake-ups when no other
    worker serves the shard (instead of a NOTIFY): activity tasks due now,
    activity retries due in ``retries_in`` seconds and timers in
    ``timers_in`` seconds (by the database clock)."""

    shard: str
    activities: bool = False
    replay_now: bool = False  # a workflow, child or parent task is due now (a run continued as new, a child)
    retries_in: list[float] = field(default_factory=list)
    timers_in: list[float] = field(default_factory=list)


@dataclass
class Prepared:
    """A step built but not yet written (see ``StepWriter.prepare``)."""

    key: tuple[str, Any]
    state: step_store.ReplayState
    step: step_store.Step
    outcome: Outcome
    memory: Memory | None
    parked: Parked | None
    new: list[tuple[int, str, Any]]
    history_now: list[tuple[int, str, Any]]
    first_own: int
    leased: list[lease_store.ActivityTask]
    news: News | None
    woke: metrics.Woke | None = None  # for the step's metrics
    rejected: list[RejectSignal] = field(default_factory=list)  # signals its waits could not take


@dataclass
class AttemptPlan:
    """How an attempt's end is recorded: ``step``, from a replay
    (``prepared``) or, for a failed attempt to retry, alone (with what the
    worker remembers of the workflow, to bring up to date after)."""

    step: step_store.Step
    key: tuple[str, Any]
    prepared: Prepared | None = None
    memory: Memory | None = None
    retry_events: list[tuple[int, str, Any]] = field(default_factory=list)
    news: News | None = None
    woke: metrics.Woke | None = None


@dataclass(frozen=True)
class Attempt:
    """How an activity attempt ended, to be recorded: ``output`` (JSON) or
    ``error``, how long it ran, and its last heartbeat details (JSON)."""

    task: lease_store.ActivityTask
    definition: ActivityDefinition[Any, Any] | None
    output: bytes | None = None
    error: str | None = None
    duration_seconds: float | None = None
    details: bytes | None = None
    ended: float = field(default_factory=time.monotonic)  # when it ended (made): its step is due from then


class StepWriter:
    """Replays locked workflows with the code a worker has, and turns what
    each replay decided into a ``step_store.Step``.

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
        cache: ReplayCache | None = None,
        park_min_events: int = PARK_MIN_EVENTS,
        shards: int = sharding.DEFAULT_SHARDS,
    ) -> None:
        self.workflows = workflows
        self.activities = activities
        self.alone = alone
        self.budget = budget
        self.shards = shards  # to place children on their shards
        self.cache = ReplayCache(0, 0) if cache is None else cache
        self.park_min_events = park_min_events

    @property
    def whole_below(self) -> int:
        """Claims send a run's history whole below this many events: above,
        only what was written since the latest step (this worker remembers
        the rest, or asks for it)."""
        return self.park_min_events if self.cache.enabled else 1 << 30

    # -- replays --------------------------------------------------------------

    def advance(
        self, tx: store.StepTransaction, state: step_store.ReplayState, lease_to: str | None,
        ended: step_store.ActivityEnd | None = None, recorded: tuple[int, msgspec.Struct] | None = None,
        slots: int = 1,
    ) -> tuple[list[lease_store.ActivityTask], News | None]:
        """Replay a locked workflow (from what this worker remembers of it
        when still current), write what the new step recorded and commit,
        then remember the workflow again. Of the activities the step
        schedules, up to ``slots`` (the slots the caller reserved) are leased
        to ``lease_to`` (and returned) when set, the others left queued for
        any worker. ``ended`` is the activity attempt this transaction
        records and ``recorded`` its event."""
        prepared = self.prepare(tx, state, lease_to, ended, recorded, slots)
        try:
            stamp = step_store.record_step(tx, prepared.step)
        except BaseException:
            self.abort(prepared)
            raise
        return self.finish(prepared, stamp)

    def prepare(
        self, tx: store.StepTransaction, state: step_store.ReplayState, lease_to: str | None,
        ended: step_store.ActivityEnd | None = None, recorded: tuple[int, msgspec.Struct] | None = None,
        slots: int = 1,
    ) -> Prepared:
        """Run a locked workflow's code to its next wait and build the step
        that records it, without writing it (``advance``, or several in one
        transaction: ``step_store.record_steps``). Then ``finish`` it once
        committed, or ``abort`` it."""
        wf = state.workflow
        key = (wf.name, wf.id)
        memory = self.cache.take(key)
        if memory is not None and (memory.stamp != state.stamp or memory.step_base != wf.run_step_base
                                   or (memory.parked is not None and not memory.parked.alive)):
            memory.forget()  # stale: another step (another worker's, a cancel) came between
            memory = None
        if memory is not None and memory.parked is not None and not state.tail:
            memory.forget()  # parked code takes only the events since its step, not a whole history
            memory = None
        if state.tail and memory is None:
            state = step_store.load_state(tx, wf.name, wf.id, state.now)
        parked = None if memory is None else memory.parked
        try:
            step = step_store.Step(wf.name, wf.id, wf.tenant_id, wf.version, "running", wf.sequence_num, activity=ended,
                              channel=sharding.channel(wf.name))
            if recorded is not None:
                step.events.append(step_store.event(*recorded))
            # The events this worker has not seen yet: the state's (a tail, or
            # the whole history) and the attempt's end recorded here. A whole
            # history replaces what is remembered (added to it, every event
            # would be folded twice).
            new = list(state.events or []) + [(e.seq, e.kind, e.data) for e in step.events]
            remembered = memory.events if memory is not None and memory.events is not None and state.tail else []
            outcome, parked, history_now = self._run(state, memory, parked, remembered + new)
            step.status, step.seq = outcome.status, outcome.last_seq
            first_own = len(step.events)
            leased, news = self._apply(step, outcome, lease_to if slots > 0 else None, state, slots)
            rejected = [cmd for cmd in outcome.commands if isinstance(cmd, RejectSignal)]
            if rejected:  # rare: a statement of its own, in the step's transaction
                reasons = [(cmd.signal.id, codec.text(cmd.reason)) for cmd in rejected]
                step_store.reject_signals(tx, wf.name, wf.id, reasons)
        except BaseException:
            if parked is not None:
                parked.abandon()  # its code ran on past what the database holds
            raise
        return Prepared(key, state, step, outcome, memory, parked, new, history_now, first_own, leased, news,
                        _woken(tx, state, step), rejected)

    def abort(self, prepared: Prepared) -> None:
        """The step was not written: forget the code that ran on for it."""
        if prepared.parked is not None:
            prepared.parked.abandon()

    def finish(
        self, prepared: Prepared, stamp: tuple[datetime, int]
    ) -> tuple[list[lease_store.ActivityTask], News | None]:
        """The step is committed with ``stamp``: remember the workflow (a
        running one) and return the activities leased and the news."""
        p, wf = prepared, prepared.state.workflow
        metrics.step_recorded(p.step.shard, p.step.status, p.woke)
        for rejected in p.rejected:
            log.warning("signal-rejected shard=%s id=%s signal=%s signal_id=%s", wf.name, wf.id,
                        rejected.signal.name, rejected.signal.id)
            metrics.signal_rejected(sharding.base_name(wf.name))
        own = [(e.seq, e.kind, e.data) for e in p.step.events[p.first_own:]]
        resumed = p.parked is not None and p.memory is not None and p.memory.parked is p.parked
        before = p.memory.run_events if resumed and p.memory is not None else len(p.history_now) - len(p.new)
        self._warn_near_limit(wf, before, before + len(p.new) + len(own))
        if p.outcome.status != "running" or not self.cache.enabled:
            if p.parked is not None:
                p.parked.abandon()
            return p.leased, p.news
        if p.parked is not None:  # its code holds the history; only the count and size are kept here
            p.parked.record(own)
            seen = (p.memory.run_events, p.memory.size) if resumed and p.memory is not None else (0, 0)
            added = (p.new if resumed else p.history_now) + own
            self.cache.put(p.key, Memory(stamp, wf.run_step_base, parked=p.parked, run_events=seen[0] + len(added),
                                         size=seen[1] + _bytes(added)))
        else:
            history = p.history_now + own
            self.cache.put(p.key, Memory(stamp, wf.run_step_base, events=history, run_events=len(history),
                                         size=_bytes(history)))
        return p.leased, p.news

    def _run(
        self, state: step_store.ReplayState, memory: Memory | None, parked: Parked | None,
        history_now: list[tuple[int, str, Any]],
    ) -> tuple[Outcome, Parked | None, list[tuple[int, str, Any]]]:
        """Run the workflow's code to its next wait: resume its parked code
        with the new events, or replay ``history_now`` (the run's history, as
        remembered plus new), parking the code when the history is long.
        Returns the outcome, the parked code (if any) and ``history_now``."""
        wf = state.workflow
        definition = self.workflows.get((sharding.base_name(wf.name), wf.version))
        signals = [PendingSignal(i, n, p) for i, n, p in state.signals or []]
        before = memory.run_events if parked is not None and memory is not None else 0
        run_events = before + len(history_now)
        if run_events > HISTORY_LIMIT:
            return self._over_limit(wf, run_events), parked, history_now
        if parked is not None:
            return parked.resume(history_now, signals, state.now), parked, history_now
        if definition is None:  # claims only take versions we run; an activity's end may still get here
            return Outcome([], "failed", wf.sequence_num, error=(
                f"NonDeterminismError: no code for version {wf.version} of workflow {sharding.base_name(wf.name)}"
                " in this worker")), None, history_now
        if self.cache.enabled and run_events >= self.park_min_events:
            try:
                ctx = context.new_context(workflow_id=wf.id, workflow_name=wf.name, tenant_id=wf.tenant_id,
                                          events=history_now, signals=signals, db_now=state.now,
                                          step_base=wf.run_step_base)
            except Exception as exc:  # a row this code cannot read: fail loudly, not forever
                return Outcome([], "failed", wf.run_step_base,
                               error=f"unreadable history: {type(exc).__name__}: {exc}"), None, history_now
            fresh = Parked(definition, ctx, wf.input, self.budget)
            return fresh.start(), fresh, history_now
        with self.budget.watch():
            outcome = replay(
                definition, workflow_id=wf.id, workflow_name=wf.name, tenant_id=wf.tenant_id, input=wf.input,
                events=history_now, signals=signals, db_now=state.now, step_base=wf.run_step_base,
            )
        return outcome, None, history_now

    @staticmethod
    def _over_limit(wf: client_store.WorkflowRow, run_events: int) -> Outcome:
        return Outcome([], "failed", wf.sequence_num, error=(
            f"HistoryLimitExceeded: this run has {run_events} history events, over the limit of {HISTORY_LIMIT}"
            " (FLOWS_HISTORY_LIMIT): call ctx.continue_as_new() well before it"))

    @staticmethod
    def _warn_near_limit(wf: client_store.WorkflowRow, before: int, after: int) -> None:
        warn_at = int(HISTORY_LIMIT * HISTORY_WARN_FRACTION)
        if before < warn_at <= after:
            log.warning("workflow-history-near-limit shard=%s id=%s events=%s limit=%s: call ctx.continue_as_new()",
                        wf.name, wf.id, after, HISTORY_LIMIT)

    def _apply(
        self, step: step_store.Step, outcome: Outcome, lease_to: str | None, state: step_store.ReplayState,
        slots: int = 1,
    ) -> tuple[list[lease_store.ActivityTask], News | None]:
        """Turn a replay's commands into the step's writes; return the
        activities leased to ``lease_to`` (``slots`` at most) and the news
        for our wake-ups."""
        shard, wid, tenant, db_now = step.shard, step.workflow_id, step.tenant_id, state.now
        news = News(shard)
        leased: list[lease_store.ActivityTask] = []
        for cmd in outcome.commands:
            if isinstance(cmd, ScheduleActivity):
                act = cmd.activity
                owner = lease_to if act.name in self.activities and len(leased) < slots else None
                task_id = uuid6.uuid7()
                step.activities.append(step_store.NewActivity(
                    cmd.activity_id, task_id, act.name, cmd.seq, msgspec.Raw(cmd.input), act.retry.max_attempts,
                    lease_seconds(self.activities.get(act.name, act)), owner,
                ))
                step.events.append(step_store.event(
                    cmd.seq, history.ActivityScheduled(act.name, cmd.activity_id, msgspec.Raw(cmd.input))))
                if owner is None:
                    news.activities = True
                else:
                    leased.append(lease_store.ActivityTask(
                        shard, task_id, wid, tenant, cmd.activity_id, act.name, cmd.seq, cmd.input, 0, token=1))
            elif isinstance(cmd, ConsumeSignal):
                sig = cmd.signal
                step.signals.append(step_store.ConsumedSignal(sig.id, cmd.seq))
                step.events.append(step_store.event(
                    cmd.seq, history.SignalReceived(sig.name, sig.id, msgspec.Raw(sig.payload or b"null"))))
            elif isinstance(cmd, StartTimer):
                step.timers.append(step_store.NewTimer(cmd.timer_id, uuid6.uuid7(), cmd.seq, cmd.fire_at))
                step.events.append(step_store.event(
                    cmd.seq, history.TimerStarted(cmd.timer_id, cmd.fire_at, cmd.seconds)))
                news.timers_in.append((cmd.fire_at - db_now).total_seconds())
            elif isinstance(cmd, AwaitSignal):
                step.timers.append(step_store.NewTimer(cmd.timer_id, uuid6.uuid7(), cmd.seq, cmd.fire_at))
                step.events.append(step_store.event(
                    cmd.seq, history.SignalAwaited(cmd.name, cmd.timer_id, cmd.fire_at, cmd.seconds)))
                news.timers_in.append((cmd.fire_at - db_now).total_seconds())
            elif isinstance(cmd, CancelTimer):
                step.cancel_timers.append(cmd.timer_id)
            elif isinstance(cmd, StartChild):
                child = cmd.workflow
                step.children.append(step_store.NewChild(
                    cmd.workflow_id, sharding.sharded_name(child.name, cmd.workflow_id, self.shards), child.version,
                    cmd.seq, msgspec.Raw(cmd.input), cmd.parent_close))
                step.events.append(step_store.event(cmd.seq, history.ChildScheduled(
                    child.name, cmd.workflow_id, msgspec.Raw(cmd.input), child.version, cmd.parent_close)))
                news.replay_now = True
            elif isinstance(cmd, RecordEvent):
                step.events.append(step_store.event(cmd.seq, cmd.event))
        if outcome.status == "running":
            step.waiting_for = outcome.waiting_for
        elif outcome.status == "continued":
            wf = state.workflow
            step.next_input = msgspec.Raw(outcome.output or b"null")
            step.next_task_id = uuid6.uuid7()
            step.end_event = step_store.event(0, history.WorkflowContinuedAsNew(step.next_input))
            step.start_event = step_store.event(0, history.WorkflowStarted(wf.version, wf.run + 1))
            news.replay_now = True
            log.info("workflow-continued-as-new shard=%s id=%s run=%s", shard, wid, wf.run + 1)
        else:
            self._end(step, outcome.status, outcome.output, outcome.error)
        if not news.activities and not news.timers_in and not news.replay_now:
            return leased, None
        if self.alone():
            return leased, news
        replays = news.replay_now or bool(news.timers_in)
        step.wake_channel = sharding.channel(shard)
        step.wake_work = (
            store.ANY_WORK if news.activities and replays else store.ACTIVITY_WORK if news.activities
            else store.REPLAY_WORK
        )
        return leased, None

    @staticmethod
    def _end(step: step_store.Step, status: str, output: bytes | None, error: str | None) -> None:
        if status == "failed":
            # The class only: the message is the workflow's own and may hold its data (it is in workflows.error).
            log.warning("workflow-failed shard=%s id=%s error=%s", step.shard, step.workflow_id,
                        (error or "").split(":", 1)[0])
            step.error = codec.text(error or "")
            step.dlq_id = uuid6.uuid7()
            step.end_event = step_store.event(0, history.WorkflowFailed(step.error))
        else:
            step.output = msgspec.Raw(output or b"null")
            step.end_event = step_store.event(0, history.WorkflowCompleted(step.output))
        step.done_channel = sharding.channel(step.shard, "flows-done")

    def time_out(self, tx: store.StepTransaction, state: step_store.ReplayState) -> None:
        """A workflow's execution timeout ran out (its claimed `timeout`
        task): it fails with "timed out", its pending work dropped."""
        prepared = self.prepare_time_out(state)
        self.finish(prepared, step_store.record_step(tx, prepared.step))

    def prepare_time_out(self, state: step_store.ReplayState) -> Prepared:
        """``time_out``'s step, not written yet (for a batch of claims)."""
        wf = state.workflow
        assert state.task is not None
        seconds = state.task[4]
        key = (wf.name, wf.id)
        memory = self.cache.take(key)
        if memory is not None:
            memory.forget()
        step = step_store.Step(wf.name, wf.id, wf.tenant_id, wf.version, "failed", wf.sequence_num,
                          channel=sharding.channel(wf.name))
        error = f"timed out: still running after its execution timeout of {seconds or 0:g}s"
        self._end(step, "failed", None, error)
        outcome = Outcome([], "failed", wf.sequence_num, error=error)
        return Prepared(key, state, step, outcome, None, None, [], [], 0, [], None)

    # -- activity attempts ------------------------------------------------------

    def record_attempt(
        self, tx: store.StepTransaction, attempt: Attempt, owner: str, lease_to: str | None
    ) -> tuple[list[lease_store.ActivityTask], News | None]:
        """Record how an attempt ended, if its delivery still holds the lease:
        a completion or a last failure replays the workflow in this same
        transaction; a failure with attempts left queues the next attempt
        after the retry policy's delay. Returns the activity the replay
        leased to ``lease_to``, if any, and the news for our wake-ups."""
        task = attempt.task
        state = step_store.lock_activity(tx, task, owner, self.cache.stamp((task.shard, task.workflow_id)))
        plan = self.plan_attempt(tx, attempt, state, lease_to)
        if plan is None:
            return [], None
        try:
            stamp = step_store.record_step(tx, plan.step)
        except BaseException:
            self.abort_attempt(plan)
            raise
        return self.finish_attempt(plan, stamp)

    def record_attempts(
        self, tx: store.StepTransaction, items: list[tuple[Attempt, str | None]], owner: str
    ) -> list[tuple[list[lease_store.ActivityTask], News | None]]:
        """``record_attempt`` for attempts of different workflows of one
        shard, in one transaction: their locks in one round trip, their
        steps and the commit in another."""
        tasks = [(a.task, self.cache.stamp((a.task.shard, a.task.workflow_id))) for a, _ in items]
        states = step_store.lock_activities(tx, tasks, owner)
        plans: list[AttemptPlan | None] = []
        try:
            for (attempt, lease_to), state in zip(items, states):
                plans.append(self.plan_attempt(tx, attempt, state, lease_to))
            steps = [p.step for p in plans if p is not None]
            stamps = iter(step_store.record_steps(tx, steps) if steps else [])
        except BaseException:
            for plan in plans:
                if plan is not None:
                    self.abort_attempt(plan)
            raise
        return [([], None) if plan is None else self.finish_attempt(plan, next(stamps)) for plan in plans]

    def plan_attempt(
        self, tx: store.StepTransaction, attempt: Attempt, state: step_store.ReplayState | None, lease_to: str | None
    ) -> AttemptPlan | None:
        """The step recording an attempt's end, given the workflow locked
        for it (``state``: None when the delivery lost its lease); None when
        there is nothing to record."""
        task = attempt.task
        key = (task.shard, task.workflow_id)
        if state is None:
            log.info("activity-result-discarded name=%s id=%s attempt=%s: this delivery no longer holds the lease",
                     task.name, task.activity_id, task.attempt + 1)
            return None
        if state.workflow.status != "running":
            return None
        seq, name = task.sequence_num, task.name
        details = None if attempt.details is None else msgspec.Raw(attempt.details)
        recorded: tuple[int, msgspec.Struct]
        if attempt.error is None:
            assert attempt.output is not None
            output = msgspec.Raw(attempt.output)
            ended = step_store.ActivityEnd(task.activity_id, "completed", task.attempt, seq, output=output,
                                           details=details)
            recorded = (seq, history.ActivityCompleted(name, output, task.attempt, attempt.duration_seconds))
        else:
            error = codec.text(attempt.error)
            retry = attempt.definition.retry if attempt.definition is not None else DEFAULT_RETRY
            failures = task.attempt + 1
            if failures < retry.max_attempts:
                wf = state.workflow
                delay = retry.delay_seconds(failures, random.random)
                event = step_store.event(seq, history.ActivityRetrying(
                    name, task.attempt, error, delay, attempt.duration_seconds))
                step = step_store.Step(
                    wf.name, wf.id, wf.tenant_id, wf.version, None, wf.sequence_num,
                    retry=step_store.Retry(task.activity_id, failures, error, delay, uuid6.uuid7(), name,
                                      lease_seconds(attempt.definition), event, details),
                )
                alone = self.alone()
                if not alone:
                    step.wake_channel, step.wake_work = sharding.channel(wf.name), store.ACTIVITY_WORK
                memory = self.cache.take(key)
                if memory is not None and not (state.tail and memory.stamp == state.stamp):
                    memory.forget()  # stale
                    memory = None
                new = list(state.events or []) + [(event.seq, event.kind, event.data)]
                return AttemptPlan(step, key, memory=memory, retry_events=new,
                                   news=News(wf.name, retries_in=[delay]) if alone else None,
                                   woke=metrics.attempt_woke(attempt.ended))
            ended = step_store.ActivityEnd(task.activity_id, "failed", task.attempt, seq, error=error, details=details)
            recorded = (seq, history.ActivityFailed(name, error, failures, attempt.duration_seconds))
        prepared = self.prepare(tx, state, lease_to, ended, recorded)
        prepared.woke = metrics.attempt_woke(attempt.ended)
        return AttemptPlan(prepared.step, key, prepared=prepared)

    def abort_attempt(self, plan: AttemptPlan) -> None:
        if plan.prepared is not None:
            self.abort(plan.prepared)
        elif plan.memory is not None:
            plan.memory.forget()

    def finish_attempt(
        self, plan: AttemptPlan, stamp: tuple[datetime, int]
    ) -> tuple[list[lease_store.ActivityTask], News | None]:
        if plan.prepared is not None:
            return self.finish(plan.prepared, stamp)
        metrics.step_recorded(plan.step.shard, plan.step.status, plan.woke)
        if plan.memory is not None:  # still current: it takes the retry's event
            self._remember_retry(plan.key, plan.memory, stamp, plan.retry_events)
        return [], plan.news

    def _remember_retry(self, key: tuple[str, Any], memory: Memory, stamp: tuple[datetime, int],
                        new: list[tuple[int, str, Any]]) -> None:
        """A failed attempt was recorded without a replay: what we remember
        of the workflow takes its event and the new stamp."""
        if memory.parked is not None:
            memory.parked.record(new)
        else:
            assert memory.events is not None
            memory.events.extend(new)
        memory.stamp, memory.run_events, memory.size = stamp, memory.run_events + len(new), memory.size + _bytes(new)
        self.cache.put(key, memory)

    # -- steps the database refuses -------------------------------------------------

    def fail(self, conn: Any, shard: str, workflow_id: Any, error: str) -> bool:
        """End a running workflow as failed, with a dead-letter row, in a
        transaction of its own: for a step that cannot be recorded (a value
        the database refuses, or an error that repeats), so the workflow
        fails alone instead of being retried in place for ever. False if it
        was not running (any more)."""
        with store.StepTransaction(conn) as tx:
            found = step_store.lock_workflow(tx, shard, workflow_id)
            if found is None or found[1] != "running":
                return False
            tenant, _, version, seq = found
            step = step_store.Step(shard, workflow_id, tenant, version, "failed", seq, channel=sharding.channel(shard))
            self._end(step, "failed", None, error)
            step_store.record_step(tx, step)
        metrics.step_recorded(step.shard, step.status, None)
        return True


def _bytes(rows: list[tuple[int, str, Any]]) -> int:
    """Roughly what remembering these history rows costs in memory."""
    return sum(len(data) + 120 for _, _, data in rows)


def _woken(tx: store.StepTransaction, state: step_store.ReplayState, step: step_store.Step) -> metrics.Woke | None:
    """What woke a claimed step, to time it once committed (None while
    metrics are off, and for a step that records an attempt's end). A
    signal's arrival and a timer's due time are read with the commit."""
    if not metrics.enabled() or state.task is None:
        return None
    wf = state.workflow
    if state.task[1] == "timer":
        return metrics.Woke("timer", tx.began, pending=step_store.woken_at(tx, wf.name, state.now, [], state.task[2]))
    if wf.last_event is None and wf.run == 1:
        return metrics.Woke("start", tx.began, (state.now - wf.created_at).total_seconds())
    if step.signals:
        return metrics.Woke("signal", tx.began,
                            pending=step_store.woken_at(tx, wf.name, state.now, [s.id for s in step.signals]))
    return metrics.Woke("claim", tx.began)
