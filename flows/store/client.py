"""The client side's statements: start, signal, read, wait for and cancel
a workflow (the sync Engine and the AsyncEngine run the same ``Statement``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec
import uuid6

from flows import sharding
from flows.codec import Json
from flows.store.connections import REPLAY_WORK, Conn, notify
from flows.store.statements import Statement, read_first, read_nothing, run


class WorkflowRow(msgspec.Struct):
    name: str
    id: UUID
    tenant_id: UUID
    version: int
    status: str
    input: str | None
    output: str | None
    error: str | None
    sequence_num: int
    waiting_for: str | None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    run: int = 1
    run_step_base: int = 0  # this run's steps follow this one
    run_first_event: int = 0  # this run's history starts at this sequence_num
    last_event: int | None = None  # the last history event the latest step wrote


_WORKFLOW_COLUMNS = (
    "name, id, tenant_id, version, status, input::text, output::text, error, sequence_num,"
    " waiting_for, created_at, updated_at, completed_at"
)


def _workflow(row: tuple[Any, ...] | None) -> WorkflowRow | None:
    return None if row is None else WorkflowRow(*row)


def start_workflow(
    *, shard: str, workflow_id: UUID, tenant_id: UUID, version: int, input: bytes, timeout: float | None = None,
    parent: tuple[str, UUID, int] | None = None,
) -> Statement[str]:
    """Create a running workflow, its start event and first task (and its
    execution timeout's task), and wake its shard: 'created', 'exists' (this
    tenant's, and this ``parent``'s (shard, id, step) when given), or
    'taken' (another's; nothing written). One statement
    (``flows_start_workflow``, migration 040)."""
    parent_name, parent_id, parent_step = parent if parent is not None else (None, None, None)
    return Statement(
        "SELECT flows_start_workflow(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (shard, workflow_id, tenant_id, version, Json(input), uuid6.uuid7(), uuid6.uuid7(), sharding.channel(shard),
         timeout, uuid6.uuid7(), parent_name, parent_id, parent_step),
        read_first,
    )


def signal_with_start(
    *, shard: str, workflow_id: UUID, tenant_id: UUID, version: int, input: bytes, timeout: float | None,
    signal_id: UUID, name: str, payload: bytes,
) -> Statement[tuple[str, str | None]]:
    """Start the workflow unless its id exists, then deliver the signal, in
    one transaction: (start answer as ``start_workflow``'s, the workflow's
    status when signalled; None when 'taken'). One statement
    (``flows_signal_with_start``, migration 040)."""
    return Statement(
        "SELECT flows_signal_with_start(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (shard, workflow_id, tenant_id, version, Json(input), uuid6.uuid7(), uuid6.uuid7(), sharding.channel(shard),
         timeout, uuid6.uuid7(), signal_id, name, Json(payload), uuid6.uuid7()),
        _read_signal_with_start,
    )


class _SignalWithStart(msgspec.Struct, frozen=True):
    start: str
    status: str | None = None


_signal_with_start = msgspec.json.Decoder(_SignalWithStart)


def _read_signal_with_start(rows: list[tuple[Any, ...]]) -> tuple[str, str | None]:
    got = _signal_with_start.decode(rows[0][0])
    return got.start, got.status


def get_workflow(conn: Conn, shard: str, workflow_id: UUID, tenant_id: UUID | None) -> WorkflowRow | None:
    """The workflow row, or None if absent or another tenant's (None = any tenant)."""
    return run(conn, workflow_statement(shard, workflow_id, tenant_id))


def workflow_statement(shard: str, workflow_id: UUID, tenant_id: UUID | None) -> Statement[WorkflowRow | None]:
    return Statement(
        f"SELECT {_WORKFLOW_COLUMNS} FROM workflows WHERE name = %s AND id = %s"
        " AND (%s::uuid IS NULL OR tenant_id = %s::uuid)",
        (shard, workflow_id, tenant_id, tenant_id),
        lambda rows: _workflow(rows[0] if rows else None),
    )


class ActivityRow(msgspec.Struct, frozen=True):
    id: UUID
    name: str
    status: str
    attempt: int
    max_attempts: int
    started_at: datetime | None
    error: str | None
    next_retry_at: datetime | None
    heartbeat_at: datetime | None
    heartbeat_details: str | None


def waited_activity(conn: Conn, shard: str, workflow_id: UUID) -> ActivityRow | None:
    """The workflow's latest activity that has not ended (scheduled or running)."""
    pending = run(conn, pending_activities(shard, workflow_id))
    return pending[-1] if pending else None


def pending_activities(shard: str, workflow_id: UUID) -> Statement[list[ActivityRow]]:
    """The workflow's activities that have not ended (scheduled or running), by step."""
    return Statement(
        "SELECT id, name, status, attempt, max_attempts, started_at, error, next_retry_at, heartbeat_at,"
        " heartbeat_details::text FROM activities WHERE workflow_name = %s AND workflow_id = %s"
        " AND status IN ('scheduled', 'running') ORDER BY sequence_num",
        (shard, workflow_id),
        lambda rows: [ActivityRow(*row) for row in rows],
    )


class RejectedSignalRow(msgspec.Struct, frozen=True):
    id: UUID
    name: str
    reason: str
    created_at: datetime
    rejected_at: datetime


def rejected_signals(shard: str, workflow_id: UUID) -> Statement[list[RejectedSignalRow]]:
    """The workflow's signals its waits rejected, oldest first."""
    return Statement(
        "SELECT id, signal_name, rejected, created_at, consumed_at FROM signals"
        " WHERE workflow_name = %s AND workflow_id = %s AND rejected IS NOT NULL ORDER BY created_at, id",
        (shard, workflow_id),
        lambda rows: [RejectedSignalRow(*row) for row in rows],
    )


def count_result_waiter(conn: Conn, shard: str, workflow_id: UUID, tenant_id: UUID | None, delta: int) -> None:
    """Register (+1) or withdraw (-1) a caller waiting for the workflow's end."""
    run(conn, result_waiter_statement(shard, workflow_id, tenant_id, delta))


def result_waiter_statement(shard: str, workflow_id: UUID, tenant_id: UUID | None, delta: int) -> Statement[None]:
    return Statement(
        "UPDATE workflows SET result_waiters = GREATEST(0, result_waiters + %s) WHERE name = %s AND id = %s"
        " AND (%s::uuid IS NULL OR tenant_id = %s::uuid)",
        (delta, shard, workflow_id, tenant_id, tenant_id),
        read_nothing,
    )


class SignalSent(msgspec.Struct, frozen=True):
    """What ``send_signal`` did: ``outcome`` is 'stored', 'duplicate' (the
    key was taken: ``signal_id``/``payload`` are that signal's),
    'not-waiting', 'answered' (``signal_id`` is the unconsumed signal that
    answers the wait) or None (the workflow has ended: nothing stored)."""

    status: str
    outcome: str | None
    signal_id: UUID | None
    payload: str | None
    waiting_for: str | None


def send_signal(
    conn: Conn, *, shard: str, workflow_id: UUID, tenant_id: UUID | None, signal_id: UUID, name: str, payload: bytes,
    task_id: UUID, dedup_key: str | None = None, only_if_waiting: bool = False,
) -> SignalSent | None:
    """``send_signal_statement`` run on ``conn``."""
    return run(conn, send_signal_statement(shard=shard, workflow_id=workflow_id, tenant_id=tenant_id,
                                           signal_id=signal_id, name=name, payload=payload, task_id=task_id,
                                           dedup_key=dedup_key, only_if_waiting=only_if_waiting))


def _signal_sent(rows: list[tuple[Any, ...]]) -> SignalSent | None:
    return SignalSent(*rows[0]) if rows else None


def send_signal_statement(
    *, shard: str, workflow_id: UUID, tenant_id: UUID | None, signal_id: UUID, name: str, payload: bytes,
    task_id: UUID, dedup_key: str | None = None, only_if_waiting: bool = False,
) -> Statement[SignalSent | None]:
    """Store a signal for a workflow that has not ended and, when it waits
    for exactly this signal, queue its replay and wake its shard; with
    ``dedup_key`` at most one signal per key and workflow, with
    ``only_if_waiting`` only while the workflow waits for it unanswered.
    One statement (``flows_send_signal_v2``, migration 020). None when this
    tenant (None = any) has no such workflow."""
    return Statement(
        "SELECT * FROM flows_send_signal_v2(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (shard, workflow_id, tenant_id, signal_id, name, Json(payload), task_id, sharding.channel(shard), dedup_key,
         only_if_waiting),
        _signal_sent,
    )


