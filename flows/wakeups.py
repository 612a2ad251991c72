"""When a worker looks at the queue again, shard by shard, and why it woke.

NOTIFY is a hint and the claim is the truth: a notification, a step of our
own, or a known due time marks a shard "look now"; each claim answers with
when the shard's next task falls due, which becomes that shard's deadline.
So a worker serving many shards claims only where work is, and sleeps until
the earliest deadline among them, with no polling.
"""

from __future__ import annotations

import enum
import itertools
import math
import os
import select
import threading
import time
from dataclasses import dataclass
from typing import Iterable

REPLAY, ACTIVITY = "w", "a"  # the NOTIFY payloads: workflow/timer tasks, activity tasks
NEVER = math.inf
BUSY_RECHECK_SECONDS = 0.25  # a task due but held by another worker: look again this soon


class Wake(enum.Enum):
    """Why the loop woke: the byte its waker wrote on the pipe."""

    SIGNAL = b"\0"  # a signal handler or stop(): look at the stop flag
    NEWS = b"n"  # work became due (our own step's news, or the heartbeat's safety net)
    SLOT = b"s"  # an activity slot freed
    DRY = b"d"  # the replay threads ran out of due shards


_BY_BYTE = {w.value[0]: w for w in Wake}


@dataclass
class Ticket:
    """A claim about to be made on ``shard``: its answer is learnt only if
    nothing newer was learnt or announced for the shard meanwhile."""

    kind: str
    shard: str
    number: int
    generation: int


@dataclass
class Survey:
    number: int
    generations: dict[str, dict[str, int]]


class Wakeups:
    """Each shard's next due time, for replays and for activities, as far as
    this worker knows: 0.0 = look now (announced, or not known yet), a
    ``time.monotonic()`` deadline, or NEVER (nothing queued). Notifications
    and our own steps announce; claims learn. Thread-safe: the loop, the
    replay threads, the activity slots and the heartbeat all use it."""

    def __init__(self, shards: Iterable[str]) -> None:
        self._lock = threading.Lock()
        shards = list(shards)
        self._due = {REPLAY: dict.fromkeys(shards, 0.0), ACTIVITY: dict.fromkeys(shards, 0.0)}
        self._generation = {REPLAY: dict.fromkeys(shards, 0), ACTIVITY: dict.fromkeys(shards, 0)}
        self._learnt = {REPLAY: dict.fromkeys(shards, 0), ACTIVITY: dict.fromkeys(shards, 0)}
        self._tickets = itertools.count(1)
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)

    @property
    def wake_fd(self) -> int:
        """The pipe's writing end (for ``signal.set_wakeup_fd``)."""
        return self._w

    # -- what is due ------------------------------------------------------------

    def announce(self, kind: str, shards: Iterable[str] | None = None, in_seconds: float = 0.0) -> None:
        """Work of ``kind`` falls due in ``shards`` (None: all) ``in_seconds``
        from now: look then, whatever a claim in flight will answer."""
        at = time.monotonic() + in_seconds if in_seconds > 0 else 0.0
        with self._lock:
            due, gen = self._due[kind], self._generation[kind]
            for shard in due if shards is None else shards:
                if shard in due:
                    due[shard] = min(due[shard], at)
                    gen[shard] += 1

    def take(self, kind: str, now: float | None = None) -> Ticket | None:
        """The shard of ``kind`` whose work has been due longest, if any is
        due now, with a ticket for learning what its claim answers."""
        now = time.monotonic() if now is None else now
        with self._lock:
            due = self._due[kind]
            shard = min(due, key=due.__getitem__, default=None)
            if shard is None or due[shard] > now:
                return None
            return Ticket(kind, shard, next(self._tickets), self._generation[kind][shard])

    def learn(self, ticket: Ticket, due_in: float | None) -> None:
        """What a claim found: its shard's next task of the kind is due in
        ``due_in`` seconds (<= 0: now; None: none). Ignored when newer news
        came in since the ticket was taken."""
        at = NEVER if due_in is None else 0.0 if due_in <= 0 else time.monotonic() + due_in
        with self._lock:
            kind, shard = ticket.kind, ticket.shard
            if self._generation[kind][shard] != ticket.generation or self._learnt[kind][shard] > ticket.number:
                return
            self._learnt[kind][shard] = ticket.number
            self._due[kind][shard] = at

    def survey(self) -> Survey:
        """A ticket for learning every shard at once (``store.due_times``)."""
        with self._lock:
            return Survey(next(self._tickets), {k: dict(g) for k, g in self._generation.items()})

    def learn_survey(self, survey: Survey, kind: str, due_in: dict[str, float]) -> None:
        """What a survey found for ``kind``: each shard's next task is due in
        ``due_in[shard]`` seconds (absent: nothing queued). Shards with news
        since the survey began keep it."""
        now = time.monotonic()
        with self._lock:
            for shard in self._due[kind]:
                if (self._generation[kind][shard] != survey.generations[kind][shard]
                        or self._learnt[kind][shard] > survey.number):
                    continue
                self._learnt[kind][shard] = survey.number
                seconds = due_in.get(shard)
                self._due[kind][shard] = NEVER if seconds is None else 0.0 if seconds <= 0 else now + seconds

    def due_now(self, kind: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        with self._lock:
            return any(at <= now for at in self._due[kind].values())

    def next_at(self, kinds: Iterable[str]) -> float:
        """The earliest deadline among ``kinds`` (monotonic; NEVER if none)."""
        with self._lock:
            return min((min(self._due[k].values(), default=NEVER) for k in kinds), default=NEVER)

    # -- waking the loop --------------------------------------------------------

    def wake(self, why: Wake) -> None:
        try:
            os.write(self._w, why.value)
        except BlockingIOError:  # the pipe is full: a wake-up is pending anyway
            pass

    def wait(self, timeout: float, fds: list[int]) -> tuple[set[Wake], list[int]]:
        """Sleep until a wake-up byte, one of ``fds`` is readable, or
        ``timeout``; return the wake-ups read and the ready ``fds``."""
        try:
            ready, _, _ = select.select([self._r, *fds], [], [], max(0.0, timeout))
        except InterruptedError:
            return {Wake.SIGNAL}, []
        woken: set[Wake] = set()
        if self._r in ready:
            try:
                while data := os.read(self._r, 512):
                    woken |= {_BY_BYTE.get(byte, Wake.SIGNAL) for byte in data}
            except BlockingIOError:
                pass
        return woken, [fd for fd in ready if fd != self._r]

    def close(self) -> None:
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass
