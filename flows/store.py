"""Every SQL statement the library runs, one named function each.

Each statement filters by the shard key (``workflows.name`` or
``workflow_name``), which keeps one workflow's rows on one node under Citus.
psycopg errors are wrapped here and nowhere else.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable, Iterator
from uuid import UUID

import msgspec
import psycopg
import psycopg.errors
from psycopg import sql
from psycopg.rows import tuple_row
import psycopg_pool
import uuid6
from psycopg_pool import ConnectionPool

from flows import codec, history, sharding
from flows.codec import Json
from flows.errors import DatabaseError

log = logging.getLogger("flows.store")

Conn = psycopg.Connection[Any]

# Connection-class errors (SQLSTATE 08), shutdowns and the like: worth a retry
# once the database is back, never a reason to fail a workflow.
PoolTimeout = psycopg_pool.PoolTimeout  # no connection could be had in time
TRANSIENT_ERRORS = (
    psycopg.OperationalError,
    psycopg.errors.SerializationFailure,
    psycopg.errors.DeadlockDetected,
)

# jsonb goes out as the bytes msgspec made (our own Json type only) and comes
# back as text cast in the query, so any connection, ours or a caller's,
# works without changing its adapters.
psycopg.adapters.register_dumper(Json, codec.JsonbDumper)


def connect(dsn: str, *, autocommit: bool = False) -> Conn:
    return psycopg.connect(dsn, autocommit=autocommit)


def open_pool(
    dsn: str, *, min_size: int = 1, max_size: int = 10, name: str = "flows", check: bool = False
) -> ConnectionPool:
    """A pool of autocommit connections (a lone statement costs no BEGIN and
    COMMIT; every multi-statement write says ``conn.transaction()``). Open it
    after fork().

    ``check`` tests each connection as it is handed out (one round trip), so
    a client never gets one the server closed while it sat idle; the worker
    goes without and retries its loop instead."""
    pool = ConnectionPool(
        dsn, min_size=min_size, max_size=max_size, name=name, open=False, timeout=30.0,
        kwargs={"autocommit": True}, check=ConnectionPool.check_connection if check else None,
    )
    pool.open(wait=False)
    return pool


@contextmanager
def wrapped() -> Iterator[None]:
    """Raise psycopg errors as DatabaseError (keeping the original as cause)."""
    try:
        yield
    except psycopg.Error as exc:
        raise DatabaseError(f"{type(exc).__name__}: {exc}") from exc


def ping(conn: Conn) -> None:
    conn.execute("SELECT 1").fetchone()


def notify(conn: Conn, shards: Iterable[str], kind: str = "flows") -> None:
    """Wake the listeners of each shard when this transaction commits.

    PostgreSQL folds identical notifications of one transaction, and a
    transaction holding one takes a global lock at commit: send few."""
    for shard in set(shards):
        conn.execute("SELECT pg_notify(%s, '')", (sharding.channel(shard, kind),))


def listen(conn: Conn, channels: Iterable[str]) -> None:
    """LISTEN on each channel (``conn`` must be in autocommit mode)."""
    for name in channels:
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(name)))


# -- rows ------------------------------------------------------------------


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


_WORKFLOW_COLUMNS = (
    "name, id, tenant_id, version, status, input::text, output::text, error, sequence_num,"
    " waiting_for, created_at, updated_at, completed_at"
)


def _workflow(row: tuple[Any, ...] | None) -> WorkflowRow | None:
    return None if row is None else WorkflowRow(*row)


@dataclass(frozen=True)
class WorkflowTask:
    """A claimed workflow or timer task, with the workflow row locked."""

    task_id: UUID
    task_type: str
    target_id: UUID | None
    workflow: WorkflowRow
    db_now: datetime


@dataclass(frozen=True)
class ActivityTask:
    """A leased activity task and what its attempt needs to run."""

    shard: str
    task_id: UUID
    workflow_id: UUID
    tenant_id: UUID
    activity_id: UUID
    name: str
    sequence_num: int
    input: str | bytes | None
    attempt: int
    lost: int = 0  # earlier deliveries of this task that never reported back


# -- starting, signalling, reading (the client side) ------------------------


def insert_workflow(
    conn: Conn, *, shard: str, workflow_id: UUID, tenant_id: UUID, version: int, input: bytes, event_id: UUID,
    task_id: UUID,
) -> bool:
    """Create a running workflow, its start event and its first task; False
    (and nothing written) if the id exists already."""
    cur = conn.execute(
        "INSERT INTO workflows (name, id, tenant_id, version, status, input)"
        " VALUES (%s, %s, %s, %s, 'running', %s) ON CONFLICT (name, id) DO NOTHING RETURNING id",
        (shard, workflow_id, tenant_id, version, Json(input)),
    )
    if cur.fetchone() is None:
        return False
    insert_event(conn, shard, workflow_id, tenant_id, 0, history.WorkflowStarted(version), event_id)
    enqueue_workflow_task(conn, shard, workflow_id, tenant_id, task_id)
    return True


def get_workflow(conn: Conn, shard: str, workflow_id: UUID, tenant_id: UUID | None) -> WorkflowRow | None:
    """The workflow row, or None if absent or another tenant's (None = any tenant)."""
    cur = conn.cursor(row_factory=tuple_row)
    return _workflow(
        cur.execute(
            f"SELECT {_WORKFLOW_COLUMNS} FROM workflows WHERE name = %s AND id = %s"
            " AND (%s::uuid IS NULL OR tenant_id = %s::uuid)",
            (shard, workflow_id, tenant_id, tenant_id),
        ).fetchone()
    )


