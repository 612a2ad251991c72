"""The worker loop's decisions, and the pipe that wakes it.

NOTIFY is a hint and the claim is the truth: a notification, a step of our
own, or a known due time marks a shard "look now"; each claim answers with
when the shard's next task falls due, which becomes that shard's deadline.
So a worker serving many shards claims only where work is, and sleeps until
the earliest deadline among them, with no polling.

``Dispatcher`` decides (which shard to claim next, how many tasks at once,
when to look again, how long to sleep) from the events it is fed, with no
I/O and a clock it is given, so it is tested without a database or threads;
``Waker`` is the I/O: the self-pipe the loop sleeps on.
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
from typing import Callable, Iterable

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


class Dispatcher:
    """Each shard's next due time, for replays and for activities, as far as
    this worker knows: a time on ``clock`` (past: due since then; 0.0: not
    known yet, look first), or NEVER (nothing queued). Notifications and our
    own steps announce; claims learn. Thread-safe: the loop, the replay
    threads, the activity slots and the heartbeat all use it.

    Also: which shards have a backlog (claimed ``claim_batch`` at once),
    this worker's claims in flight per shard (the last to finish looks again
    when one found the due tasks all held by the others), and when to ask
    every shard again (``survey_every``: the safety poll, NEVER when the
    heartbeat does it). ``notify(why)`` is called by ``wake``: the I/O that
    wakes the loop (a ``Waker``), none by default."""

    def __init__(
        self, shards: Iterable[str], *, claim_batch: int = 1, survey_every: float = NEVER,
        clock: Callable[[], float] = time.monotonic, notify: Callable[[Wake], None] | None = None,
    ) -> None:
        self._lock = threading.Lock()
        shards = list(shards)
        self._due = {REPLAY: dict.fromkeys(shards, 0.0), ACTIVITY: dict.fromkeys(shards, 0.0)}
        self._generation = {REPLAY: dict.fromkeys(shards, 0), ACTIVITY: dict.fromkeys(shards, 0)}
        self._learnt = {REPLAY: dict.fromkeys(shards, 0), ACTIVITY: dict.fromkeys(shards, 0)}
        self._tickets = itertools.count(1)
        self.claim_batch = claim_batch
        self.survey_every = survey_every
        self._survey_at = 0.0  # the first look asks every shard
        self._backlog: set[str] = set()  # shards whose last claim found another task due
        self._in_flight: dict[str, int] = {}  # this worker's replay claims under way, per shard
        self._held: set[str] = set()  # shards whose due tasks a claim found all held by our claims in flight
        self.clock = clock
        self._notify = notify

    def wake(self, why: Wake) -> None:
        """Wake the loop (through ``notify``)."""
        if self._notify is not None:
            self._notify(why)

    # -- what is due ------------------------------------------------------------

    def announce(self, kind: str, shards: Iterable[str] | None = None, in_seconds: float = 0.0) -> None:
        """Work of ``kind`` falls due in ``shards`` (None: all) ``in_seconds``
        from now: look then, whatever a claim in flight will answer."""
        at = self.clock() + max(0.0, in_seconds)
        with self._lock:
            due, gen = self._due[kind], self._generation[kind]
            for shard in due if shards is None else shards:
                if shard in due:
                    due[shard] = min(due[shard], at)
                    gen[shard] += 1

    def take(self, kind: str, now: float | None = None) -> Ticket | None:
        """The shard of ``kind`` whose work has been due longest, if any is
        due now, with a ticket for learning what its claim answers: due work
        is claimed in due order across the shards, a deep backlog on one
        never starving the others."""
        now = self.clock() if now is None else now
        with self._lock:
            due = self._due[kind]
            shard = min(due, key=due.__getitem__, default=None)
            if shard is None or due[shard] > now:
                return None
            return Ticket(kind, shard, next(self._tickets), self._generation[kind][shard])

    def learn(self, ticket: Ticket, due_in: float | None, claimed: bool = False) -> None:
        """What a claim found: its shard's next task of the kind is due in
        ``due_in`` seconds (<= 0: now; None: none), having ``claimed``
        something. Ignored when newer news came in since the ticket was
        taken. A replay claim that took a task with another due already
        puts the shard in backlog (its next claims take ``claim_batch``);
        one that finds nothing due now takes it out."""
        at = NEVER if due_in is None else self.clock() + due_in  # overdue: in the past, by how long
        with self._lock:
            kind, shard = ticket.kind, ticket.shard
            if kind == REPLAY:
                if due_in is None or due_in > 0:
                    self._backlog.discard(shard)
                elif claimed:
                    self._backlog.add(shard)
            if self._generation[kind][shard] != ticket.generation or self._learnt[kind][shard] > ticket.number:
                return
            self._learnt[kind][shard] = ticket.number
            self._due[kind][shard] = at

    def survey_due(self) -> bool:
        """Whether to ask every shard when its next task is due (at the
        first look, and then every ``survey_every``)."""
        return self.clock() >= self._survey_at

    def survey(self) -> Survey:
        """A ticket for learning every shard at once (``store.due_times``)."""
        with self._lock:
            return Survey(next(self._tickets), {k: dict(g) for k, g in self._generation.items()})

    def learn_survey(self, survey: Survey, kind: str, due_in: dict[str, float]) -> None:
        """What a survey found for ``kind``: each shard's next task is due in
        ``due_in[shard]`` seconds (absent: nothing queued). Shards with news
        since the survey began keep it."""
        now = self.clock()
        with self._lock:
            self._survey_at = now + self.survey_every
            for shard in self._due[kind]:
                if (self._generation[kind][shard] != survey.generations[kind][shard]
                        or self._learnt[kind][shard] > survey.number):
                    continue
                self._learnt[kind][shard] = survey.number
                seconds = due_in.get(shard)
                self._due[kind][shard] = NEVER if seconds is None else now + seconds

    def due_now(self, kind: str, now: float | None = None) -> bool:
        now = self.clock() if now is None else now
        with self._lock:
            return any(at <= now for at in self._due[kind].values())

    def next_at(self, kinds: Iterable[str]) -> float:
        """The earliest deadline among ``kinds`` (monotonic; NEVER if none)."""
        with self._lock:
            return min((min(self._due[k].values(), default=NEVER) for k in kinds), default=NEVER)

    def sleep_seconds(self, kinds: Iterable[str], margin: float = 0.0, longest: float = 3600.0) -> float:
        """How long the loop may sleep: until the earliest deadline among
        ``kinds`` or the next survey, plus ``margin`` (never before a task is
        due), at most ``longest``; 0 when something is due now."""
        deadline = min(self.next_at(kinds), self._survey_at)
        return max(0.0, min(deadline - self.clock() + margin, longest))

    # -- claims in flight ---------------------------------------------------------

    def batch_size(self, shard: str) -> int:
        """How many due replay tasks the next claim on ``shard`` takes."""
        with self._lock:
            return self.claim_batch if shard in self._backlog else 1

    def leave_backlog(self, shard: str) -> None:
        """The shard's batch failed: back to one task at a time."""
        with self._lock:
            self._backlog.discard(shard)

    def claim_started(self, shard: str) -> None:
        with self._lock:
            self._in_flight[shard] = self._in_flight.get(shard, 0) + 1

    def claim_ended(self, shard: str) -> None:
        """A replay claim on ``shard`` ended; when one found the shard's due
        tasks all held by our others, the last of them marks it due again."""
        with self._lock:
            left = self._in_flight[shard] - 1
            if left:
                self._in_flight[shard] = left
            else:
                del self._in_flight[shard]
            look_again = not left and shard in self._held
            if look_again:
                self._held.discard(shard)
        if look_again:
            self.announce(REPLAY, [shard])

    def held_elsewhere(self, shard: str) -> float:
        """A claim found the shard's due tasks all held by other
        transactions: when ours are in flight there, the last to end looks
        again; another worker's are looked at again after this many seconds."""
        with self._lock:
            if self._in_flight.get(shard, 0) > 1:
                self._held.add(shard)
        return BUSY_RECHECK_SECONDS

class Waker:
    """The self-pipe the loop sleeps on: a byte per wake-up (signal
    handlers write there too, through ``signal.set_wakeup_fd``)."""

    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)

    @property
    def wake_fd(self) -> int:
        """The pipe's writing end (for ``signal.set_wakeup_fd``)."""
        return self._w

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


Wakeups = Dispatcher  # the name flows.activity_runner imports
