"""The replay cursor: runs workflow code against its recorded history.

Replay does no I/O. The worker loads the history and the unconsumed signals,
calls ``replay``, and writes the commands it returns in its transaction.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Generic, NoReturn, Sequence, TypeVar
from uuid import UUID, uuid5

import msgspec
import uuid6

from flows import codec, history
from flows.definitions import ActivityDefinition, WorkflowDefinition
from flows.errors import (
    ActivityCancelled,
    ActivityFailed,
    ChildWorkflowFailed,
    InvalidInput,
    NonDeterminismError,
    ReplayOverBudget,
    Suspend,
    Timeout,
)

T = TypeVar("T")
MAX_RANDOM_BYTES = 1024


@dataclass(frozen=True)
class PendingSignal:
    id: UUID
    name: str
    payload: str | bytes


@dataclass(frozen=True)
class ScheduleActivity:
    seq: int
    activity: ActivityDefinition[Any, Any]
    activity_id: UUID
    input: bytes


@dataclass(frozen=True)
class ConsumeSignal:
    seq: int
    signal: PendingSignal


@dataclass(frozen=True)
class RejectSignal:
    """A signal whose payload does not decode into what its wait expects:
    recorded as rejected (with ``reason``), while the wait goes on."""

    seq: int
    signal: PendingSignal
    reason: str


@dataclass(frozen=True)
class StartTimer:
    seq: int
    timer_id: UUID
    fire_at: datetime
    seconds: float


@dataclass(frozen=True)
class RecordEvent:
    seq: int
    event: msgspec.Struct


@dataclass(frozen=True)
class AwaitSignal:
    """A signal wait with a timeout: a timer that races the signal."""

    seq: int
    name: str
    timer_id: UUID
    fire_at: datetime
    seconds: float


@dataclass(frozen=True)
class CancelTimer:
    """The signal won: its timeout's timer goes."""

    seq: int
    timer_id: UUID


@dataclass(frozen=True)
class StartChild:
    seq: int
    workflow: WorkflowDefinition[Any, Any]
    workflow_id: UUID
    input: bytes
    parent_close: str


# wait_for_signal's default type: the one the workflow declares for the signal.
DECLARED: Any = object()

Command = ScheduleActivity | ConsumeSignal | RejectSignal | StartTimer | RecordEvent | AwaitSignal | CancelTimer | StartChild
PARENT_CLOSE_POLICIES = ("cancel", "abandon")


@dataclass
class Outcome:
    """What one replay decided: new commands, and where the workflow stands."""

    commands: list[Command]
    status: str  # running | completed | failed | continued (output: the next run's input)
    last_seq: int
    waiting_for: str | None = None
    output: bytes | None = None
    error: str | None = None


@dataclass
class ActivityContext:
    """What an activity attempt knows about itself.

    ``attempt`` counts from 1 (the first attempt). ``idempotency_key`` is
    the same for every attempt of one step: pass it to external services so
    a retried call has its effect once. ``last_heartbeat`` holds the details
    of the last ``heartbeat()`` of an earlier attempt (None if none), so a
    retry can resume where that one stopped."""

    workflow_id: UUID
    workflow_name: str
    tenant_id: UUID
    activity_id: UUID
    activity_name: str
    sequence_num: int
    attempt: int
    last_heartbeat: Any = None
    _beat: Callable[[Any], bool] | None = field(default=None, repr=False)
    _cancelled: bool = field(default=False, repr=False)

    @property
    def idempotency_key(self) -> str:
        return f"{self.workflow_id}:{self.sequence_num}"

    @property
    def is_cancelled(self) -> bool:
        """True once this attempt's result can no longer be recorded: it ran
        past its timeout, or its workflow ended, or another worker took it."""
        return self._cancelled

    def heartbeat(self, details: Any = None) -> None:
        """Say the attempt is alive, with ``details`` (any JSON value) for the
        next attempt should this one fail. With ``heartbeat_timeout`` set on
        the activity, an attempt that stops beating for that long is taken
        for lost and retried. Raises ``ActivityCancelled`` once the attempt
        is cancelled (see ``is_cancelled``): stop and let it propagate.
        Cheap to call often: beats reach the database at most a few times
        per heartbeat timeout."""
        if self._cancelled:
            raise ActivityCancelled(f"activity {self.activity_name} attempt {self.attempt} was cancelled")
        if self._beat is not None and not self._beat(details):
            self._cancelled = True
            raise ActivityCancelled(f"activity {self.activity_name} attempt {self.attempt} was cancelled")


