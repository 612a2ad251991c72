"""Carrying a step's intents to other shards (flows/children.py): start or
cancel a child in its shard, tell a parent in its shard that a child ended.

A `child` or `parent` task is leased by a replay claim (flows.store.steps)
and fenced like an activity's delivery: only the delivery holding it may
drop it.
"""

from __future__ import annotations

from uuid import UUID

import msgspec
import uuid6

from flows import sharding
from flows.codec import Json
from flows.store.connections import Conn


class ChildInfo(msgspec.Struct, frozen=True):
    """A `child` task's children row, and its parent's status."""

    child_name: str
    child_id: UUID
    version: int
    input: msgspec.Raw
    parent_close: str
    status: str
    tenant_id: UUID
    parent_id: UUID
    step: int
    parent_status: str | None = None


class EndInfo(msgspec.Struct, frozen=True):
    """A `parent` task's child: how it ended, and its parent."""

    status: str
    output: msgspec.Raw
    error: str | None
    parent_name: str
    parent_id: UUID
    child_id: UUID


class Carry(msgspec.Struct, frozen=True):
    """A leased `child` or `parent` task: what a step asked of another
    shard. ``token`` fences it like an activity's delivery."""

    id: UUID
    type: str
    token: int
    info: ChildInfo | EndInfo | None = None
    shard: str = ""


_child_info = msgspec.json.Decoder(ChildInfo)
_end_info = msgspec.json.Decoder(EndInfo)


def leased(task_id: UUID, type: str, token: int, info: msgspec.Raw, shard: str) -> Carry:
    """The Carry of a task a claim leased (``info``: its JSON, or null)."""
    decoded: ChildInfo | EndInfo | None = None
    if bytes(info) != b"null":
        decoded = _child_info.decode(info) if type == "child" else _end_info.decode(info)
    return Carry(task_id, type, token, decoded, shard)


def cancel_child(
    conn: Conn, *, shard: str, child_id: UUID, tenant_id: UUID, version: int, parent: tuple[str, UUID, int],
    reason: str,
) -> str | None:
    """Cancel a child whose parent ended, in the child's shard; a child not
    started yet is written as cancelled, so a late start does nothing.
    Returns its status before ('absent': not started). One statement."""
    row = conn.execute(
        "SELECT flows_cancel_child(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (shard, child_id, tenant_id, version, *parent, uuid6.uuid7(), reason, sharding.channel(shard),
         sharding.channel(shard, "flows-done")),
    ).fetchone()
    return None if row is None else row[0]


def child_carried(conn: Conn, carry: Carry, status: str | None) -> bool:
    """Drop a carried `child` task (in the parent's shard) if this delivery
    still holds it, noting the child's ``status`` ('running', 'cancelled';
    None: unchanged). False when it moved on: it will be carried again."""
    row = conn.execute("SELECT flows_child_carried(%s, %s, %s, %s)",
                       (carry.shard, carry.id, carry.token, status)).fetchone()
    return bool(row and row[0])


def child_ended(
    conn: Conn, *, parent_shard: str, parent_id: UUID, child_id: UUID, status: str, output: msgspec.Raw | None,
    error: str | None,
) -> None:
    """Record a child's end at its parent's step (in the parent's shard) and
    ask for the parent's replay, while the parent runs; idempotent."""
    conn.execute(
        "SELECT flows_child_ended(%s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (parent_shard, parent_id, child_id, status, None if output is None else Json(bytes(output)), error,
         uuid6.uuid7(), uuid6.uuid7(), sharding.channel(parent_shard)),
    )


def parent_told(conn: Conn, carry: Carry) -> bool:
    """Drop a carried `parent` task (in the child's shard) if this delivery still holds it."""
    row = conn.execute("SELECT flows_parent_told(%s, %s, %s)", (carry.shard, carry.id, carry.token)).fetchone()
    return bool(row and row[0])
