"""Schedules: start a workflow at each tick of a cron expression.

A schedule is a row of ``schedules``. Workers fire them (``Scheduler``, a
thread in each worker process): a firing pass locks the schedules that are
due (``FOR UPDATE SKIP LOCKED``, so two fleets never handle one at once),
starts a run per tick to start, and moves the schedule to its next tick.
A run's id is derived from the schedule's id and its tick (``run_id``), and
starting an id that exists does nothing, so each tick starts exactly one run
even if a pass is repeated after a crash or two fleets race.

Cron expressions are croniter's: five fields (minute hour day month
weekday), or six with seconds last (``"*/10 * * * * *"``: every 10 s),
evaluated in the schedule's ``timezone`` (an IANA name, through zoneinfo).

Policies:
- ``overlap``, when a tick comes while the schedule's last run still runs:
  ``"skip"`` the tick, ``"buffer_one"`` keep it (one at most; later ones
  are skipped) and start it when that run ends, or ``"allow"`` start it.
- ``catch_up``, for ticks that passed while no worker fired the schedule
  (a fleet down, the schedule's worker busy): ``"all"`` start each of them,
  ``"latest"`` only the most recent, or a number of seconds: those that are
  at most that late. The others are counted as skipped.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from flows import codec, extras, metrics, sharding, store
from flows.store import client as client_store
from flows.store import schedules as schedule_store
from flows.definitions import WorkflowDefinition
from flows.errors import InvalidInput

log = logging.getLogger("flows.schedules")

OVERLAP_POLICIES = ("skip", "buffer_one", "allow")
CATCH_UP_POLICIES = ("all", "latest")
MAX_TICKS_PER_PASS = 100  # ticks started for one schedule in one pass; the next pass goes on
SCHEDULES_PER_PASS = 20
POLL_SECONDS = 60.0  # the longest a firer sleeps while schedules exist (a NOTIFY wakes it sooner)
IDLE_POLL_SECONDS = 600.0  # with none: a schedule's creation NOTIFYs the firers
BUFFER_RECHECK_SECONDS = 1.0  # how often a buffered tick looks whether the last run ended


class ScheduleInfo(msgspec.Struct, frozen=True):
    """A schedule as stored: its definition, the next tick not handled yet,
    a tick waiting for the last run to end (``buffer_one``), the last tick
    started and its run, and how many ticks it started and skipped."""

    schedule_id: str
    workflow_name: str
    workflow_version: int
    input: Any
    cron: str
    timezone: str
    overlap: str
    catch_up: str
    paused: bool
    next_fire_at: datetime
    buffered_tick: datetime | None
    last_tick: datetime | None
    last_workflow_id: UUID | None
    starts: int
    skips: int
    tenant_id: UUID
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Spec:
    schedule_id: str
    tenant_id: UUID
    workflow_name: str
    version: int
    input: bytes
    cron: str
    timezone: str
    overlap: str
    catch_up: str


def spec(
    workflow: WorkflowDefinition[Any, Any], cron: str, inp: Any, *, schedule_id: str, timezone: str, overlap: str,
    catch_up: str | float, tenant_id: UUID,
) -> Spec:
    """Check a schedule's definition; InvalidInput names the field at fault."""
    if not isinstance(workflow, WorkflowDefinition):
        raise InvalidInput(f"schedule() takes a @flows.workflow, not {workflow!r}", path="workflow")
    if not isinstance(schedule_id, str) or not schedule_id or len(schedule_id) > 200 or "\0" in schedule_id:
        raise InvalidInput(f"schedule_id must be a non-empty string of <= 200 chars, got {schedule_id!r}",
                           path="schedule_id")
    if not isinstance(cron, str) or not _croniter().croniter.is_valid(cron):
        raise InvalidInput(f"cron is not a valid cron expression: {cron!r}", path="cron")
    _zone(timezone)
    if overlap not in OVERLAP_POLICIES:
        raise InvalidInput(f"overlap must be one of {OVERLAP_POLICIES}, got {overlap!r}", path="overlap")
    if isinstance(catch_up, str):
        if catch_up not in CATCH_UP_POLICIES:
            raise InvalidInput(f"catch_up must be one of {CATCH_UP_POLICIES} or seconds, got {catch_up!r}",
                               path="catch_up")
        policy = catch_up
    elif isinstance(catch_up, (int, float)) and not isinstance(catch_up, bool) and catch_up >= 1:
        policy = repr(float(catch_up))
    else:
        raise InvalidInput(f"catch_up must be one of {CATCH_UP_POLICIES} or seconds >= 1, got {catch_up!r}",
                           path="catch_up")
    data = codec.encode(inp, "input")
    codec.decode(data, workflow.input_type)
    return Spec(schedule_id, tenant_id, workflow.name, workflow.version, data, cron, timezone, overlap, policy)


