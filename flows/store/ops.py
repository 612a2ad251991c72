"""The operator's queries (the console, the CLI, metrics, through
flows.ops): listing, inspecting, counting, retrying, pruning.

Reads for people, not for the fleet: each statement still filters by the
shard key, and lists walk one index-ordered scan per shard (a UNION ALL of
parts, one per shard) so a page costs its own rows, not the table's.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Callable, Iterable
from uuid import UUID

import msgspec
from psycopg import sql
from psycopg.rows import tuple_row

from flows.store.connections import Conn
from flows.store.statements import text_array


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


class WorkflowSummary(msgspec.Struct, frozen=True):
    """A row of the workflow list (no input or output: a page holds up to 1,000)."""

    name: str
    id: UUID
    tenant_id: UUID
    version: int
    status: str
    waiting_for: str | None
    error: str | None  # its first 300 characters
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None


def shard_names(conn: Conn) -> list[str]:
    """Every sharded workflow name in use, by a skip scan of the primary key
    (one probe a name, not a read of every workflow): ``flows_shard_names``."""
    return [r[0] for r in conn.execute("SELECT flows_shard_names()").fetchall()]


def _per_shard(part: Callable[[str], sql.Composable], shards: Iterable[str]) -> sql.Composable:
    """``part(shard)`` for each shard, UNION ALL: each part one index-ordered
    scan of one shard value, which Citus routes to that shard (it refuses a
    LATERAL join to unnest(shards))."""
    return sql.SQL(" UNION ALL ").join(sql.SQL("({})").format(part(shard)) for shard in shards)


def _on(query: str) -> Callable[[str], sql.Composable]:
    """A part for ``_per_shard``: ``query`` with ``{shard}`` the shard's name."""
    template = sql.SQL(query)
    return lambda shard: template.format(shard=sql.Literal(shard))


def _on_shard(column: str, shard: str, clauses: list[sql.Composable]) -> sql.Composable:
    """``column`` (the shard key, as written in the query) is ``shard``, and
    every one of ``clauses``: the WHERE of one part of ``_per_shard``."""
    return sql.SQL(" AND ").join([sql.SQL("{} = {}").format(sql.SQL(column), sql.Literal(shard)), *clauses])


def _list_filters(
    *, status: str | None, tenant_id: UUID | None, waiting_for: str | None,
    created_from: datetime | None, created_to: datetime | None, after: tuple[datetime, UUID] | None,
) -> tuple[list[sql.Composable], dict[str, Any]]:
    """The list's WHERE clauses for the filters that are set (only those: a
    generic plan of "x IS NULL OR ..." would not use the indexes), and their
    parameters."""
    clauses: list[sql.Composable] = []
    params: dict[str, Any] = {}
    if status is not None:
        clauses.append(sql.SQL("status = %(status)s"))
        params["status"] = status
    if tenant_id is not None:
        clauses.append(sql.SQL("tenant_id = %(tenant)s"))
        params["tenant"] = tenant_id
    if waiting_for is not None:  # "signal" matches every signal:<name>; "signal:x" that one
        clauses.append(sql.SQL("(waiting_for = %(wait)s OR waiting_for LIKE %(wait_prefix)s)"))
        params["wait"] = waiting_for
        params["wait_prefix"] = waiting_for.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + ":%"
    if created_from is not None:
        clauses.append(sql.SQL("created_at >= %(from)s"))
        params["from"] = created_from
    if created_to is not None:
        clauses.append(sql.SQL("created_at < %(to)s"))
        params["to"] = created_to
    if after is not None:
        clauses.append(sql.SQL("(created_at, id) < (%(after_at)s, %(after_id)s)"))
        params["after_at"], params["after_id"] = after
    return clauses, params


def list_workflows(
    conn: Conn, shards: list[str], *, limit: int, status: str | None = None, tenant_id: UUID | None = None,
    waiting_for: str | None = None, created_from: datetime | None = None, created_to: datetime | None = None,
    after: tuple[datetime, UUID] | None = None,
) -> list[WorkflowSummary]:
    """Workflows of these shards, newest first (created_at, id), after the
    keyset ``after``: each shard's first ``limit`` in index order
    (workflows_by_created, or workflows_by_status with a status), merged."""
    if not shards:
        return []
    filters, params = _list_filters(status=status, tenant_id=tenant_id, waiting_for=waiting_for,
                                    created_from=created_from, created_to=created_to, after=after)
    params["limit"] = limit

    def part(shard: str) -> sql.Composable:
        return sql.SQL(
            "SELECT name, id, tenant_id, version, status, waiting_for, left(error, 300) AS error, created_at,"
            " updated_at, completed_at FROM workflows WHERE {} ORDER BY created_at DESC, id DESC LIMIT %(limit)s"
        ).format(_on_shard("name", shard, filters))

    query = sql.SQL("SELECT * FROM ({}) w ORDER BY w.created_at DESC, w.id DESC LIMIT %(limit)s").format(
        _per_shard(part, shards))
    cur = conn.cursor(row_factory=tuple_row)
    return [WorkflowSummary(*row) for row in cur.execute(query, params)]


