"""What ``history_events`` holds: one frozen Struct per event type, and the
fold of a workflow's events into the steps a replay checks against.

Every field added later needs a default, so old rows still decode.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable
from uuid import UUID

import msgspec


class WorkflowStarted(msgspec.Struct, frozen=True):
    version: int = 1
    run: int = 1


class ActivityScheduled(msgspec.Struct, frozen=True):
    name: str
    activity_id: UUID
    input: msgspec.Raw = msgspec.Raw(b"null")


class ActivityRetrying(msgspec.Struct, frozen=True):
    """A failed attempt with attempts left. ``attempt`` counts from 0 (the
    number of attempts that failed before it); ``duration_seconds`` is how
    long it ran, as its worker measured (None: it never reported back)."""

    name: str
    attempt: int
    error: str
    retry_in_seconds: float
    duration_seconds: float | None = None


class ActivityCompleted(msgspec.Struct, frozen=True):
    name: str
    output: msgspec.Raw = msgspec.Raw(b"null")
    attempt: int = 0
    duration_seconds: float | None = None


class ActivityFailed(msgspec.Struct, frozen=True):
    name: str
    error: str
    attempts: int = 1
    duration_seconds: float | None = None


class SignalReceived(msgspec.Struct, frozen=True):
    signal_name: str
    signal_id: UUID
    payload: msgspec.Raw = msgspec.Raw(b"null")


class SignalAwaited(msgspec.Struct, frozen=True):
    """A wait for a signal with a timeout: the timer ``timer_id`` races the
    signal, and whichever is recorded first at the step resolves it."""

    signal_name: str
    timer_id: UUID
    fire_at: datetime
    seconds: float


class ChildScheduled(msgspec.Struct, frozen=True):
    """A child workflow asked for: ``name`` its base name."""

    name: str
    workflow_id: UUID
    input: msgspec.Raw = msgspec.Raw(b"null")
    version: int = 1
    parent_close: str = "cancel"


class ChildCompleted(msgspec.Struct, frozen=True):
    workflow_id: UUID
    output: msgspec.Raw = msgspec.Raw(b"null")


class ChildFailed(msgspec.Struct, frozen=True):
    """The child ended ``failed`` or ``cancelled`` (or could not start)."""

    workflow_id: UUID
    status: str = "failed"
    error: str | None = None


class TimerStarted(msgspec.Struct, frozen=True):
    timer_id: UUID
    fire_at: datetime
    seconds: float


class TimerFired(msgspec.Struct, frozen=True):
    timer_id: UUID


class RandomGenerated(msgspec.Struct, frozen=True):
    random_bytes: list[int]
    num_bytes: int


class TimeRecorded(msgspec.Struct, frozen=True):
    now: datetime


class UuidGenerated(msgspec.Struct, frozen=True):
    uuid: UUID


class WorkflowCompleted(msgspec.Struct, frozen=True):
    output: msgspec.Raw = msgspec.Raw(b"null")


class WorkflowFailed(msgspec.Struct, frozen=True):
    error: str


class WorkflowCancelled(msgspec.Struct, frozen=True):
    reason: str = "cancelled"


class WorkflowContinuedAsNew(msgspec.Struct, frozen=True):
    """The run ended by ``ctx.continue_as_new``; the next starts with ``input``."""

    input: msgspec.Raw = msgspec.Raw(b"null")


class Patched(msgspec.Struct, frozen=True):
    """``ctx.patched(patch_id)`` took the new code path in this run. Not a
    step: code that no longer asks about the patch replays past it."""

    patch_id: str


EVENT_TYPES: dict[str, type[msgspec.Struct]] = {
    "workflow_started": WorkflowStarted,
    "activity_scheduled": ActivityScheduled,
    "activity_retrying": ActivityRetrying,
    "activity_completed": ActivityCompleted,
    "activity_failed": ActivityFailed,
    "signal_received": SignalReceived,
    "signal_awaited": SignalAwaited,
    "child_scheduled": ChildScheduled,
    "child_completed": ChildCompleted,
    "child_failed": ChildFailed,
    "timer_started": TimerStarted,
    "timer_fired": TimerFired,
    "random_generated": RandomGenerated,
    "time_recorded": TimeRecorded,
    "uuid_generated": UuidGenerated,
    "workflow_completed": WorkflowCompleted,
    "workflow_failed": WorkflowFailed,
    "workflow_cancelled": WorkflowCancelled,
    "patched": Patched,
    "workflow_continued_as_new": WorkflowContinuedAsNew,
}
EVENT_NAMES: dict[type[msgspec.Struct], str] = {v: k for k, v in EVENT_TYPES.items()}
_decoders = {name: msgspec.json.Decoder(cls) for name, cls in EVENT_TYPES.items()}


def event_type(event: msgspec.Struct) -> str:
    return EVENT_NAMES[type(event)]


def decode_event(kind: str, data: str | bytes) -> msgspec.Struct:
    return _decoders[kind].decode(data)


@dataclass
class Step:
    """One sequence number as recorded: its kind and name (checked on replay),
    whether it is resolved, and its result."""

    kind: str
    name: str
    done: bool = False
    value: Any = None  # the resolving event (or the recording one for instant steps)
    order: int = 0  # where the resolving event stands in the run's history (the order things ended)


class Fold:
    """A run's history folded for replay: its steps by number, the patches it
    took, and how many events it has. ``add`` folds more events in, so a
    workflow kept in memory is brought up to date without folding its whole
    history again.

    A resolving event may come before its step's opening one (a worker of
    an older release numbered events by step during a rolling deploy): it
    is kept until the opener arrives. The first resolving event of a step
    wins (a signal and its timeout's timer race). Event types this code
    does not know (written by a newer release) are skipped."""

    def __init__(self) -> None:
        self.steps: dict[int, Step] = {}
        self.patches: set[str] = set()
        self.awaited: dict[int, SignalAwaited] = {}  # the signal waits with a timeout, by step
        self.events = 0
        self.last_step = 0
        self._early: dict[int, tuple[msgspec.Struct, int]] = {}

    def add(self, rows: Iterable[tuple[int, str, str | bytes]]) -> Fold:
        """Fold ``(step, event_type, event_data)`` rows, in the order written."""
        steps, early = self.steps, self._early
        for seq, kind, data in rows:
            self.events += 1
            order = self.events
            decoder = _decoders.get(kind)
            if decoder is None:
                continue
            event = decoder.decode(data)
            opened = steps.get(seq)
            if isinstance(event, SignalReceived) and opened is not None and opened.kind == "signal":
                if not opened.done:  # a signal wait with a timeout, resolved by the signal
                    opened.done, opened.value, opened.order = True, event, order
                continue
            if isinstance(event, SignalAwaited):
                self.awaited[seq] = event
            opener = _OPENERS.get(type(event))
            if opener is not None:
                step = steps[seq] = opener(event)
                if step.done:
                    step.order = order
                if seq > self.last_step:
                    self.last_step = seq
                resolved = early.pop(seq, None)
                if resolved is not None:
                    step.done, (step.value, step.order) = True, resolved
            elif isinstance(event, _RESOLVERS):
                if seq in steps:
                    if not steps[seq].done:
                        steps[seq].done, steps[seq].value, steps[seq].order = True, event, order
                else:
                    early.setdefault(seq, (event, order))
            elif isinstance(event, Patched):
                self.patches.add(event.patch_id)
        return self


_OPENERS = {
    ActivityScheduled: lambda e: Step("activity", e.name),
    SignalReceived: lambda e: Step("signal", e.signal_name, True, e),
    SignalAwaited: lambda e: Step("signal", e.signal_name),
    ChildScheduled: lambda e: Step("child", e.name, False, e),
    TimerStarted: lambda e: Step("timer", ""),
    RandomGenerated: lambda e: Step("random", "", True, e),
    TimeRecorded: lambda e: Step("time", "", True, e),
    UuidGenerated: lambda e: Step("uuid", "", True, e),
}
_RESOLVERS = (ActivityCompleted, ActivityFailed, TimerFired, ChildCompleted, ChildFailed)


def fold_steps(rows: Iterable[tuple[int, str, str | bytes]]) -> Fold:
    """Fold a run's ``(step, event_type, event_data)`` rows, in the order written."""
    return Fold().add(rows)