def workflow_tenant_and_status(
    conn: Conn, shard: str, workflow_id: UUID, tenant_id: UUID | None, *, lock: str = "SHARE"
) -> tuple[UUID, str, str | None] | None:
    """Lock the workflow row (``SHARE`` waits for a replay in progress) and
    return (tenant_id, status, waiting_for)."""
    assert lock in ("SHARE", "UPDATE")
    row = conn.execute(
        "SELECT tenant_id, status, waiting_for FROM workflows WHERE name = %s AND id = %s"
        f" AND (%s::uuid IS NULL OR tenant_id = %s::uuid) FOR {lock}",
        (shard, workflow_id, tenant_id, tenant_id),
    ).fetchone()
    return None if row is None else (row[0], row[1], row[2])


def count_result_waiter(conn: Conn, shard: str, workflow_id: UUID, tenant_id: UUID | None, delta: int) -> None:
    """Register (+1) or withdraw (-1) a caller waiting for the workflow's end."""
    conn.execute(
        "UPDATE workflows SET result_waiters = GREATEST(0, result_waiters + %s) WHERE name = %s AND id = %s"
        " AND (%s::uuid IS NULL OR tenant_id = %s::uuid)",
        (delta, shard, workflow_id, tenant_id, tenant_id),
    )


def insert_signal(
    conn: Conn, *, shard: str, signal_id: UUID, workflow_id: UUID, tenant_id: UUID, name: str, payload: bytes
) -> None:
    conn.execute(
        "INSERT INTO signals (workflow_name, id, workflow_id, tenant_id, signal_name, payload)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (shard, signal_id, workflow_id, tenant_id, name, Json(payload)),
    )


def enqueue_workflow_task(conn: Conn, shard: str, workflow_id: UUID, tenant_id: UUID, task_id: UUID) -> None:
    """Ask for a replay; a no-op when one is already pending."""
    conn.execute(
        "INSERT INTO task_queue (workflow_name, id, workflow_id, tenant_id, task_type)"
        " VALUES (%s, %s, %s, %s, 'workflow')"
        " ON CONFLICT (workflow_name, workflow_id) WHERE task_type = 'workflow' DO NOTHING",
        (shard, task_id, workflow_id, tenant_id),
    )
    notify(conn, [shard])