def _croniter() -> Any:
    return extras.require("croniter", "schedules", "schedules (cron expressions)")


def _zone(timezone: str) -> ZoneInfo:
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise InvalidInput(f"timezone is not a known IANA time zone: {timezone!r}", path="timezone") from None


def next_tick(cron: str, timezone: str, after: datetime) -> datetime:
    """The first tick of ``cron`` in ``timezone`` strictly after ``after`` (UTC)."""
    local = after.astimezone(_zone(timezone))
    cron_module = _croniter()
    try:
        tick: datetime = cron_module.croniter(cron, local).get_next(datetime)
    except cron_module.CroniterBadCronError as exc:
        raise InvalidInput(f"cron is not a valid cron expression: {cron!r}: {exc}", path="cron") from None
    return tick.astimezone(UTC)


def run_id(schedule_id: str, tick: datetime) -> UUID:
    """The id of the run a tick starts: a UUIDv7 whose time is the tick's
    (so runs sort by tick and show it) and whose other bits come from the
    schedule's id and the tick, the same in every process."""
    millis = int(tick.timestamp() * 1000)
    digest = hashlib.blake2b(f"{schedule_id}@{tick.isoformat()}".encode(), digest_size=10).digest()
    value = (millis & (2**48 - 1)) << 80 | int.from_bytes(digest, "big") & (2**80 - 1)
    value = value & ~(0xF << 76) | 0x7 << 76  # version 7
    value = value & ~(0x3 << 62) | 0x2 << 62  # RFC 4122 variant
    return UUID(int=value)


def info(row: schedule_store.ScheduleRow) -> ScheduleInfo:
    return ScheduleInfo(
        row.schedule_id, row.workflow_name, row.workflow_version, codec.decode(row.input), row.cron, row.timezone,
        row.overlap, row.catch_up, row.paused, row.next_fire_at, row.buffered_tick, row.last_tick,
        row.last_workflow_id, row.starts, row.skips, row.tenant_id, row.created_at, row.updated_at,
    )


def save(conn: store.Conn, s: Spec) -> ScheduleInfo:
    """Create or replace a schedule; its first tick is the next after now."""
    first = next_tick(s.cron, s.timezone, store.database_now(conn))
    return info(schedule_store.save_schedule(
        conn, schedule_id=s.schedule_id, tenant_id=s.tenant_id, workflow_name=s.workflow_name, version=s.version,
        input=s.input, cron=s.cron, timezone=s.timezone, overlap=s.overlap, catch_up=s.catch_up, next_fire_at=first,
    ))


def _found(row: schedule_store.ScheduleRow | None, schedule_id: str) -> schedule_store.ScheduleRow:
    if row is None:
        raise InvalidInput(f"no schedule {schedule_id!r}", path="schedule_id")
    return row


def set_paused(conn: store.Conn, schedule_id: str, paused: bool) -> ScheduleInfo:
    row = _found(schedule_store.get_schedule(conn, schedule_id), schedule_id)
    resume_at = None if paused else next_tick(row.cron, row.timezone, store.database_now(conn))
    return info(_found(schedule_store.pause_schedule(conn, schedule_id, paused, resume_at), schedule_id))


def delete(conn: store.Conn, schedule_id: str) -> bool:
    return schedule_store.delete_schedule(conn, schedule_id)


def list_all(conn: store.Conn) -> list[ScheduleInfo]:
    return [info(row) for row in schedule_store.list_schedules(conn)]


def _start(conn: store.Conn, row: schedule_store.ScheduleRow, tick: datetime, shards: int) -> tuple[UUID, bool]:
    wid = run_id(row.schedule_id, tick)
    shard = sharding.sharded_name(row.workflow_name, wid, shards)
    answer = store.run(conn, client_store.start_workflow(
        shard=shard, workflow_id=wid, tenant_id=row.tenant_id, version=row.workflow_version,
        input=(row.input or "null").encode()))
    if answer == "taken":
        log.error("schedule-start-refused schedule=%s id=%s: the id belongs to another workflow", row.schedule_id, wid)
    elif answer == "created":
        metrics.workflow_started(row.workflow_name)
    return wid, answer == "created"