def count_by_status(
    conn: Conn, shards: list[str], statuses: tuple[str, ...], *, tenant_id: UUID | None = None,
    waiting_for: str | None = None, created_from: datetime | None = None, created_to: datetime | None = None,
    cap: int | None = None,
) -> dict[str, int]:
    """How many workflows of these shards are in each of ``statuses`` (under
    the list's other filters), by one scan of workflows_by_status per shard
    and status that stops after ``cap`` rows (None: counts them all)."""
    if not shards or not statuses:
        return {}
    filters, params = _list_filters(status=None, tenant_id=tenant_id, waiting_for=waiting_for,
                                    created_from=created_from, created_to=created_to, after=None)
    params["cap"] = cap

    def counted(status: str) -> Callable[[str], sql.Composable]:
        def part(shard: str) -> sql.Composable:
            return sql.SQL("SELECT {status} AS status, count(*) AS n FROM (SELECT 1 FROM workflows WHERE {where}"
                           " AND status = {status} LIMIT %(cap)s) x").format(
                status=sql.Literal(status), where=_on_shard("name", shard, filters))
        return part

    query = sql.SQL("SELECT status, sum(n)::bigint FROM ({}) c GROUP BY status").format(
        sql.SQL(" UNION ALL ").join(_per_shard(counted(status), shards) for status in statuses))
    return {status: int(n) for status, n in conn.execute(query, params) if n}


def workflow_document(conn: Conn, shard: str, workflow_id: UUID, tenant_id: UUID | None) -> str | None:
    """Everything recorded about one workflow as one JSON document: the row
    (without the activity_results map), its history in order, activities,
    signals, timers, pending tasks (with seconds until due), dead letters,
    the workers whose heartbeat names its shard, and the database clock.
    Rows go out whole (``to_jsonb``), so columns added later show up. None
    when this tenant (None = any) has no such workflow."""
    key = {"shard": shard, "id": workflow_id, "tenant": tenant_id}

    def one(query: str) -> str:
        row = conn.execute(query, key).fetchone()
        assert row is not None
        return str(row[0])

    # One statement per table, each on one shard value (Citus routes each; it
    # answers a join of them with a coordinator table wrongly, with no error).
    found = conn.execute(
        "SELECT (to_jsonb(w) - 'activity_results')::text FROM workflows w WHERE w.name = %(shard)s AND w.id = %(id)s"
        " AND (%(tenant)s::uuid IS NULL OR w.tenant_id = %(tenant)s::uuid)", key,
    ).fetchone()
    if found is None:
        return None
    parts = {
        "now": one("SELECT to_json(now())::text"),
        "workflow": found[0],
        "history": one("SELECT coalesce(json_agg(to_jsonb(e) ORDER BY e.sequence_num, e.created_at, e.id), '[]')::text"
                       " FROM history_events e WHERE e.workflow_name = %(shard)s AND e.workflow_id = %(id)s"),
        "activities": one("SELECT coalesce(json_agg(to_jsonb(a) ORDER BY a.sequence_num, a.created_at), '[]')::text"
                          " FROM activities a WHERE a.workflow_name = %(shard)s AND a.workflow_id = %(id)s"),
        "signals": one("SELECT coalesce(json_agg(to_jsonb(g) ORDER BY g.created_at, g.id), '[]')::text"
                       " FROM signals g WHERE g.workflow_name = %(shard)s AND g.workflow_id = %(id)s"),
        "timers": one("SELECT coalesce(json_agg(to_jsonb(t) ORDER BY t.sequence_num), '[]')::text"
                      " FROM timers t WHERE t.workflow_name = %(shard)s AND t.workflow_id = %(id)s"),
        "tasks": one("SELECT coalesce(json_agg(to_jsonb(q) || jsonb_build_object('due_in_seconds',"
                     " extract(epoch FROM q.visibility_timeout - now())) ORDER BY q.visibility_timeout), '[]')::text"
                     " FROM task_queue q WHERE q.workflow_name = %(shard)s AND q.workflow_id = %(id)s"),
        "dead_letters": one("SELECT coalesce(json_agg(to_jsonb(d) - 'input' ORDER BY d.id), '[]')::text"
                            " FROM dead_letter_queue d WHERE d.workflow_name = %(shard)s AND d.workflow_id = %(id)s"),
        "workers": one("SELECT coalesce(json_agg(json_build_object('owner', h.owner, 'host', h.host, 'pid', h.pid,"
                       " 'last_beat', h.last_beat, 'beat_age_seconds', extract(epoch FROM now() - h.last_beat))"
                       " ORDER BY h.owner), '[]')::text FROM worker_heartbeats h WHERE %(shard)s = ANY(h.shards)"),
    }
    return "{" + ",".join(f"{msgspec.json.encode(k).decode()}:{v}" for k, v in parts.items()) + "}"


