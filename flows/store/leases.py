"""Activity leases: claim due activity tasks, heartbeat them, release a
dead worker's; and when each shard's next task falls due (a worker's sleep).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from uuid import UUID

import msgspec

from flows import sharding
from flows.codec import Json
from flows.store.connections import Conn, notify
from flows.store.statements import text_array


@dataclass(frozen=True)
class ActivityTask:
    """A leased activity task and what its attempt needs to run.

    ``token`` is this delivery's fencing token (the task's delivery count
    when it was leased): only the delivery holding it may record a result."""

    shard: str
    task_id: UUID
    workflow_id: UUID
    tenant_id: UUID
    activity_id: UUID
    name: str
    sequence_num: int
    input: str | bytes | None
    attempt: int  # failed attempts so far
    token: int = 1
    lost: int = 0  # earlier deliveries of this task that never reported back
    expired_owner: str | None = None  # whose lease ran out (None: released, or none)
    details: str | None = None  # JSON of the last heartbeat details of an earlier attempt


class _Leased(msgspec.Struct, frozen=True, array_like=True):
    task_id: UUID
    workflow_id: UUID
    tenant_id: UUID
    activity_id: UUID
    name: str
    sequence_num: int
    input: str | None
    attempt: int
    token: int
    lost: int
    expired_owner: str | None
    details: str | None


class _ActivityClaim(msgspec.Struct, frozen=True):
    tasks: list[_Leased]
    next: float | None = None


_activity_claim = msgspec.json.Decoder(_ActivityClaim)


def claim_activities(
    conn: Conn, shard: str, names: list[str], owner: str, limit: int
) -> tuple[list[ActivityTask], float | None]:
    """Lease up to ``limit`` due tasks of these activities in ``shard`` to
    ``owner`` (each for its task's lease_seconds) and mark their activities
    running; also return seconds until the shard's next task of these
    activities falls due (None: none). One statement
    (``flows_claim_activities``, migration 009)."""
    row = conn.execute(
        "SELECT flows_claim_activities(%s, %s::text[], %s, %s, %s)",
        (shard, text_array(tuple(names)), owner, limit, sharding.channel(shard)),
    ).fetchone()
    assert row is not None
    claim = _activity_claim.decode(row[0])
    return [
        ActivityTask(shard, t.task_id, t.workflow_id, t.tenant_id, t.activity_id, t.name, t.sequence_num, t.input,
                     t.attempt, t.token, t.lost, t.expired_owner, t.details)
        for t in claim.tasks
    ], claim.next


def heartbeat_activity(
    conn: Conn, task: ActivityTask, owner: str, details: bytes, extend_seconds: float | None, cap_seconds: float
) -> bool:
    """Record an attempt's heartbeat details and, with ``extend_seconds``,
    push its lease that far from now (never past its start plus
    ``cap_seconds``). False when this delivery no longer holds the lease."""
    row = conn.execute(
        "SELECT flows_heartbeat_activity(%s, %s, %s, %s, %s, %s, %s, %s)",
        (task.shard, task.task_id, task.activity_id, owner, task.token, Json(details), extend_seconds, cap_seconds),
    ).fetchone()
    return bool(row and row[0])


@dataclass(frozen=True)
class Serves:
    """What a worker takes from the queue: its shards, the workflow versions
    it runs on each, and the activities it has. Dumped once, sent as is."""

    shards: tuple[str, ...]
    versions: tuple[tuple[int, ...], ...]  # aligned with shards
    activities: tuple[str, ...]

    @functools.cached_property
    def params(self) -> tuple[str, str, str]:
        return (
            text_array(self.shards),
            text_array(tuple("[" + ",".join(map(str, v)) + "]" for v in self.versions)),
            text_array(self.activities),
        )


def due_times(conn: Conn, serves: Serves) -> list[tuple[str, str, float]]:
    """(shard, kind, seconds until due) for each shard with a task due
    sometime: kind REPLAY_WORK for workflow and timer tasks, ACTIVITY_WORK
    for activity tasks (leased ones count at their lease's end); by the
    database clock, <= 0 when due already."""
    return [
        (shard, kind, float(due_in)) for shard, kind, due_in in conn.execute(
            "SELECT r_shard, r_kind, r_due_in FROM flows_due_times(%s::text[], %s::text[], %s::text[])",
            serves.params,
        )
    ]


def release_leases(conn: Conn, shards: list[str], owner: str) -> int:
    """Make the tasks leased by a dead (or stopping) worker due again at
    once, and wake the shards' workers to take them."""
    cur = conn.execute(
        "UPDATE task_queue SET visibility_timeout = now(), lease_owner = NULL"
        " WHERE workflow_name = ANY(%s) AND lease_owner = %s",
        (shards, owner),
    )
    if cur.rowcount:
        notify(conn, shards)
    return cur.rowcount
