"""Keeping workflows in memory between their steps.

A replay runs a workflow's code from the top, so each step costs what the
whole history does: a loop of 10,000 activities would replay 10,000 steps to
take its last one. A worker remembers the workflows whose steps it wrote:
for a short history, the history itself (the next step replays it without
reading it again); for a long one, the workflow's code, parked in a thread
of its own where it waits, resumed with just the events written since.

What a worker remembers is checked against the workflow row (updated_at and
last_event, the "stamp" each step writes) under the row's lock before use:
another worker's step, an older release's, or a cancel makes it stale, and
the step replays from the whole history instead. A step that fails drops
the workflow from memory.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Sequence

from flows import context
from flows.context import Outcome, PendingSignal, WorkflowContext
from flows.definitions import WorkflowDefinition
from flows.errors import ReplayOverBudget
from flows.threads import start_thread

log = logging.getLogger("flows.worker")

# A run with at least this many history events is kept as parked code rather
# than as its history (and its claims read only the new events).
PARK_MIN_EVENTS = int(os.environ.get("FLOWS_PARK_MIN_EVENTS", "100"))
# How much a worker keeps in memory, in bytes of history (estimated), and in
# workflows; the least recently used go first.
CACHE_BYTES = int(os.environ.get("FLOWS_REPLAY_CACHE_BYTES", str(256 * 1024 * 1024)))
CACHE_ENTRIES = int(os.environ.get("FLOWS_REPLAY_CACHE_ENTRIES", "2000"))
# Each parked workflow holds a thread: its stack is reserved whatever the
# code uses, so the cache's byte budget counts it for every parked entry.
PARKED_STACK_BYTES = 512 * 1024
_EXTRA_SECONDS = 5.0  # how much longer than the replay budget a caller waits for parked code


class _Abandoned(BaseException):
    """Raised in parked code that is forgotten: its thread ends."""


_BUDGET_EXCEEDED = object()


class Parked:
    """A workflow's code running in a thread of its own, parked wherever it
    waits. ``start`` runs it from the top against its history; each
    ``resume`` folds in the events written since and runs it on to where it
    waits next. Exactly one of the two threads runs at a time."""

    def __init__(self, definition: WorkflowDefinition[Any, Any], ctx: WorkflowContext, input: str | bytes | None,
                 budget: Any) -> None:
        self.definition = definition
        self.ctx = ctx
        self.input = input
        self.budget = budget
        self._cond = threading.Condition()
        self._code_runs = False
        self._abandoned = False
        self._result: Outcome | object | None = None
        self._thread: threading.Thread | None = None
        ctx._parker = self._park

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._abandoned

    def start(self) -> Outcome:
        with self._cond:
            self._code_runs = True
        self._thread = start_thread(self._main, "flows-parked", PARKED_STACK_BYTES)
        return self._await_park()

    def resume(self, events: Sequence[tuple[int, str, Any]], signals: list[PendingSignal], db_now: datetime) -> Outcome:
        """Bring the history up to date and let the code run on."""
        ctx = self.ctx
        ctx._fold.add(events)
        ctx._signals = context.pending(signals)
        ctx._db_now = db_now
        ctx.commands = []
        with self._cond:
            self._code_runs = True
            self._cond.notify_all()
        return self._await_park()

    def record(self, events: Sequence[tuple[int, str, Any]]) -> None:
        """The events the step just written recorded (the code's own)."""
        self.ctx._fold.add(events)

    def abandon(self) -> None:
        """Forget it: its thread ends (at once if it is parked)."""
        with self._cond:
            self._abandoned = True
            self._code_runs = True
            self._cond.notify_all()

    # -- the caller's side ---------------------------------------------------

    def _await_park(self) -> Outcome:
        wait = self.budget.seconds + _EXTRA_SECONDS if self.budget.seconds > 0 else None
        with self._cond:
            if not self._cond.wait_for(lambda: not self._code_runs, wait):
                self._abandoned = True  # stuck in C, beyond the budget's reach: let it go
                raise ReplayOverBudget()
            result, self._result = self._result, None
        if result is _BUDGET_EXCEEDED:
            raise ReplayOverBudget()
        assert isinstance(result, Outcome)
        return result

    # -- the code's side -----------------------------------------------------

    def _hand_back(self, result: Outcome | object) -> None:
        with self._cond:
            self._result = result
            self._code_runs = False
            self._cond.notify_all()

    def _park(self, waiting_for: str) -> None:
        """ctx._wait_until: wait here until resumed (or abandoned)."""
        ctx = self.ctx
        self.budget.disarm()
        self._hand_back(Outcome(ctx.commands, "running", ctx._seq, waiting_for=waiting_for))
        with self._cond:
            self._cond.wait_for(lambda: self._code_runs)
            if self._abandoned:
                raise _Abandoned()
        self.budget.arm()

    def _main(self) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._code_runs)
        self.budget.arm()
        try:
            outcome: Outcome | object = context.run_code(self.definition, self.ctx, self.input)
        except _Abandoned:
            return
        except ReplayOverBudget:
            outcome = _BUDGET_EXCEEDED
        except BaseException:  # noqa: BLE001 - KeyboardInterrupt and the like: the caller replays instead
            log.exception("parked-workflow-crashed id=%s", self.ctx.workflow_id)
            outcome = _BUDGET_EXCEEDED
        finally:
            self.budget.disarm()
        self._abandoned = True  # it ended: nothing to resume
        self._hand_back(outcome)