def cancel_workflow(conn: Conn, shard: str, workflow_id: UUID, tenant_id: UUID, event_id: UUID) -> None:
    """End a locked, running workflow as cancelled and drop its pending work."""
    row = conn.execute(
        "UPDATE workflows SET status = 'cancelled', error = 'cancelled', waiting_for = NULL,"
        " sequence_num = sequence_num + 1, updated_at = now(), completed_at = now()"
        " WHERE name = %s AND id = %s RETURNING sequence_num, result_waiters",
        (shard, workflow_id),
    ).fetchone()
    assert row is not None
    conn.execute("DELETE FROM task_queue WHERE workflow_name = %s AND workflow_id = %s", (shard, workflow_id))
    conn.execute(
        "UPDATE activities SET status = 'cancelled', updated_at = now()"
        " WHERE workflow_name = %s AND workflow_id = %s AND status IN ('scheduled', 'running')",
        (shard, workflow_id),
    )
    insert_event(conn, shard, workflow_id, tenant_id, row[0], history.WorkflowCancelled(), event_id)
    if row[1]:
        notify(conn, [shard], kind="flows-done")


# -- the worker side ----------------------------------------------------------


def claim_workflow_task(conn: Conn, shards: list[str]) -> WorkflowTask | None:
    """Claim one due workflow or timer task and lock its workflow row, both
    skipping rows another transaction holds: two replays of one workflow
    never overlap, and a claim never waits.

    Shards are tried in the order given, each by its own index-ordered scan
    (oldest due first) that stops at the first free task: one query over
    ``workflow_name = ANY(...)`` would sort every due task to return one."""
    row = conn.execute(
        "SELECT c.* FROM unnest(%s::text[]) AS s(shard) CROSS JOIN LATERAL ("
        "  SELECT t.id, t.task_type, t.target_id, now(),"
        "   w.name, w.id, w.tenant_id, w.version, w.status, w.input::text, w.output::text, w.error,"
        "   w.sequence_num, w.waiting_for, w.created_at, w.updated_at, w.completed_at"
        "  FROM task_queue t JOIN workflows w ON w.name = t.workflow_name AND w.id = t.workflow_id"
        "  WHERE t.workflow_name = s.shard AND t.task_type IN ('workflow', 'timer')"
        "  AND t.visibility_timeout <= now()"
        "  ORDER BY t.visibility_timeout LIMIT 1"
        "  FOR UPDATE OF t, w SKIP LOCKED) c"
        " LIMIT 1",
        (shards,),
    ).fetchone()
    if row is None:
        return None
    return WorkflowTask(row[0], row[1], row[2], WorkflowRow(*row[4:]), row[3])


def delete_task(conn: Conn, shard: str, task_id: UUID) -> None:
    conn.execute("DELETE FROM task_queue WHERE workflow_name = %s AND id = %s", (shard, task_id))


def fire_timer(conn: Conn, shard: str, workflow_id: UUID, tenant_id: UUID, timer_id: UUID, event_id: UUID) -> None:
    row = conn.execute(
        "UPDATE timers SET fired = true, fired_at = now()"
        " WHERE workflow_name = %s AND id = %s AND NOT fired RETURNING sequence_num",
        (shard, timer_id),
    ).fetchone()
    if row is not None:
        insert_event(conn, shard, workflow_id, tenant_id, row[0], history.TimerFired(timer_id), event_id)


def load_replay_state(
    conn: Conn, shard: str, workflow_id: UUID
) -> tuple[list[tuple[int, str, str]], list[tuple[UUID, str, str]]]:
    """The workflow's events in order, and its unconsumed signals oldest
    first, read in one statement."""
    rows = conn.execute(
        "(SELECT false AS signal, sequence_num, NULL::uuid AS id, event_type, event_data::text, created_at,"
        "  id AS tiebreak FROM history_events WHERE workflow_name = %s AND workflow_id = %s)"
        " UNION ALL"
        " (SELECT true, NULL, id, signal_name, payload::text, created_at, id FROM signals"
        "  WHERE workflow_name = %s AND workflow_id = %s AND NOT consumed)"
        " ORDER BY signal, sequence_num, created_at, tiebreak",
        (shard, workflow_id, shard, workflow_id),
    ).fetchall()
    events = [(seq, kind, data) for is_signal, seq, _, kind, data, _, _ in rows if not is_signal]
    signals = [(sid, name, data) for is_signal, _, sid, name, data, _, _ in rows if is_signal]
    return events, signals


