"""The replay cursor: runs workflow code against its recorded history.

Replay does no I/O. The worker loads the history and the unconsumed signals,
calls ``replay``, and writes the commands it returns in its transaction.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Sequence, TypeVar
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
    status: str  # running | completed | failed
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
    """Handed to workflow code; each call takes the next sequence number."""

    workflow_id: UUID
    workflow_name: str
    tenant_id: UUID
    _steps: dict[int, history.Step]
    _signals: dict[str, list[PendingSignal]]
    _db_now: datetime
    _patches: set[str] = field(default_factory=set)
    _last_step: int = 0  # the last step the history records
    commands: list[Command] = field(default_factory=list)
    _seq: int = 0
    _suspended: Suspend | None = None
    _diverged: NonDeterminismError | None = None

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

    def _suspend(self, waiting_for: str) -> Suspend:
        self._suspended = Suspend(waiting_for)
        return self._suspended

    def activity(self, act: ActivityDefinition[Any, T], inp: Any = None) -> T:
        """Run ``act`` (at least once) and return its output, or raise
        ``ActivityFailed`` once its retries are spent."""
        if not isinstance(act, ActivityDefinition):
            raise InvalidInput(f"ctx.activity() takes an @flows.activity, not {act!r}")
        step = self._next("activity", act.name)
        if step is None:
            data = codec.encode(inp, f"input of activity {act.name}")
            self.commands.append(ScheduleActivity(self._seq, act, uuid6.uuid7(), data))
            raise self._suspend(f"activity:{act.name}")
        if not step.done:
            raise self._suspend(f"activity:{act.name}")
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
        queue = self._signals.get(name)
        if not queue:
            raise self._suspend(f"signal:{name}")
        signal = queue.pop(0)
        self.commands.append(ConsumeSignal(self._seq, signal))
        return codec.decode(signal.payload, type)

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` on a durable timer, measured by the database clock."""
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds >= 0:
            raise InvalidInput(f"sleep needs a number of seconds >= 0, got {seconds!r}")
        step = self._next("timer", "")
        if step is None:
            fire_at = self._db_now + timedelta(seconds=seconds)
            self.commands.append(StartTimer(self._seq, uuid6.uuid7(), fire_at, float(seconds)))
            raise self._suspend("timer")
        if not step.done:
            raise self._suspend("timer")

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
        if patch_id in self._patches:
            return True
        if self._seq < self._last_step:  # replaying steps recorded without the patch
            return False
        self._patches.add(patch_id)
        self.commands.append(RecordEvent(self._seq, history.Patched(patch_id)))
        return True

    def _record(self, event: msgspec.Struct) -> None:
        self.commands.append(RecordEvent(self._seq, event))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


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
) -> Outcome:
    """Run the workflow from the top against ``events``; never raises for
    anything the workflow code does."""
    pending: dict[str, list[PendingSignal]] = {}
    for signal in signals:
        pending.setdefault(signal.name, []).append(signal)
    try:
        folded = history.fold_steps(events)
    except Exception as exc:  # a row this code cannot read: fail loudly, not forever
        return Outcome([], "failed", 0, error=f"unreadable history: {_describe(exc)}")
    steps = folded.steps
    ctx = WorkflowContext(workflow_id, workflow_name, tenant_id, steps, pending, db_now, set(folded.patches),
                          max(steps, default=0))
    try:
        inp = codec.decode(input, definition.input_type)
        result = definition.fn(ctx, inp)
    except Suspend:
        pass
    except BaseException as exc:  # noqa: BLE001 - workflow code may raise anything
        if isinstance(exc, (KeyboardInterrupt, SystemExit, ReplayOverBudget)):
            raise
        if ctx._diverged is None and ctx._suspended is None:
            return Outcome(ctx.commands, "failed", ctx._seq, error=_describe(exc))
    else:
        if ctx._diverged is None and ctx._suspended is None:
            later = [s for s in steps if s > ctx._seq]
            if later:
                error = NonDeterminismError(
                    f"the workflow returned after step {ctx._seq}, but history records step {max(later)}"
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