class Handle(Generic[T]):
    """A step started without waiting for it (``ctx.start_activity``,
    ``ctx.start_child``). ``result()`` waits for it; ``ctx.gather()`` waits
    for several."""

    def __init__(self, ctx: WorkflowContext, seq: int, kind: str, name: str, output_type: Any) -> None:
        self._ctx = ctx
        self.seq = seq
        self.kind = kind
        self.name = name
        self._output_type = output_type

    @property
    def waiting_for(self) -> str:
        return f"{self.kind}:{self.name}"

    def result(self) -> T:
        """The output, once the step has ended (the workflow waits until
        then); raises its failure (``ActivityFailed``, ``ChildWorkflowFailed``)."""
        step = self._ctx._wait_until(self.waiting_for, lambda: self._ctx._done_step(self.seq))
        return self._value(step)  # type: ignore[no-any-return]

    def _value(self, step: history.Step) -> Any:
        raise NotImplementedError


class ActivityHandle(Handle[T]):
    """An activity started with ``ctx.start_activity``."""

    def _value(self, step: history.Step) -> Any:
        if isinstance(step.value, history.ActivityFailed):
            raise ActivityFailed(self.name, step.value.error, step.value.attempts)
        return codec.decode(step.value.output, self._output_type)


class ChildHandle(Handle[T]):
    """A child workflow started with ``ctx.start_child``: ``workflow_name``
    (its base name) and ``workflow_id`` address it from outside (query,
    signal) like any workflow."""

    def __init__(self, ctx: WorkflowContext, seq: int, name: str, output_type: Any, workflow_id: UUID) -> None:
        super().__init__(ctx, seq, "child", name, output_type)
        self.workflow_name = name
        self.workflow_id = workflow_id

    def _value(self, step: history.Step) -> Any:
        if isinstance(step.value, history.ChildFailed):
            raise ChildWorkflowFailed(self.name, self.workflow_id, step.value.status, step.value.error)
        return codec.decode(step.value.output, self._output_type)