def insert_events(
    conn: Conn, shard: str, workflow_id: UUID, tenant_id: UUID, events: list[tuple[int, msgspec.Struct]]
) -> None:
    """Append several events to the history in one statement."""
    if not events:
        return
    conn.execute(
        "INSERT INTO history_events (workflow_name, id, workflow_id, tenant_id, sequence_num, event_type, event_data)"
        " SELECT %s, e.id, %s, %s, e.seq, e.kind, e.data::jsonb"
        " FROM unnest(%s::uuid[], %s::int[], %s::text[], %s::text[]) WITH ORDINALITY AS e(id, seq, kind, data, n)"
        " ORDER BY e.n",
        (shard, workflow_id, tenant_id, [uuid6.uuid7() for _ in events], [seq for seq, _ in events],
         [history.event_type(e) for _, e in events], [codec.encode(e).decode() for _, e in events]),
    )


def insert_event(
    conn: Conn, shard: str, workflow_id: UUID, tenant_id: UUID, seq: int, event: msgspec.Struct, event_id: UUID
) -> None:
    conn.execute(
        "INSERT INTO history_events (workflow_name, id, workflow_id, tenant_id, sequence_num, event_type, event_data)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (shard, event_id, workflow_id, tenant_id, seq, history.event_type(event), Json(codec.encode(event))),
    )


def insert_activity(
    conn: Conn, *, shard: str, activity_id: UUID, workflow_id: UUID, tenant_id: UUID, name: str, seq: int,
    input: bytes, max_attempts: int, lease_seconds: float, task_id: UUID, lease_owner: str | None = None,
) -> None:
    """Schedule an activity: its row and its task, due at once; or, with
    ``lease_owner``, already leased to that worker (which runs it next,
    without a round trip through the queue)."""
    conn.execute(
        "INSERT INTO activities"
        " (workflow_name, id, workflow_id, tenant_id, name, sequence_num, input, max_attempts, status)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (shard, activity_id, workflow_id, tenant_id, name, seq, Json(input), max_attempts,
         "scheduled" if lease_owner is None else "running"),
    )
    conn.execute(
        "INSERT INTO task_queue"
        " (workflow_name, id, workflow_id, tenant_id, task_type, target_id, lease_seconds, lease_owner,"
        " deliveries, visibility_timeout)"
        " VALUES (%s, %s, %s, %s, 'activity', %s, %s, %s, %s,"
        " CASE WHEN %s::text IS NULL THEN now() ELSE now() + %s * interval '1 second' END)",
        (shard, task_id, workflow_id, tenant_id, activity_id, lease_seconds, lease_owner,
         0 if lease_owner is None else 1, lease_owner, lease_seconds),
    )


def consume_signal(conn: Conn, shard: str, signal_id: UUID, seq: int) -> None:
    conn.execute(
        "UPDATE signals SET consumed = true, consumed_seq = %s, consumed_at = now()"
        " WHERE workflow_name = %s AND id = %s",
        (seq, shard, signal_id),
    )


def insert_timer(
    conn: Conn, *, shard: str, timer_id: UUID, workflow_id: UUID, tenant_id: UUID, seq: int, fire_at: datetime,
    task_id: UUID,
) -> None:
    """A timer row and its task, due (by the database clock) at ``fire_at``."""
    conn.execute(
        "INSERT INTO timers (workflow_name, id, workflow_id, tenant_id, sequence_num, fire_at)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (shard, timer_id, workflow_id, tenant_id, seq, fire_at),
    )
    conn.execute(
        "INSERT INTO task_queue (workflow_name, id, workflow_id, tenant_id, task_type, target_id, visibility_timeout)"
        " VALUES (%s, %s, %s, %s, 'timer', %s, %s)",
        (shard, task_id, workflow_id, tenant_id, timer_id, fire_at),
    )