@dataclass
class Memory:
    """What a worker remembers of one workflow after writing a step of it:
    the stamp that step left on its row, and either the run's history
    (``events``) or its ``parked`` code; ``size``: estimated bytes."""

    stamp: tuple[datetime, int]
    step_base: int
    events: list[tuple[int, str, Any]] | None = None
    parked: Parked | None = None
    size: int = 0
    run_events: int = 0  # how many events the run has

    @property
    def footprint(self) -> int:
        """What keeping it costs: its history's bytes, and a parked thread's stack."""
        return self.size + (PARKED_STACK_BYTES if self.parked is not None else 0)

    def forget(self) -> None:
        if self.parked is not None:
            self.parked.abandon()


@dataclass
class ReplayCache:
    """The workflows a worker remembers, least recently used first out,
    within ``max_bytes`` (history and parked threads' stacks) and ``max_entries``. ``take`` hands an entry to one
    step (removing it), ``put`` keeps it again after the step committed."""

    max_bytes: int = CACHE_BYTES
    max_entries: int = CACHE_ENTRIES
    _entries: OrderedDict[tuple[str, Any], Memory] = field(default_factory=OrderedDict)
    _bytes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0 and self.max_bytes > 0

    def stamp(self, key: tuple[str, Any]) -> tuple[datetime, int] | None:
        with self._lock:
            memory = self._entries.get(key)
            return None if memory is None else memory.stamp

    def take(self, key: tuple[str, Any]) -> Memory | None:
        with self._lock:
            memory = self._entries.pop(key, None)
            if memory is not None:
                self._bytes -= memory.footprint
            return memory

    def put(self, key: tuple[str, Any], memory: Memory) -> None:
        if not self.enabled:
            memory.forget()
            return
        evicted: list[Memory] = []
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.footprint
                evicted.append(old)
            self._entries[key] = memory
            self._bytes += memory.footprint
            while self._entries and (len(self._entries) > self.max_entries or self._bytes > self.max_bytes):
                _, gone = self._entries.popitem(last=False)
                self._bytes -= gone.footprint
                evicted.append(gone)
        for gone in evicted:
            gone.forget()

    def clear(self) -> None:
        with self._lock:
            entries, self._entries, self._bytes = list(self._entries.values()), OrderedDict(), 0
        for memory in entries:
            memory.forget()

    def __len__(self) -> int:
        return len(self._entries)
