"""Schedules (flows/schedules.py): save, list, pause and delete them; lock
the due ones and record a firing pass.

schedules is fleet metadata keyed by the schedule's id, not by a shard key
(see migrations/040_primitives.sql): under Citus it stays on the
coordinator. A scheduled run is started by ``client.start_workflow``, a
transaction of its own on the run's shard.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import msgspec

from flows.codec import Json
from flows.store.connections import Conn, database_now

SCHEDULES_CHANNEL = "flows-schedules"  # NOTIFYed when a schedule changes: the firing workers look again

_SCHEDULE_COLUMNS = (
    "schedule_id, tenant_id, workflow_name, workflow_version, input::text, cron, timezone, overlap, catch_up,"
    " paused, next_fire_at, buffered_tick, last_tick, last_workflow_id, starts, skips, created_at, updated_at"
)


class ScheduleRow(msgspec.Struct, frozen=True):
    schedule_id: str
    tenant_id: UUID
    workflow_name: str
    workflow_version: int
    input: str | None
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
    created_at: datetime
    updated_at: datetime


def save_schedule(
    conn: Conn, *, schedule_id: str, tenant_id: UUID, workflow_name: str, version: int, input: bytes, cron: str,
    timezone: str, overlap: str, catch_up: str, next_fire_at: datetime,
) -> ScheduleRow:
    """Create or replace a schedule (its counters and last run kept), and
    tell the firing workers."""
    row = conn.execute(
        "INSERT INTO schedules (schedule_id, tenant_id, workflow_name, workflow_version, input, cron, timezone,"
        " overlap, catch_up, next_fire_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (schedule_id) DO UPDATE SET tenant_id = EXCLUDED.tenant_id,"
        " workflow_name = EXCLUDED.workflow_name, workflow_version = EXCLUDED.workflow_version,"
        " input = EXCLUDED.input, cron = EXCLUDED.cron, timezone = EXCLUDED.timezone, overlap = EXCLUDED.overlap,"
        " catch_up = EXCLUDED.catch_up, next_fire_at = EXCLUDED.next_fire_at, buffered_tick = NULL,"
        f" updated_at = now() RETURNING {_SCHEDULE_COLUMNS}",
        (schedule_id, tenant_id, workflow_name, version, Json(input), cron, timezone, overlap, catch_up,
         next_fire_at),
    ).fetchone()
    conn.execute("SELECT pg_notify(%s, '')", (SCHEDULES_CHANNEL,))
    assert row is not None
    return ScheduleRow(*row)


def get_schedule(conn: Conn, schedule_id: str) -> ScheduleRow | None:
    row = conn.execute(f"SELECT {_SCHEDULE_COLUMNS} FROM schedules WHERE schedule_id = %s", (schedule_id,)).fetchone()
    return None if row is None else ScheduleRow(*row)


def list_schedules(conn: Conn) -> list[ScheduleRow]:
    return [ScheduleRow(*row) for row in conn.execute(f"SELECT {_SCHEDULE_COLUMNS} FROM schedules ORDER BY 1")]


def pause_schedule(conn: Conn, schedule_id: str, paused: bool, next_fire_at: datetime | None) -> ScheduleRow | None:
    """Pause, or resume from ``next_fire_at``; tell the firing workers."""
    row = conn.execute(
        "UPDATE schedules SET paused = %s, next_fire_at = coalesce(%s, next_fire_at), buffered_tick = NULL,"
        f" updated_at = now() WHERE schedule_id = %s RETURNING {_SCHEDULE_COLUMNS}",
        (paused, next_fire_at, schedule_id),
    ).fetchone()
    conn.execute("SELECT pg_notify(%s, '')", (SCHEDULES_CHANNEL,))
    return None if row is None else ScheduleRow(*row)


def delete_schedule(conn: Conn, schedule_id: str) -> bool:
    return conn.execute("DELETE FROM schedules WHERE schedule_id = %s", (schedule_id,)).rowcount > 0


def lock_due_schedules(conn: Conn, limit: int) -> tuple[list[ScheduleRow], datetime]:
    """In the caller's transaction: lock up to ``limit`` schedules due now (a
    tick due, or a buffered tick to look at), skipping those another
    firer holds; and the database's time."""
    rows = conn.execute(
        f"SELECT {_SCHEDULE_COLUMNS}, now() FROM schedules WHERE NOT paused"
        " AND (next_fire_at <= now() OR buffered_tick IS NOT NULL)"
        " ORDER BY next_fire_at LIMIT %s FOR UPDATE SKIP LOCKED",
        (limit,),
    ).fetchall()
    now = rows[0][-1] if rows else database_now(conn)
    return [ScheduleRow(*row[:-1]) for row in rows], now


def schedule_fired(
    conn: Conn, schedule_id: str, *, next_fire_at: datetime, buffered_tick: datetime | None,
    last_tick: datetime | None, last_workflow_id: UUID | None, starts: int, skips: int,
) -> None:
    """Record a firing pass over a locked schedule."""
    conn.execute(
        "UPDATE schedules SET next_fire_at = %s, buffered_tick = %s, last_tick = coalesce(%s, last_tick),"
        " last_workflow_id = coalesce(%s, last_workflow_id), starts = starts + %s, skips = skips + %s,"
        " updated_at = now() WHERE schedule_id = %s",
        (next_fire_at, buffered_tick, last_tick, last_workflow_id, starts, skips, schedule_id),
    )


def schedules_due_in(conn: Conn) -> tuple[float | None, bool]:
    """Seconds until the earliest tick of a schedule not paused (None: no
    schedule), and whether one holds a buffered tick (looked at often)."""
    row = conn.execute(
        "SELECT extract(epoch FROM min(next_fire_at) - now()), coalesce(bool_or(buffered_tick IS NOT NULL), false)"
        " FROM schedules WHERE NOT paused"
    ).fetchone()
    assert row is not None
    return (None if row[0] is None else float(row[0])), bool(row[1])