def _results(result: tuple[int, bytes] | None) -> Json:
    """``{"<seq>": output}``, merged into ``workflows.activity_results``."""
    return Json(b"{}" if result is None else b'{"%d":%s}' % (result[0], result[1]))


def update_workflow_running(
    conn: Conn, shard: str, workflow_id: UUID, seq: int, waiting_for: str | None,
    result: tuple[int, bytes] | None = None,
) -> None:
    """Where a running workflow now stands; ``result`` is the (seq, output)
    of the activity that just completed, if one did."""
    conn.execute(
        "UPDATE workflows SET sequence_num = GREATEST(sequence_num, %s), waiting_for = %s, updated_at = now(),"
        " activity_results = activity_results || %s WHERE name = %s AND id = %s",
        (seq, waiting_for, _results(result), shard, workflow_id),
    )


def finish_workflow(
    conn: Conn, *, shard: str, workflow_id: UUID, tenant_id: UUID, seq: int, output: bytes | None,
    error: str | None, event_id: UUID, dlq_id: UUID, result: tuple[int, bytes] | None = None,
) -> None:
    """End the workflow: completed with ``output``, or failed with ``error``
    (then also a dead-letter row). Drops whatever work it still had queued."""
    status = "failed" if error is not None else "completed"
    row = conn.execute(
        "UPDATE workflows SET status = %s, output = %s, error = %s, waiting_for = NULL,"
        " sequence_num = GREATEST(sequence_num, %s) + 1, updated_at = now(), completed_at = now(),"
        " activity_results = activity_results || %s WHERE name = %s AND id = %s"
        " RETURNING sequence_num, result_waiters",
        (status, None if output is None else Json(output), error, seq, _results(result), shard, workflow_id),
    ).fetchone()
    assert row is not None
    event: msgspec.Struct
    if error is None:
        event = history.WorkflowCompleted(msgspec.Raw(output or b"null"))
    else:
        event = history.WorkflowFailed(error)
        conn.execute(
            "INSERT INTO dead_letter_queue (workflow_name, id, workflow_id, tenant_id, error, input, sequence_num)"
            " SELECT name, %s, id, tenant_id, %s, input, sequence_num FROM workflows WHERE name = %s AND id = %s",
            (dlq_id, error, shard, workflow_id),
        )
    conn.execute(
        "DELETE FROM task_queue WHERE workflow_name = %s AND workflow_id = %s AND task_type <> 'workflow'",
        (shard, workflow_id),
    )
    insert_event(conn, shard, workflow_id, tenant_id, row[0], event, event_id)
    if row[1]:  # someone waits in Engine.result()
        notify(conn, [shard], kind="flows-done")


def claim_activity_tasks(conn: Conn, shards: list[str], owner: str, limit: int) -> list[ActivityTask]:
    """Lease up to ``limit`` due activity tasks to ``owner`` (for each task's
    lease_seconds) and mark their activities running."""
    rows = conn.execute(
        "WITH claimed AS ("
        "  UPDATE task_queue t SET lease_owner = %s, deliveries = t.deliveries + 1,"
        "    visibility_timeout = now() + t.lease_seconds * interval '1 second'"
        "  WHERE (t.workflow_name, t.id) IN ("
        "    SELECT workflow_name, id FROM task_queue"
        "    WHERE workflow_name = ANY(%s) AND task_type = 'activity' AND visibility_timeout <= now()"
        "    ORDER BY visibility_timeout LIMIT %s FOR UPDATE SKIP LOCKED)"
        "  RETURNING t.workflow_name, t.id, t.workflow_id, t.tenant_id, t.target_id, t.deliveries)"
        " UPDATE activities a SET status = 'running', updated_at = now()"
        " FROM claimed c WHERE a.workflow_name = c.workflow_name AND a.id = c.target_id"
        " RETURNING c.workflow_name, c.id, c.workflow_id, c.tenant_id, a.id, a.name, a.sequence_num,"
        " a.input::text, a.attempt, c.deliveries - 1",
        (owner, shards, limit),
    ).fetchall()
    return [ActivityTask(*row) for row in rows]