class DeadLetter(msgspec.Struct, frozen=True):
    """A failed workflow's dead-letter row, with its workflow's status now."""

    workflow_name: str
    id: UUID
    workflow_id: UUID
    tenant_id: UUID
    error: str
    created_at: datetime
    retried_at: datetime | None
    status: str | None  # the workflow's current status (running again after a retry)


def list_dead_letters(
    conn: Conn, shards: list[str], *, limit: int, tenant_id: UUID | None = None, after: UUID | None = None,
    include_retried: bool = False,
) -> list[DeadLetter]:
    """Dead letters of these shards, newest first (by id, a UUIDv7 made when
    the workflow failed), one primary-key scan per shard."""
    if not shards:
        return []
    clauses: list[sql.Composable] = []
    if tenant_id is not None:
        clauses.append(sql.SQL("d.tenant_id = %(tenant)s"))
    if after is not None:
        clauses.append(sql.SQL("d.id < %(after)s"))
    if not include_retried:
        clauses.append(sql.SQL("d.retried_at IS NULL"))

    def part(shard: str) -> sql.Composable:
        return sql.SQL(
            "SELECT d.workflow_name, d.id, d.workflow_id, d.tenant_id, d.error, d.created_at, d.retried_at, w.status"
            " FROM dead_letter_queue d LEFT JOIN workflows w ON w.name = d.workflow_name AND w.id = d.workflow_id"
            " WHERE {} ORDER BY d.id DESC LIMIT %(limit)s").format(_on_shard("d.workflow_name", shard, clauses))

    query = sql.SQL("SELECT * FROM ({}) x ORDER BY x.id DESC LIMIT %(limit)s").format(_per_shard(part, shards))
    cur = conn.cursor(row_factory=tuple_row)
    params = {"tenant": tenant_id, "after": after, "limit": limit}
    return [DeadLetter(*row) for row in cur.execute(query, params)]


class FleetWorker(msgspec.Struct, frozen=True):
    owner: str
    pid: int
    host: str
    shard_group: str
    shards: list[str]
    started_at: datetime
    last_beat: datetime
    beat_age_seconds: float
    leases: int  # tasks leased to it now


def fleet_workers(conn: Conn) -> list[FleetWorker]:
    """Every worker with a heartbeat row, with the leases it holds (counted
    per shard by the lease-owner index, apart from the heartbeats: the
    heartbeats table is the coordinator's own under Citus)."""
    cur = conn.cursor(row_factory=tuple_row)
    beats = cur.execute(
        "SELECT h.owner, h.pid, h.host, h.shard_group, h.shards, h.started_at, h.last_beat,"
        " extract(epoch FROM now() - h.last_beat)::float8 FROM worker_heartbeats h ORDER BY h.host, h.pid"
    ).fetchall()
    shards = sorted({s for row in beats for s in row[4]})
    leases: dict[str, int] = {}
    if shards:
        part = _on("SELECT lease_owner, count(*) AS n FROM task_queue WHERE workflow_name = {shard}"
                   " AND lease_owner IS NOT NULL AND visibility_timeout > now() GROUP BY lease_owner")
        for owner, n in conn.execute(sql.SQL("SELECT lease_owner, sum(n)::int FROM ({}) l GROUP BY lease_owner")
                                     .format(_per_shard(part, shards))):
            leases[owner] = int(n)
    return [FleetWorker(owner, pid, host, group, served, started, beat, age, leases.get(owner, 0))
            for owner, pid, host, group, served, started, beat, age in beats]


class ShardQueue(msgspec.Struct, frozen=True):
    shard: str
    tasks: int  # every task of the shard, due or not
    due: int  # due now and not leased
    leased: int  # leased to a worker, lease still running
    oldest_due_seconds: float | None  # how long the oldest due task has waited (the shard's lag)