@dataclass
class WorkflowContext:
    """Handed to workflow code; each call takes the next sequence number.

    A call that must wait (an activity running, no signal yet, a timer
    pending) goes through ``_wait_until``: in a replay it suspends the code
    (an internal exception unwinds it; the next replay starts over), and in
    a workflow kept in memory (``flows.continuation``) it parks the code's
    thread until the worker brings the history up to date."""

    workflow_id: UUID
    workflow_name: str
    tenant_id: UUID
    _fold: history.Fold
    _signals: dict[str, list[PendingSignal]]
    _db_now: datetime
    _seq: int = 0  # the last step taken; a run's steps follow its step base
    commands: list[Command] = field(default_factory=list)
    _suspended: Suspend | None = None
    _diverged: NonDeterminismError | None = None
    _parker: Callable[[str], None] | None = None  # set while kept in memory
    _signal_types: Callable[[str], Any] | None = None  # the workflow's declared signal types

    @property
    def _steps(self) -> dict[int, history.Step]:
        return self._fold.steps

    @property
    def history_length(self) -> int:
        """How many history events this run has recorded so far: bounded by
        FLOWS_HISTORY_LIMIT; call ``continue_as_new`` well before it."""
        return self._fold.events

    def _next(self, kind: str, name: str) -> history.Step | None:
        self._seq += 1
        step = self._steps.get(self._seq)
        if step is not None and (step.kind, step.name) != (kind, name):
            recorded = f"{step.kind} {step.name!r}" if step.name else step.kind
            asked = f"{kind} {name!r}" if name else kind
            self._diverged = NonDeterminismError(
                f"step {self._seq}: history recorded {recorded}, the code now asks for {asked}"
            )
            raise self._diverged
        return step

    def _wait_until(self, waiting_for: str, ready: Callable[[], T | None]) -> T:
        """``ready()``'s value once it is not None; until then the workflow
        waits for ``waiting_for`` (suspended, or parked in memory)."""
        while True:
            value = ready()
            if value is not None:
                return value
            self._suspended = Suspend(waiting_for)
            if self._parker is None:
                raise self._suspended
            self._parker(waiting_for)
            self._suspended = None

    def _done_step(self, seq: int) -> history.Step | None:
        step = self._steps.get(seq)
        return step if step is not None and step.done else None

    def activity(self, act: ActivityDefinition[Any, T], inp: Any = None) -> T:
        """Run ``act`` (at least once) and return its output, or raise
        ``ActivityFailed`` once its retries are spent."""
        return self.start_activity(act, inp).result()

    def start_activity(self, act: ActivityDefinition[Any, T], inp: Any = None) -> ActivityHandle[T]:
        """Schedule ``act`` and return at once with a handle: several
        activities started before any is awaited run at the same time on the
        fleet, each with its own attempts and retries. Await them with
        ``handle.result()`` or ``ctx.gather()``."""
        if not isinstance(act, ActivityDefinition):
            raise InvalidInput(f"ctx.activity() takes an @flows.activity, not {act!r}")
        if self._next("activity", act.name) is None:
            data = codec.encode(inp, f"input of activity {act.name}")
            self.commands.append(ScheduleActivity(self._seq, act, uuid6.uuid7(), data))
        return ActivityHandle(self, self._seq, "activity", act.name, act.output_type)

    def child(
        self, wf: WorkflowDefinition[Any, T], inp: Any = None, *, workflow_id: object = None,
        parent_close: str = "cancel",
    ) -> T:
        """Run ``wf`` as a child workflow and return its output, or raise
        ``ChildWorkflowFailed`` if it fails or is cancelled. See ``start_child``."""
        return self.start_child(wf, inp, workflow_id=workflow_id, parent_close=parent_close).result()

    def start_child(
        self, wf: WorkflowDefinition[Any, T], inp: Any = None, *, workflow_id: object = None,
        parent_close: str = "cancel",
    ) -> ChildHandle[T]:
        """Start ``wf`` (the version given) as a child workflow and return a
        handle at once. The child is a workflow of its own, on its own shard:
        visible, queryable and signalable by its name and ``workflow_id``
        (by default derived from this workflow's id and step, so the start is
        idempotent across replays). Its end wakes this workflow.

        ``parent_close`` is what happens to the child when this workflow
        ends (completes, fails, is cancelled or times out) before it:
        ``"cancel"`` (the default) cancels it, ``"abandon"`` lets it run on.
        A run that continues as new leaves its children running."""
        if not isinstance(wf, WorkflowDefinition):
            raise InvalidInput(f"ctx.start_child() takes a @flows.workflow, not {wf!r}")
        if parent_close not in PARENT_CLOSE_POLICIES:
            raise InvalidInput(f"parent_close must be one of {PARENT_CLOSE_POLICIES}, got {parent_close!r}")
        step = self._next("child", wf.name)
        if step is not None:
            return ChildHandle(self, self._seq, wf.name, wf.output_type, step.value.workflow_id)
        if workflow_id is None:
            child_id = uuid5(self.workflow_id, f"child:{self._seq}")
        else:
            try:
                child_id = workflow_id if isinstance(workflow_id, UUID) else UUID(str(workflow_id))
            except ValueError:
                raise InvalidInput(f"workflow_id is not a UUID: {workflow_id!r}") from None
        data = codec.encode(inp, f"input of child workflow {wf.name}")
        codec.decode(data, wf.input_type)  # refuse input the child could not read
        self.commands.append(StartChild(self._seq, wf, child_id, data, parent_close))
        return ChildHandle(self, self._seq, wf.name, wf.output_type, child_id)

    def gather(self, *handles: Handle[Any], fail_fast: bool = False) -> list[Any]:
        """Wait for every handle and return their outputs, in the order given.

        If some failed, the failure recorded first is raised once all have
        ended; with ``fail_fast`` it is raised as soon as one has failed
        (the others go on; await or abandon them). Either way the same one
        on every replay, whichever order the steps ended in."""
        if not all(isinstance(h, Handle) and h._ctx is self for h in handles):
            raise InvalidInput("ctx.gather() takes handles from ctx.start_activity() or ctx.start_child()")
        while True:
            steps = [(h, self._steps.get(h.seq)) for h in handles]
            failed = sorted(((s.order, i) for i, (_, s) in enumerate(steps) if s is not None and s.done
                             and isinstance(s.value, (history.ActivityFailed, history.ChildFailed))))
            pending = [h for h, s in steps if s is None or not s.done]
            if failed and (fail_fast or not pending):
                handles[failed[0][1]].result()  # raises
            if not pending:
                return [h.result() for h in handles]
            left = len(pending)
            self._wait_until(",".join(h.waiting_for for h in pending),
                             lambda: True if sum(not (s := self._steps.get(h.seq)) or not s.done
                                                 for h in handles) < left else None)

    def wait_for_signal(self, name: str, type: Any = DECLARED, timeout: float | None = None) -> Any:
        """Return the payload of the oldest unconsumed signal ``name``, waiting
        for one to arrive if there is none yet, decoded into ``type`` (by
        default the type the workflow declares for it, else plain JSON).

        With ``timeout`` (seconds), a durable timer races the signal: if it
        fires first, ``flows.Timeout`` is raised. Whichever came first is
        recorded, so every replay takes the same branch; a signal that comes
        later stays for the next wait."""
        if not name or not isinstance(name, str) or len(name) > 200 or "\0" in name:
            raise InvalidInput(f"signal name must be a non-empty string of <= 200 chars without NUL, got {name!r}")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or not timeout >= 0):
            raise InvalidInput(f"timeout needs a number of seconds >= 0, got {timeout!r}")
        if type is DECLARED:
            declared = self._signal_types(name) if self._signal_types is not None else None
            type = Any if declared is None else declared
        step = self._next("signal", name)
        seq = self._seq
        if step is None and timeout is not None and not self._fitting_signal(seq, name, type):
            seconds = float(timeout)
            fire_at = self._db_now + timedelta(seconds=seconds)
            self.commands.append(AwaitSignal(seq, name, uuid6.uuid7(), fire_at, seconds))

        def ready() -> tuple[history.Step | PendingSignal] | None:
            recorded = self._done_step(seq)
            if recorded is not None:
                return (recorded,)
            if not self._fitting_signal(seq, name, type):
                return None
            return (self._signals[name].pop(0),)

        got = self._wait_until(f"signal:{name}", ready)[0]
        if isinstance(got, history.Step):
            if isinstance(got.value, history.TimerFired):
                awaited = self._fold.awaited.get(seq)
                raise Timeout(name, awaited.seconds if awaited is not None else float(timeout or 0))
            return codec.decode(got.value.payload, type)
        self.commands.append(ConsumeSignal(seq, got))
        awaited = self._fold.awaited.get(seq)
        if awaited is not None:
            self.commands.append(CancelTimer(seq, awaited.timer_id))
        return codec.decode(got.payload, type)

    def _fitting_signal(self, seq: int, name: str, type: Any) -> bool:
        """Whether the oldest pending signal ``name`` decodes into ``type``;
        those ahead of it that do not are rejected (a command each) and
        dropped from the queue, so the wait goes on for the next."""
        queue = self._signals.get(name)
        while queue:
            try:
                codec.decode(queue[0].payload, type)
                return True
            except InvalidInput as exc:
                self.commands.append(RejectSignal(seq, queue.pop(0), f"does not decode as {_type_name(type)}: {exc}"))
        return False

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` on a durable timer, measured by the database clock."""
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds >= 0:
            raise InvalidInput(f"sleep needs a number of seconds >= 0, got {seconds!r}")
        if self._next("timer", "") is None:
            fire_at = self._db_now + timedelta(seconds=seconds)
            self.commands.append(StartTimer(self._seq, uuid6.uuid7(), fire_at, float(seconds)))
        seq = self._seq
        self._wait_until("timer", lambda: self._done_step(seq))

    def random(self, n: int) -> bytes:
        """``n`` random bytes, drawn once and the same on every replay."""
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_RANDOM_BYTES:
            raise InvalidInput(f"random needs 1..{MAX_RANDOM_BYTES} bytes, got {n!r}")
        step = self._next("random", "")
        if step is not None:
            value = bytes(step.value.random_bytes)
            if len(value) != n:
                self._diverged = NonDeterminismError(
                    f"step {self._seq}: history recorded {len(value)} random bytes, the code now asks for {n}"
                )
                raise self._diverged
            return value
        value = os.urandom(n)
        self._record(history.RandomGenerated(list(value), n))
        return value

    def now(self) -> datetime:
        """The database's time when this step first ran (UTC, recorded)."""
        step = self._next("time", "")
        if step is not None:
            return step.value.now  # type: ignore[no-any-return]
        self._record(history.TimeRecorded(self._db_now))
        return self._db_now

    def uuid7(self) -> UUID:
        """A UUIDv7 drawn once and the same on every replay."""
        step = self._next("uuid", "")
        if step is not None:
            return step.value.uuid  # type: ignore[no-any-return]
        value = uuid6.uuid7()
        self._record(history.UuidGenerated(value))
        return value

    def patched(self, patch_id: str) -> bool:
        """Whether this run takes the code path of patch ``patch_id``.

        True for a run that reaches this point for the first time (recorded
        in its history), and on every later replay of it; False for a run
        recorded past this point before the patch existed, which must keep
        replaying the old path. So ``if ctx.patched("send-sms"): new() else:
        old()`` changes code under running workflows without a new version.
        Once no run from before the patch is in flight, retire it: keep only
        the new path and delete the call (the recorded markers are ignored)."""
        if not isinstance(patch_id, str) or not patch_id or len(patch_id) > 200 or "\0" in patch_id:
            raise InvalidInput(f"patch_id must be a non-empty string of <= 200 chars without NUL, got {patch_id!r}")
        if patch_id in self._fold.patches:
            return True
        if self._seq < self._fold.last_step:  # replaying steps recorded without the patch
            return False
        self._fold.patches.add(patch_id)
        self.commands.append(RecordEvent(self._seq, history.Patched(patch_id)))
        return True

    def continue_as_new(self, inp: Any = None) -> NoReturn:
        """End this run and start the workflow afresh, under the same id, with
        ``inp`` and an empty history: the way for a workflow that runs for
        ever (a daily timer, a polling loop) to keep each step cheap and stay
        under FLOWS_HISTORY_LIMIT. Signals not yet consumed carry over;
        ``query``, ``result`` and ``send_signal`` keep working with the id;
        the earlier runs' history stays readable until pruned. Never returns."""
        raise ContinueAsNew(codec.encode(inp, "input of continue_as_new"))

    def _record(self, event: msgspec.Struct) -> None:
        self.commands.append(RecordEvent(self._seq, event))


class ContinueAsNew(BaseException):
    """Internal: ``ctx.continue_as_new`` unwinding the workflow code."""

    def __init__(self, input: bytes) -> None:
        super().__init__("continue as new")
        self.input = input


def _type_name(target: Any) -> str:
    return str(getattr(target, "__name__", target))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def new_context(
    *, workflow_id: UUID, workflow_name: str, tenant_id: UUID, events: Sequence[tuple[int, str, str | bytes]],
    signals: list[PendingSignal], db_now: datetime, step_base: int = 0,
) -> WorkflowContext:
    """A context replaying ``events`` (a run's history: steps after
    ``step_base``); raises what an unreadable history raises."""
    return WorkflowContext(workflow_id, workflow_name, tenant_id, history.Fold().add(events), pending(signals),
                           db_now, step_base)


def pending(signals: Sequence[PendingSignal]) -> dict[str, list[PendingSignal]]:
    """Unconsumed signals by name, oldest first."""
    by_name: dict[str, list[PendingSignal]] = {}
    for signal in signals:
        by_name.setdefault(signal.name, []).append(signal)
    return by_name


def run_code(definition: WorkflowDefinition[Any, Any], ctx: WorkflowContext, input: str | bytes | None) -> Outcome:
    """Run workflow code with ``ctx`` until it returns, raises or waits, and
    say what it decided; never raises for anything the workflow code does
    (but ReplayOverBudget, KeyboardInterrupt and SystemExit pass)."""
    ctx._signal_types = definition.signal_type
    try:
        inp = codec.decode(input, definition.input_type)
        result = definition.fn(ctx, inp)
    except Suspend:
        pass
    except ContinueAsNew as cont:
        if ctx._diverged is None:
            return Outcome(ctx.commands, "continued", ctx._seq, output=cont.input)
    except BaseException as exc:  # noqa: BLE001 - workflow code may raise anything
        if isinstance(exc, (KeyboardInterrupt, SystemExit, ReplayOverBudget)):
            raise
        if ctx._diverged is None and ctx._suspended is None:
            return Outcome(ctx.commands, "failed", ctx._seq, error=_describe(exc))
    else:
        if ctx._diverged is None and ctx._suspended is None:
            if ctx._fold.last_step > ctx._seq:
                error = NonDeterminismError(
                    f"the workflow returned after step {ctx._seq}, but history records step {ctx._fold.last_step}"
                )
                return Outcome(ctx.commands, "failed", ctx._seq, error=_describe(error))
            try:
                output = codec.encode(result, "workflow output")
            except InvalidInput as exc:
                return Outcome(ctx.commands, "failed", ctx._seq, error=_describe(exc))
            return Outcome(ctx.commands, "completed", ctx._seq, output=output)
    if ctx._diverged is not None:  # even if the workflow caught it
        return Outcome([], "failed", ctx._seq, error=_describe(ctx._diverged))
    assert ctx._suspended is not None
    return Outcome(ctx.commands, "running", ctx._seq, waiting_for=ctx._suspended.waiting_for)


def replay(
    definition: WorkflowDefinition[Any, Any],
    *,
    workflow_id: UUID,
    workflow_name: str,
    tenant_id: UUID,
    input: str | bytes | None,
    events: Sequence[tuple[int, str, str | bytes]],
    signals: list[PendingSignal],
    db_now: datetime,
    step_base: int = 0,
) -> Outcome:
    """Run the workflow from the top against ``events`` (its run's history);
    never raises for anything the workflow code does."""
    try:
        ctx = new_context(workflow_id=workflow_id, workflow_name=workflow_name, tenant_id=tenant_id, events=events,
                          signals=signals, db_now=db_now, step_base=step_base)
    except Exception as exc:  # a row this code cannot read: fail loudly, not forever
        return Outcome([], "failed", step_base, error=f"unreadable history: {_describe(exc)}")
    return run_code(definition, ctx, input)