def lock_and_take_leased_task(
    conn: Conn, shard: str, workflow_id: UUID, task_id: UUID, owner: str
) -> tuple[WorkflowRow, datetime] | None:
    """Lock the workflow row for a replay and delete our leased task, in one
    round trip. None if the lease was lost (it expired and another worker
    took the task, or the workflow ended and dropped it)."""
    locked = conn.execute(
        f"SELECT {_WORKFLOW_COLUMNS}, now() FROM workflows WHERE name = %s AND id = %s FOR UPDATE",
        (shard, workflow_id),
    )
    taken = conn.execute(
        "DELETE FROM task_queue WHERE workflow_name = %s AND id = %s AND lease_owner = %s RETURNING id",
        (shard, task_id, owner),
    )
    row = locked.fetchone()
    if row is None or taken.fetchone() is None:
        return None
    return WorkflowRow(*row[:-1]), row[-1]


def complete_activity(conn: Conn, *, shard: str, activity_id: UUID, output: bytes, attempt: int) -> None:
    """Record an activity's output on its row (its history event and
    ``workflows.activity_results`` are written with the replay that follows)."""
    conn.execute(
        "UPDATE activities SET status = 'completed', output = %s, attempt = %s, error = NULL,"
        " next_retry_at = NULL, updated_at = now(), completed_at = now()"
        " WHERE workflow_name = %s AND id = %s",
        (Json(output), attempt, shard, activity_id),
    )


def retry_activity(
    conn: Conn, *, shard: str, workflow_id: UUID, tenant_id: UUID, activity_id: UUID, seq: int, name: str,
    error: str, attempt: int, delay_seconds: float, lease_seconds: float, event_id: UUID, task_id: UUID,
) -> None:
    """Record a failed attempt and queue the next one ``delay_seconds`` later."""
    conn.execute(
        "UPDATE activities SET status = 'scheduled', attempt = %s, error = %s,"
        " next_retry_at = now() + %s * interval '1 second', updated_at = now()"
        " WHERE workflow_name = %s AND id = %s",
        (attempt + 1, error, delay_seconds, shard, activity_id),
    )
    conn.execute(
        "INSERT INTO task_queue"
        " (workflow_name, id, workflow_id, tenant_id, task_type, target_id, lease_seconds, visibility_timeout)"
        " VALUES (%s, %s, %s, %s, 'activity', %s, %s, now() + %s * interval '1 second')",
        (shard, task_id, workflow_id, tenant_id, activity_id, lease_seconds, delay_seconds),
    )
    insert_event(
        conn, shard, workflow_id, tenant_id, seq, history.ActivityRetrying(name, attempt, error, delay_seconds),
        event_id,
    )
    notify(conn, [shard])


def fail_activity(conn: Conn, *, shard: str, activity_id: UUID, error: str, attempt: int) -> None:
    """The last attempt failed (the failure goes to the workflow, with the
    replay that follows)."""
    conn.execute(
        "UPDATE activities SET status = 'failed', attempt = %s, error = %s, next_retry_at = NULL,"
        " updated_at = now(), completed_at = now() WHERE workflow_name = %s AND id = %s",
        (attempt, error, shard, activity_id),
    )


def next_due(conn: Conn, shards: list[str], *, activities: bool = True) -> float | None:
    """Seconds from now (by the database clock) until the earliest task of
    these shards is due (leaving activity tasks out unless ``activities``);
    <= 0 when one is due already, None when none exist."""
    row = conn.execute(
        "SELECT extract(epoch FROM min(visibility_timeout) - clock_timestamp())"
        " FROM task_queue WHERE workflow_name = ANY(%s) AND (%s OR task_type <> 'activity')",
        (shards, activities),
    ).fetchone()
    return None if row is None or row[0] is None else float(row[0])


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


# -- inspection (the CLI) -------------------------------------------------------


