"""The replay cursor: runs workflow code against its recorded history.

Replay does no I/O. The worker loads the history and the unconsumed signals,
calls ``replay``, and writes the commands it returns in its transaction.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, NoReturn, Sequence, TypeVar
from uuid import UUID

import msgspec
import uuid6

from flows import codec, history
from flows.definitions import ActivityDefinition, WorkflowDefinition
from flows.errors import ActivityCancelled, ActivityFailed, InvalidInput, NonDeterminismError, ReplayOverBudget, Suspend

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
class StartTimer:
    seq: int
    timer_id: UUID
    fire_at: datetime
    seconds: float


@dataclass(frozen=True)
class RecordEvent:
    seq: int
    event: msgspec.Struct


Command = ScheduleActivity | ConsumeSignal | StartTimer | RecordEvent


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
    _cancelled: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def idempotency_key(self) -> str:
        return f"{self.workflow_id}:{self.sequence_num}"

    @property
    def is_cancelled(self) -> bool:
        """True once this attempt's result can no longer be recorded: it ran
        past its timeout, or its workflow ended, or another worker took it."""
        return self._cancelled.is_set()

    def heartbeat(self, details: Any = None) -> None:
        """Say the attempt is alive, with ``details`` (any JSON value) for the
        next attempt should this one fail. With ``heartbeat_timeout`` set on
        the activity, an attempt that stops beating for that long is taken
        for lost and retried. Raises ``ActivityCancelled`` once the attempt
        is cancelled (see ``is_cancelled``): stop and let it propagate.
        Cheap to call often: beats reach the database at most a few times
        per heartbeat timeout."""
        if self._cancelled.is_set():
            raise ActivityCancelled(f"activity {self.activity_name} attempt {self.attempt} was cancelled")
        if self._beat is not None and not self._beat(details):
            self._cancelled.set()
            raise ActivityCancelled(f"activity {self.activity_name} attempt {self.attempt} was cancelled")


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
        if not isinstance(act, ActivityDefinition):
            raise InvalidInput(f"ctx.activity() takes an @flows.activity, not {act!r}")
        if self._next("activity", act.name) is None:
            data = codec.encode(inp, f"input of activity {act.name}")
            self.commands.append(ScheduleActivity(self._seq, act, uuid6.uuid7(), data))
        seq = self._seq
        step = self._wait_until(f"activity:{act.name}", lambda: self._done_step(seq))
        if isinstance(step.value, history.ActivityFailed):
            raise ActivityFailed(act.name, step.value.error, step.value.attempts)
        return codec.decode(step.value.output, act.output_type)  # type: ignore[no-any-return]

    def wait_for_signal(self, name: str, type: Any = Any) -> Any:
        """Return the payload of the oldest unconsumed signal ``name``, waiting
        for one to arrive if there is none yet."""
        if not name or not isinstance(name, str) or len(name) > 200 or "\0" in name:
            raise InvalidInput(f"signal name must be a non-empty string of <= 200 chars without NUL, got {name!r}")
        step = self._next("signal", name)
        if step is not None:
            return codec.decode(step.value.payload, type)
        seq = self._seq

        def oldest() -> PendingSignal | None:
            queue = self._signals.get(name)
            return queue.pop(0) if queue else None

        signal = self._wait_until(f"signal:{name}", oldest)
        self.commands.append(ConsumeSignal(seq, signal))
        return codec.decode(signal.payload, type)

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
