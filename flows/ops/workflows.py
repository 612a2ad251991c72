"""What an operator does to workflows: list and count them, list dead
letters, retry a failed one, prune old ones.

These are the bodies of the ``Engine`` methods of the same names (the
console and the ``flows`` CLI call them there). Reads take ``tenant_id``:
``ANY_TENANT`` (an operator's view of every tenant) or one tenant's id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import uuid6

from flows import codec, sharding, store
from flows.errors import InvalidInput, WorkflowNotFailed, WorkflowNotFound
from flows.ids import base_name, parse_uuid, tenant_filter
from flows.ops import Database
from flows.ops.detail import event_step
from flows.store import client as client_store
from flows.store import ops as ops_store

STATUSES = ("pending", "running", "completed", "failed", "cancelled")
MAX_PAGE = 1000

WorkflowSummary = ops_store.WorkflowSummary
DeadLetter = ops_store.DeadLetter


# -- checks of what an operator typed --------------------------------------------------


def check_status(status: str | None) -> str | None:
    if status is not None and status not in STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
    return status


def check_time(value: object, what: str) -> datetime | None:
    """A timezone-aware datetime (an ISO 8601 string is parsed; without an
    offset it is taken as UTC)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidInput(f"{what} is not an ISO 8601 time: {value!r}") from None
    if not isinstance(value, datetime):
        raise InvalidInput(f"{what} must be a datetime, got {value!r}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value


def check_limit(limit: object, maximum: int = MAX_PAGE) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= maximum:
        raise InvalidInput(f"limit must be an integer within 1..{maximum}, got {limit!r}")
    return limit




def decode_json(text: str, what: str) -> Any:
    """JSON typed by a person (a signal body): InvalidInput naming it if malformed."""
    try:
        return codec.decode(text)
    except InvalidInput as exc:
        raise InvalidInput(f"{what} is not JSON: {exc}", path=what) from None


def shards_for(db: Database, conn: Any, name: str | None) -> list[str]:
    """The shard names to read: the name's shards, or every name in use."""
    if name is None or name == "":
        return ops_store.shard_names(conn)
    return sharding.all_shard_names(base_name(name), db.shards)


# -- lists and counts ---------------------------------------------------------------------


@dataclass(frozen=True)
class WorkflowPage:
    """One page of ``Engine.list_workflows``; pass ``next_cursor`` as
    ``after`` for the next (None: this was the last)."""

    workflows: list[WorkflowSummary]
    next_cursor: str | None


def encode_cursor(row: WorkflowSummary) -> str:
    return f"{row.created_at.isoformat()}_{row.id}"


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    at, _, wid = cursor.rpartition("_")
    try:
        return datetime.fromisoformat(at), UUID(wid)
    except ValueError:
        raise InvalidInput(f"after is not a cursor from a previous page: {cursor!r}") from None


def names(db: Database) -> list[str]:
    """``Engine.workflow_names``."""
    with store.wrapped(), db.connection() as c:
        return sorted({sharding.base_name(s) for s in ops_store.shard_names(c)})


def list_page(
    db: Database, name: str | None, *, status: str | None, tenant_id: object, waiting_for: str | None,
    created_from: object, created_to: object, after: str | None, limit: int,
) -> WorkflowPage:
    """``Engine.list_workflows``."""
    check_limit(limit)
    status = check_status(status)
    if waiting_for is not None and status is None:
        status = "running"  # only running workflows wait: lets the status index serve it
    keyset = None if not after else decode_cursor(after)
    tenant = tenant_filter(tenant_id)
    start, end = check_time(created_from, "created_from"), check_time(created_to, "created_to")
    with store.wrapped(), db.connection() as c:
        shards = shards_for(db, c, name)
        rows = ops_store.list_workflows(c, shards, limit=limit + 1, status=status, tenant_id=tenant,
                                        waiting_for=waiting_for or None, created_from=start, created_to=end,
                                        after=keyset) if shards else []
    more = len(rows) > limit
    rows = rows[:limit]
    return WorkflowPage(rows, encode_cursor(rows[-1]) if more else None)


def count(
    db: Database, name: str | None, *, tenant_id: object, waiting_for: str | None, created_from: object,
    created_to: object, cap: int | None,
) -> dict[str, int]:
    """``Engine.count_workflows``."""
    tenant = tenant_filter(tenant_id)
    start, end = check_time(created_from, "created_from"), check_time(created_to, "created_to")
    if cap is not None:
        check_limit(cap, 10**9)
    statuses = ("running",) if waiting_for else STATUSES  # only running workflows wait
    with store.wrapped(), db.connection() as c:
        shards = shards_for(db, c, name)
        counts = ops_store.count_by_status(c, shards, statuses, tenant_id=tenant, waiting_for=waiting_for or None,
                                           created_from=start, created_to=end, cap=cap) if shards else {}
    return counts if cap is None else {s: min(n, cap) for s, n in counts.items()}


def dead_letters(
    db: Database, name: str | None, *, tenant_id: object, after: object, limit: int, include_retried: bool,
) -> list[DeadLetter]:
    """``Engine.dead_letters``."""
    check_limit(limit)
    tenant = tenant_filter(tenant_id)
    keyset = None if after is None or after == "" else parse_uuid(after, "after")
    with store.wrapped(), db.connection() as c:
        shards = shards_for(db, c, name)
        return ops_store.list_dead_letters(c, shards, limit=limit, tenant_id=tenant, after=keyset,
                                           include_retried=include_retried) if shards else []


def event_rates(db: Database, window_seconds: int, bucket_seconds: int) -> list[tuple[str, float, int]]:
    """``Engine.event_rates``."""
    check_limit(window_seconds, 7 * 86400)
    check_limit(bucket_seconds, 3600)
    with store.wrapped(), db.connection() as c:
        return ops_store.event_rates(c, ops_store.shard_names(c), window_seconds=window_seconds,
                                     bucket_seconds=bucket_seconds)


# -- retry ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryResult:
    """What ``Engine.retry`` did: the history events it dropped (the end,
    and the failed activity's step when an activity's failure ended it)."""

    workflow_id: UUID
    workflow_name: str
    dropped_events: int
    dropped_step: int | None  # the failed activity's step, re-run from scratch
    reason: str


_ACTIVITY_FAILED_ERROR = re.compile(r"^ActivityFailed: activity (.+) failed after \d+ attempt")


def plan_retry(error: str | None, events: list[dict[str, Any]]) -> tuple[list[UUID], list[UUID], int | None, str]:
    """Which events and activities a retry drops, from a failed workflow's
    error and history rows: (event ids, activity ids, dropped step, why).

    - The end event (``workflow_failed``) always goes.
    - When the failure is an activity that ran out of attempts (the error
      is that ``ActivityFailed`` and the last step recorded is that
      activity's failure), that step goes too, with its activity row: the
      replay schedules it again with fresh attempts.
    - Otherwise (an exception in workflow code, a NonDeterminismError)
      nothing else goes: the replay runs the recorded history again under
      the code deployed now, which either gets past the failure (a fixed
      bug, a compatible change) or fails again the same way."""
    drop_events = [UUID(e["id"]) for e in events if e["event_type"] == "workflow_failed"]
    steps = [e for e in events if e["event_type"] not in ("workflow_failed", "workflow_started")]
    match = _ACTIVITY_FAILED_ERROR.match(error or "")
    if match and steps:
        last = max(event_step(e) for e in steps)
        at_last = [e for e in steps if event_step(e) == last]
        failed = [e for e in at_last if e["event_type"] == "activity_failed"]
        if failed and failed[-1]["event_data"].get("name") == match.group(1):
            activity_ids = [UUID(e["event_data"]["activity_id"]) for e in at_last
                            if e["event_type"] == "activity_scheduled"]
            drop_events += [UUID(e["id"]) for e in at_last]
            return drop_events, activity_ids, last, (
                f"activity {match.group(1)} (step {last}) dropped: it runs again with fresh attempts")
    if (error or "").startswith("NonDeterminismError"):
        return drop_events, [], None, "history kept: the code deployed now replays it again"
    return drop_events, [], None, "history kept: the workflow code runs again from its last recorded step"


def retry(db: Database, name: str, workflow_id: object, tenant_id: object) -> RetryResult:
    """``Engine.retry``."""
    base = base_name(name)
    wid = parse_uuid(workflow_id)
    tenant = tenant_filter(tenant_id)
    shard = sharding.sharded_name(base, wid, db.shards)
    with store.wrapped(), db.connection() as conn, conn.transaction():
        found = ops_store.get_workflow_for_update(conn, shard, wid, tenant)
        if found is None:
            raise WorkflowNotFound(f"no workflow {base}/{wid}")
        owner_tenant, status, error, version = found
        if status != "failed":
            raise WorkflowNotFailed(f"workflow {base}/{wid} is {status}; only a failed workflow can be retried")
        events, activities, step, reason = plan_retry(error, ops_store.history_rows(conn, shard, wid))
        ops_store.delete_events(conn, shard, wid, events)
        if activities:
            ops_store.delete_activities(conn, shard, wid, activities)
        ops_store.reopen_workflow(conn, shard, wid)
        ops_store.mark_dead_letters_retried(conn, shard, wid)
        client_store.enqueue_workflow_task(conn, shard, wid, owner_tenant, uuid6.uuid7(), version)
    return RetryResult(wid, base, len(events), step, reason)


# -- prune --------------------------------------------------------------------------------


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` as seconds."""
    match = _DURATION.match(text or "")
    if not match:
        raise InvalidInput(f"a duration is a number and a unit (s, m, h, d, w), like 30d or 12h; got {text!r}")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def prune(db: Database, older_than_seconds: float, name: str | None, batch_size: int) -> int:
    """``Engine.prune``."""
    if isinstance(older_than_seconds, bool) or not isinstance(older_than_seconds, (int, float)) \
            or not older_than_seconds >= 0:
        raise InvalidInput(f"older_than_seconds must be a number >= 0, got {older_than_seconds!r}")
    check_limit(batch_size, 100_000)
    total = 0
    with store.wrapped(), db.connection() as conn:
        for shard in shards_for(db, conn, name):
            while True:  # one transaction a batch: never a long lock
                n = ops_store.prune_batch(conn, shard, older_than_seconds=float(older_than_seconds), limit=batch_size)
                total += n
                if n < batch_size:
                    break
    return total