def trigger(conn: store.Conn, schedule_id: str, shards: int) -> tuple[schedule_store.ScheduleRow, UUID, bool]:
    """Start a run now (tick = the database's time), whatever the policies:
    (the schedule, the run's id, whether it was created)."""
    row = _found(schedule_store.get_schedule(conn, schedule_id), schedule_id)
    wid, created = _start(conn, row, store.database_now(conn), shards)
    return row, wid, created


@dataclass
class Plan:
    """What one pass does with a due schedule."""

    start: list[datetime]
    next_fire_at: datetime
    buffered: datetime | None
    skips: int


def plan(row: schedule_store.ScheduleRow, now: datetime, last_running: bool) -> Plan:
    """Which ticks to start now, by the catch-up and overlap policies."""
    due: list[datetime] = []
    tick = row.next_fire_at
    while tick <= now and len(due) < MAX_TICKS_PER_PASS:
        due.append(tick)
        tick = next_tick(row.cron, row.timezone, tick)
    kept = due
    if row.catch_up == "latest":
        kept = due[-1:] if tick > now else []  # more than a pass's worth: the next pass has the latest
    elif row.catch_up != "all":
        window = float(row.catch_up)
        kept = [t for t in due if (now - t).total_seconds() <= window]
    skips = len(due) - len(kept)
    buffered = row.buffered_tick
    start: list[datetime] = []
    running = last_running
    if buffered is not None and not running:
        start.append(buffered)
        buffered, running = None, True
    for t in kept:
        if row.overlap == "allow" or not running:
            start.append(t)
            running = True
        elif row.overlap == "buffer_one" and buffered is None:
            buffered = t
        else:
            skips += 1
    return Plan(start, tick, buffered, skips)


def fire_due(lock_conn: store.Conn, start_conn: store.Conn, shards: int) -> int:
    """One firing pass: start what the due schedules' ticks call for.
    ``lock_conn`` holds the schedules' row locks for the pass; each start is
    a transaction of its own on ``start_conn``. Returns the runs started."""
    started = 0
    with lock_conn.transaction():
        rows, now = schedule_store.lock_due_schedules(lock_conn, SCHEDULES_PER_PASS)
        for row in rows:
            running = False
            if row.overlap != "allow" and row.last_workflow_id is not None:
                last = store.run(start_conn, client_store.workflow_statement(
                    sharding.sharded_name(row.workflow_name, row.last_workflow_id, shards), row.last_workflow_id,
                    None))
                running = last is not None and last.status == "running"
            p = plan(row, now, running)
            last_tick: datetime | None = None
            last_id: UUID | None = None
            for tick in p.start:
                last_id, created = _start(start_conn, row, tick, shards)
                last_tick = tick
                started += created
                log.info("schedule-fired schedule=%s tick=%s id=%s created=%s", row.schedule_id, tick.isoformat(),
                         last_id, created)
            schedule_store.schedule_fired(lock_conn, row.schedule_id, next_fire_at=p.next_fire_at,
                                          buffered_tick=p.buffered, last_tick=last_tick, last_workflow_id=last_id,
                                          starts=len(p.start), skips=p.skips)
    return started


class Scheduler:
    """A worker's thread that fires the schedules when they fall due (by the
    database clock), woken early by ``poke()`` (a schedule changed)."""

    def __init__(self, shards: int, owner: str) -> None:
        self.shards = shards
        self.owner = owner
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: Any = None

    def start(self, pool: Any) -> None:
        self._pool = pool
        self._thread = threading.Thread(target=self._loop, name="flows-scheduler", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        failing = False
        while not self._stop.is_set():
            wait = IDLE_POLL_SECONDS
            try:
                with self._pool.connection() as lock_conn, self._pool.connection() as start_conn:
                    fire_due(lock_conn, start_conn, self.shards)
                    due_in, buffered = schedule_store.schedules_due_in(lock_conn)
                if due_in is not None:
                    wait = min(POLL_SECONDS, max(0.0, due_in))
                if buffered:
                    wait = min(wait, BUFFER_RECHECK_SECONDS)
                failing = False
            except Exception as exc:  # noqa: BLE001 - the database is away, or a bad row: try again later
                if not failing:
                    log.warning("schedules-failed owner=%s error=%s: %s", self.owner, type(exc).__name__, exc)
                failing = True
            self._wake.wait(wait + 0.001)
            self._wake.clear()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5.0)