def enqueue_workflow_task(
    conn: Conn, shard: str, workflow_id: UUID, tenant_id: UUID, task_id: UUID, version: int
) -> None:
    """Ask for a replay (by a worker running ``version``); a no-op when one is already pending."""
    conn.execute(
        "INSERT INTO task_queue (workflow_name, id, workflow_id, tenant_id, task_type, workflow_version)"
        " VALUES (%s, %s, %s, %s, 'workflow', %s)"
        " ON CONFLICT (workflow_name, workflow_id) WHERE task_type = 'workflow' DO NOTHING",
        (shard, task_id, workflow_id, tenant_id, version),
    )
    notify(conn, [shard], work=REPLAY_WORK)


def cancel_workflow(shard: str, workflow_id: UUID, tenant_id: UUID | None, reason: str = "cancelled") -> Statement[str | None]:
    """End a running workflow as cancelled: its pending work dropped, its
    end announced, its children with the 'cancel' policy cancelled in turn
    (carried to their shards), a parent told. Returns the status it had
    ('running' when this cancelled it), None when this tenant (None = any)
    has no such workflow. One statement (``flows_cancel_workflow``)."""
    return Statement(
        "SELECT flows_cancel_workflow(%s, %s, %s, %s, %s, %s, %s)",
        (shard, workflow_id, tenant_id, uuid6.uuid7(), reason, sharding.channel(shard),
         sharding.channel(shard, "flows-done")),
        read_first,
    )