def shard_queues(conn: Conn, shards: list[str]) -> list[ShardQueue]:
    """Per shard: tasks queued, due, leased, and the age of the oldest due one."""
    if not shards:
        return []
    part = _on(
        "SELECT {shard}::text AS shard, count(*)::int AS n,"
        " count(*) FILTER (WHERE visibility_timeout <= now())::int AS due,"
        " count(*) FILTER (WHERE lease_owner IS NOT NULL AND visibility_timeout > now())::int AS leased,"
        " extract(epoch FROM now() - min(visibility_timeout) FILTER (WHERE visibility_timeout <= now()))::float8"
        " AS oldest FROM task_queue WHERE workflow_name = {shard}")
    cur = conn.cursor(row_factory=tuple_row)
    rows = cur.execute(sql.SQL("SELECT * FROM ({}) q ORDER BY q.shard").format(_per_shard(part, shards))).fetchall()
    return [ShardQueue(*row) for row in rows]


def event_rates(conn: Conn, shards: list[str], *, window_seconds: int, bucket_seconds: int) -> list[tuple[str, float, int]]:
    """History events recorded per shard per ``bucket_seconds`` over the last
    ``window_seconds`` (by the database clock): (shard, bucket start as epoch
    seconds, events). Event ids are UUIDv7, so "recorded since" is a range
    of the primary key: the lower bound is the UUID of the window's start."""
    rows = conn.execute(
        "WITH b AS (SELECT lpad(to_hex((extract(epoch FROM now()) * 1000)::bigint - %(window)s * 1000), 12, '0') AS h)"
        " SELECT e.workflow_name, (floor(extract(epoch FROM e.created_at) / %(bucket)s) * %(bucket)s)::float8 AS t,"
        " count(*)::int FROM history_events e, b"
        " WHERE e.workflow_name = ANY(%(shards)s::text[])"
        " AND e.id >= (substr(b.h, 1, 8) || '-' || substr(b.h, 9, 4) || '-0000-0000-000000000000')::uuid"
        " AND e.created_at >= now() - %(window)s * interval '1 second'"
        " GROUP BY 1, 2 ORDER BY 2, 1",
        {"window": window_seconds, "bucket": bucket_seconds, "shards": text_array(tuple(shards))},
    ).fetchall()
    return [(shard, float(t), int(n)) for shard, t, n in rows]


class ShardGauges(msgspec.Struct, frozen=True):
    shard: str
    due: int  # tasks due now and not leased
    oldest_due_seconds: float | None  # how long the oldest due task has waited
    dead_letters: int  # not retried
    workers: int  # with a heartbeat fresher than the stale limit, serving the shard


def shard_gauges(conn: Conn, stale_seconds: float) -> list[ShardGauges]:
    """The metrics' gauges for every shard that has workflows or a worker:
    the shards by a skip scan of the workflows' key (and the heartbeats'),
    then per shard its due tasks, the oldest's age and its dead letters
    (one statement, a part per shard) and the live workers serving it."""
    cur = conn.cursor(row_factory=tuple_row)
    beats = cur.execute(
        "SELECT shards FROM worker_heartbeats WHERE last_beat > now() - %s * interval '1 second'", (stale_seconds,),
    ).fetchall()
    workers: dict[str, int] = {}
    for (served,) in beats:
        for shard in served:
            workers[shard] = workers.get(shard, 0) + 1
    listed = [row[0] for row in cur.execute(
        "SELECT flows_shard_names() UNION SELECT unnest(shards) FROM worker_heartbeats").fetchall()]
    shards = sorted(set(listed))
    if not shards:
        return []
    part = _on(
        "SELECT {shard}::text AS shard,"
        " (SELECT count(*) FROM task_queue t WHERE t.workflow_name = {shard} AND t.visibility_timeout <= now())::int,"
        " (SELECT extract(epoch FROM now() - min(t.visibility_timeout)) FROM task_queue t"
        "   WHERE t.workflow_name = {shard} AND t.visibility_timeout <= now())::float8,"
        " (SELECT count(*) FROM dead_letter_queue d WHERE d.workflow_name = {shard} AND d.retried_at IS NULL)::int")
    rows = cur.execute(sql.SQL("SELECT * FROM ({}) g ORDER BY 1").format(_per_shard(part, shards))).fetchall()
    return [ShardGauges(shard, due, oldest, dead, workers.get(shard, 0)) for shard, due, oldest, dead in rows]