def count_workflows(conn: Conn) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for name, status, n in conn.execute("SELECT name, status, count(*) FROM workflows GROUP BY 1, 2 ORDER BY 1, 2"):
        counts.setdefault(name, {})[status] = n
    return counts


def count_tasks(conn: Conn) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for name, kind, n in conn.execute(
        "SELECT workflow_name, task_type, count(*) FROM task_queue GROUP BY 1, 2 ORDER BY 1, 2"
    ):
        counts.setdefault(name, {})[kind] = n
    return counts


# -- the worker fleet: heartbeats and dead workers' leases (supervisor/) --------
#
# worker_heartbeats is fleet metadata keyed by the lease owner, not by a shard
# key (see migrations/002_workers.sql). Statements on task_queue made on its
# behalf still filter by the shard names it records.


def connect_supervisor(dsn: str, *, timeout_seconds: float) -> Conn:
    """An autocommit connection for the supervisor, failing fast when the
    server does not answer (a supervisor must not hang on the database)."""
    return psycopg.connect(dsn, autocommit=True, connect_timeout=max(1, round(timeout_seconds)))


def fleet_schema_ready(conn: Conn) -> bool:
    """Whether the migrations the fleet needs have been applied."""
    row = conn.execute("SELECT to_regclass('worker_heartbeats') IS NOT NULL").fetchone()
    return bool(row and row[0])


def register_worker(conn: Conn, *, owner: str, pid: int, host: str, shard_group: str, shards: list[str]) -> None:
    """Announce a worker (a new process under ``owner`` starts afresh)."""
    conn.execute(
        "INSERT INTO worker_heartbeats (owner, pid, host, shard_group, shards) VALUES (%s, %s, %s, %s, %s)"
        " ON CONFLICT (owner) DO UPDATE SET pid = EXCLUDED.pid, host = EXCLUDED.host,"
        " shard_group = EXCLUDED.shard_group, shards = EXCLUDED.shards, started_at = now(), last_beat = now()",
        (owner, pid, host, shard_group, shards),
    )


def beat_worker(conn: Conn, owner: str) -> bool:
    """Refresh the worker's heartbeat; False if its row is gone (a supervisor
    took it for dead and released its leases): register again."""
    return conn.execute("UPDATE worker_heartbeats SET last_beat = now() WHERE owner = %s", (owner,)).rowcount == 1


def unregister_worker(conn: Conn, owner: str) -> None:
    conn.execute("DELETE FROM worker_heartbeats WHERE owner = %s", (owner,))


def release_worker(conn: Conn, owner: str, shards: list[str]) -> int:
    """A worker is known dead: make its leased tasks due at once (waking the
    shards' workers) and forget its heartbeat, in one transaction. Returns
    the number of tasks released."""
    with conn.transaction():
        released = release_leases(conn, shards, owner)
        unregister_worker(conn, owner)
    return released


def release_stale_workers(conn: Conn, stale_seconds: float, alive: list[str]) -> list[tuple[str, int]]:
    """Take the workers whose last heartbeat (by the database clock) is older
    than ``stale_seconds``, except the ``alive`` owners, for dead: release
    their leases and drop their rows. Two supervisors sweeping at once each
    take a row at most once (DELETE ... RETURNING). Returns (owner, released)."""
    out: list[tuple[str, int]] = []
    if conn.execute(  # the usual answer, in one read-only statement: none
        "SELECT 1 FROM worker_heartbeats WHERE last_beat < now() - %s * interval '1 second'"
        " AND NOT (owner = ANY(%s)) LIMIT 1",
        (stale_seconds, alive),
    ).fetchone() is None:
        return out
    with conn.transaction():
        rows = conn.execute(
            "DELETE FROM worker_heartbeats WHERE last_beat < now() - %s * interval '1 second'"
            " AND NOT (owner = ANY(%s)) RETURNING owner, shards",
            (stale_seconds, alive),
        ).fetchall()
        for owner, shards in rows:
            out.append((owner, release_leases(conn, list(shards), owner)))
    return out