def history_rows(conn: Conn, shard: str, workflow_id: UUID) -> list[dict[str, Any]]:
    """A workflow's history events, whole rows in order."""
    row = conn.execute(
        "SELECT coalesce(json_agg(to_jsonb(e) ORDER BY e.sequence_num, e.created_at, e.id), '[]')::text"
        " FROM history_events e WHERE e.workflow_name = %s AND e.workflow_id = %s",
        (shard, workflow_id),
    ).fetchone()
    assert row is not None
    return msgspec.json.decode(row[0])  # type: ignore[no-any-return]


def delete_events(conn: Conn, shard: str, workflow_id: UUID, event_ids: list[UUID]) -> int:
    cur = conn.execute(
        "DELETE FROM history_events WHERE workflow_name = %s AND workflow_id = %s AND id = ANY(%s)",
        (shard, workflow_id, event_ids),
    )
    return cur.rowcount


def delete_activities(conn: Conn, shard: str, workflow_id: UUID, activity_ids: list[UUID]) -> int:
    cur = conn.execute(
        "DELETE FROM activities WHERE workflow_name = %s AND workflow_id = %s AND id = ANY(%s)",
        (shard, workflow_id, activity_ids),
    )
    return cur.rowcount


def reopen_workflow(conn: Conn, shard: str, workflow_id: UUID) -> None:
    """A failed workflow (locked by this transaction) runs again: no error,
    no end; sequence_num stays (it only ever grows)."""
    conn.execute(
        "UPDATE workflows SET status = 'running', error = NULL, output = NULL, waiting_for = NULL,"
        " completed_at = NULL, updated_at = now() WHERE name = %s AND id = %s",
        (shard, workflow_id),
    )


def mark_dead_letters_retried(conn: Conn, shard: str, workflow_id: UUID) -> int:
    cur = conn.execute(
        "UPDATE dead_letter_queue SET retried_at = now()"
        " WHERE workflow_name = %s AND workflow_id = %s AND retried_at IS NULL",
        (shard, workflow_id),
    )
    return cur.rowcount


def prune_batch(conn: Conn, shard: str, *, older_than_seconds: float, limit: int) -> int:
    """Delete up to ``limit`` workflows of one shard that ended more than
    ``older_than_seconds`` ago (by the database clock), with every row they
    own, in one statement (one transaction). Running and pending workflows
    are never touched; one locked by another transaction (a retry) is
    skipped. Returns how many went."""
    row = conn.execute(
        "WITH doomed AS ("
        "  SELECT name, id FROM workflows"
        "  WHERE name = %(shard)s AND status IN ('completed', 'failed', 'cancelled')"
        "  AND created_at < now() - %(age)s * interval '1 second'"
        "  AND completed_at < now() - %(age)s * interval '1 second'"
        "  ORDER BY created_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED),"
        " h AS (DELETE FROM history_events x USING doomed d WHERE x.workflow_name = d.name AND x.workflow_id = d.id),"
        " a AS (DELETE FROM activities x USING doomed d WHERE x.workflow_name = d.name AND x.workflow_id = d.id),"
        " t AS (DELETE FROM timers x USING doomed d WHERE x.workflow_name = d.name AND x.workflow_id = d.id),"
        " g AS (DELETE FROM signals x USING doomed d WHERE x.workflow_name = d.name AND x.workflow_id = d.id),"
        " q AS (DELETE FROM task_queue x USING doomed d WHERE x.workflow_name = d.name AND x.workflow_id = d.id),"
        " l AS (DELETE FROM dead_letter_queue x USING doomed d WHERE x.workflow_name = d.name"
        "       AND x.workflow_id = d.id),"
        " w AS (DELETE FROM workflows x USING doomed d WHERE x.name = d.name AND x.id = d.id RETURNING 1)"
        " SELECT count(*) FROM w",
        {"shard": shard, "age": older_than_seconds, "limit": limit},
    ).fetchone()
    return int(row[0]) if row else 0


def get_workflow_for_update(
    conn: Conn, shard: str, workflow_id: UUID, tenant_id: UUID | None
) -> tuple[UUID, str, str | None, int] | None:
    """Lock the workflow row (waiting for a replay in progress) and return
    (tenant_id, status, error, version); None if this tenant (None = any)
    has no such workflow."""
    row = conn.execute(
        "SELECT tenant_id, status, error, version FROM workflows WHERE name = %s AND id = %s"
        " AND (%s::uuid IS NULL OR tenant_id = %s::uuid) FOR UPDATE",
        (shard, workflow_id, tenant_id, tenant_id),
    ).fetchone()
    return None if row is None else (row[0], row[1], row[2], row[3])
