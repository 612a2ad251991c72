"""Every SQL statement the harness runs: databases, statistics, bulk loads, timings.

The library keeps its own SQL in ``flows/store.py``; this is the harness's
side (monitoring and bulk loading), kept apart so it can never leak into the
engine. Times come back as epoch seconds (floats) from the database clock,
which is the machine's clock, the one the harness reads too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterable, Sequence
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from flows import migrate

from loadtest import citus

BACKENDS_GONE_TIMEOUT_SECONDS = 10.0
STATS_FLUSH_SECONDS = 0.5  # an exiting backend flushes its statistics just after it closes the socket
POLL_SECONDS = 0.05


def dsn_for(server_url: str, dbname: str) -> str:
    """The connection string of database ``dbname`` on the server of ``server_url``."""
    return make_conninfo(server_url, dbname=dbname)


def dbname_of(dsn: str) -> str:
    return str(conninfo_to_dict(dsn).get("dbname") or "postgres")


@dataclass(frozen=True)
class XactCounts:
    """pg_stat_database counters of one database at one moment."""

    commits: int
    rollbacks: int
    backends: int

    def minus(self, earlier: XactCounts) -> XactCounts:
        return XactCounts(self.commits - earlier.commits, self.rollbacks - earlier.rollbacks, self.backends)


class Server:
    """An autocommit connection to the server's maintenance database: creates
    and drops the run's databases and reads statistics without adding
    transactions to the database under test."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn = psycopg.connect(url, autocommit=True)
        # A Citus coordinator (its database has the extension): each run's
        # database is made on every node, with the workers registered.
        citus_here = self.conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'citus'").fetchone()
        self.citus_workers = citus.worker_urls(url) if citus_here else None
        self._deallocs: list[tuple[Any, ...]] = []

    def close(self) -> None:
        self.conn.close()

    def version_num(self) -> int:
        row = self.conn.execute("SELECT current_setting('server_version_num')::int").fetchone()
        assert row is not None
        return int(row[0])

    def create_database(self, name: str, *, migrated: bool = True) -> str:
        """Create ``name`` afresh (migrated with flows' migrations unless told
        otherwise) and return its DSN."""
        self.drop_database(name)
        if self.citus_workers is not None:
            dsn = citus.create_database(self.url, self.citus_workers, name)
        else:
            self.conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            dsn = dsn_for(self.url, name)
        if migrated:
            migrate.migrate(dsn)
        return dsn

    def drop_database(self, name: str) -> None:
        if self.citus_workers is not None:
            citus.drop_database(self.url, self.citus_workers, name)
            return
        self.conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def idle_databases(self, prefix: str) -> list[str]:
        """Databases named ``prefix...`` with no session connected."""
        return [
            str(r[0])
            for r in self.conn.execute(
                "SELECT d.datname FROM pg_database d WHERE starts_with(d.datname, %s)"
                " AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.datname)",
                (prefix,),
            )
        ]

    def xact_counts(self, dbname: str) -> XactCounts:
        self.conn.execute("SELECT pg_stat_clear_snapshot()")
        row = self.conn.execute(
            "SELECT xact_commit, xact_rollback, numbackends FROM pg_stat_database WHERE datname = %s", (dbname,)
        ).fetchone()
        return XactCounts(0, 0, 0) if row is None else XactCounts(int(row[0]), int(row[1]), int(row[2]))

    def next_xid(self) -> int:
        """The next transaction id the server will assign: the difference of
        two readings is how many transactions (and subtransactions) wrote
        anything in between, server-wide. Reading it assigns none."""
        row = self.conn.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint").fetchone()
        assert row is not None
        return int(row[0])

    def listening_backends(self, dbname: str) -> int:
        """Sessions of ``dbname`` whose last statement was a LISTEN: one per
        worker once it is in its loop (read here, so it adds no transaction
        to the database under test)."""
        row = self.conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND query LIKE 'LISTEN %%'", (dbname,)
        ).fetchone()
        return int(row[0]) if row else 0

    def wait_backends_gone(self, dbname: str, timeout: float = BACKENDS_GONE_TIMEOUT_SECONDS) -> None:
        """Wait until no session is connected to ``dbname`` and give the last
        ones time to flush their counters: only then are the deltas exact."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = self.conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (dbname,)).fetchone()
            if row is not None and row[0] == 0:
                break
            time.sleep(POLL_SECONDS)
        time.sleep(STATS_FLUSH_SECONDS)

    def enable_statements(self) -> bool:
        """Whether pg_stat_statements is preloaded; if so, make its view
        readable here (the shared development server does not preload it;
        a server of your own can: see docs/performance.md)."""
        row = self.conn.execute("SELECT current_setting('shared_preload_libraries')").fetchone()
        if row is None or "pg_stat_statements" not in str(row[0]):
            return False
        self.conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        return True

    def commit_timestamps(self) -> bool:
        """Whether the server records commit times (track_commit_timestamp)."""
        row = self.conn.execute("SELECT current_setting('track_commit_timestamp')").fetchone()
        return row is not None and row[0] == "on"

    def _each_worker_node(self, dbname: str, statement: str) -> list[tuple[Any, ...]]:
        assert self.citus_workers is not None
        rows = []
        for url in self.citus_workers:
            with psycopg.connect(url, autocommit=True) as node:
                row = node.execute(statement, (dbname,)).fetchone()
                assert row is not None
                rows.append(tuple(row))
        return rows

    def reset_two_phase_commits(self, dbname: str) -> bool:
        """On a Citus coordinator, start counting the PREPARE TRANSACTIONs the
        worker nodes run for ``dbname`` (pg_stat_statements there, preloaded
        by ``python -m loadtest.citus``): False elsewhere."""
        if self.citus_workers is None:
            return False
        # Created on the coordinator, Citus creates it on every node (a
        # worker node refuses CREATE EXTENSION).
        self.conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        self._deallocs = self._each_worker_node(dbname, (
            "SELECT pg_stat_statements_reset(0, (SELECT oid FROM pg_database WHERE datname = %s), 0),"
            " (SELECT dealloc FROM pg_stat_statements_info)"))
        return True

    def two_phase_commits(self, dbname: str) -> int | None:
        """The PREPARE TRANSACTIONs counted since ``reset_two_phase_commits``,
        or None if pg_stat_statements evicted entries meanwhile (each
        PREPARE has an entry of its own, so a count after evictions is
        short)."""
        rows = self._each_worker_node(dbname, (
            "SELECT coalesce(sum(s.calls), 0), (SELECT dealloc FROM pg_stat_statements_info)"
            " FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid"
            " WHERE d.datname = %s AND s.query ILIKE 'PREPARE TRANSACTION%%'"))
        if [d for _, d in rows] != [d for _, d in self._deallocs]:
            return None
        return sum(int(n) for n, _ in rows)

    def reset_statements(self, dbname: str) -> None:
        self.conn.execute(
            "SELECT pg_stat_statements_reset(0, (SELECT oid FROM pg_database WHERE datname = %s), 0)", (dbname,)
        )

    def statement_calls(self, dbname: str) -> int:
        """Statements executed in ``dbname`` (the harness's reads run elsewhere)."""
        row = self.conn.execute(
            "SELECT coalesce(sum(s.calls), 0) FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid"
            " WHERE d.datname = %s",
            (dbname,),
        ).fetchone()
        return int(row[0]) if row else 0

    def top_statements(self, dbname: str, limit: int) -> list[dict[str, Any]]:
        """The statements run most often in ``dbname``, with their execution times."""
        rows = self.conn.execute(
            "SELECT s.calls, s.total_exec_time, s.rows, s.query FROM pg_stat_statements s"
            " JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = %s"
            " ORDER BY s.calls DESC, s.total_exec_time DESC LIMIT %s",
            (dbname, limit),
        ).fetchall()
        return [{"calls": int(c), "total_ms": float(t), "rows": int(r), "query": str(q)} for c, t, r, q in rows]


def by_shard(names: Sequence[str], ids: Sequence[UUID]) -> dict[str, list[UUID]]:
    """Workflow ids (ids[i] on names[i]) grouped by shard."""
    grouped: dict[str, list[UUID]] = {}
    for name, wid in zip(names, ids):
        grouped.setdefault(name, []).append(wid)
    return grouped


def connect(dsn: str, *, autocommit: bool = False) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=autocommit)


class Monitor:
    """An autocommit connection to the database under test that counts its
    own statements, so the transaction deltas can leave them out (each
    statement here is one transaction)."""

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.transactions = 0

    def close(self) -> None:
        self.conn.close()

    def _one(self, query: str, params: Any = None) -> tuple[Any, ...]:
        self.transactions += 1
        row = self.conn.execute(query, params).fetchone()  # type: ignore[arg-type]
        assert row is not None
        return row

    def _all(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        self.transactions += 1
        return self.conn.execute(query, params).fetchall()  # type: ignore[arg-type]

    # -- progress --------------------------------------------------------------

    def ended(self, shards: list[str]) -> tuple[int, int]:
        """(ended, failed) workflows of these shards."""
        row = self._one(
            "SELECT count(*) FILTER (WHERE status IN ('completed', 'failed', 'cancelled')),"
            " count(*) FILTER (WHERE status = 'failed') FROM workflows WHERE name = ANY(%s)",
            (shards,),
        )
        return int(row[0]), int(row[1])

    def ended_among(self, names: list[str], ids: list[UUID]) -> int:
        """How many of these workflows (sharded name, id) have ended: primary
        key look-ups, a statement per shard (routed to its shard on Citus),
        so a table full of older workflows costs nothing (as a join to
        unnest(...), the planner hashed all 110,000 workflows of the backlog
        for each poll)."""
        return sum(int(self._one(
            "SELECT count(*) FROM workflows WHERE name = %s AND id = ANY(%s)"
            " AND status IN ('completed', 'failed', 'cancelled')", (shard, shard_ids),
        )[0]) for shard, shard_ids in by_shard(names, ids).items())

    def await_results(self, shards: list[str]) -> None:
        """Count the harness as one ``Engine.result()`` waiter on every
        workflow of these shards (what result() does for its own), so the
        engine announces their ends on ``flows-done``."""
        self._one(
            "WITH w AS (UPDATE workflows SET result_waiters = result_waiters + 1 WHERE name = ANY(%s) RETURNING 1)"
            " SELECT count(*) FROM w",
            (shards,),
        )

    def waiting(self, shards: list[str], waiting_for: str) -> int:
        return int(self._one(
            "SELECT count(*) FROM workflows WHERE name = ANY(%s) AND status = 'running' AND waiting_for = %s",
            (shards, waiting_for),
        )[0])

    def now(self) -> float:
        return float(self._one("SELECT extract(epoch FROM clock_timestamp())")[0])

    # -- a soak's samples --------------------------------------------------------

    def ended_between(self, shards: list[str], since: float, until: float) -> list[float]:
        """Start-to-end seconds (created_at to completed_at) of the workflows
        of these shards that ended in [since, until) (epoch seconds)."""
        return [float(s) for (s,) in self._all(
            "SELECT extract(epoch FROM completed_at - created_at) FROM workflows WHERE name = ANY(%s)"
            " AND completed_at >= to_timestamp(%s) AND completed_at < to_timestamp(%s)",
            (shards, since, until),
        )]

    def output_counts(self, shards: list[str], key: str) -> dict[str, int]:
        """How many workflows of these shards have each value of ``key`` in
        their output (None: no output, or no such key)."""
        return {str(v): int(n) for v, n in self._all(
            "SELECT output->>%s, count(*) FROM workflows WHERE name = ANY(%s) GROUP BY 1", (key, shards))}

    def activity_counts(self, shards: list[str]) -> dict[str, int]:
        """The activities of these shards' workflows, by status."""
        return {str(s): int(n) for s, n in self._all(
            "SELECT status, count(*) FROM activities WHERE workflow_name = ANY(%s) GROUP BY 1", (shards,))}

    def tasks(self) -> tuple[int, int]:
        """(due, all) tasks of the queue: due ones wait for a worker (or a
        lease ran out); the rest are timers, retries and leased attempts."""
        row = self._one("SELECT count(*) FILTER (WHERE visibility_timeout <= now()), count(*) FROM task_queue")
        return int(row[0]), int(row[1])

    def table_stats(self) -> dict[str, tuple[int, int, float]]:
        """Each table's (live tuples, dead tuples, total MiB with indexes and
        TOAST), from pg_stat_user_tables and pg_total_relation_size."""
        return {
            str(name): (int(live), int(dead), float(size) / 2**20)
            for name, live, dead, size in self._all(
                "SELECT relname, n_live_tup, n_dead_tup, pg_total_relation_size(relid) FROM pg_stat_user_tables"
            )
        }

    # -- timings (epoch seconds) -----------------------------------------------

    def workflow_times(
        self, shards: list[str], ids: list[UUID] | None = None
    ) -> list[tuple[UUID, float, float | None, str]]:
        """(id, created_at, completed_at, status) of each workflow of these
        shards, or only of those ``ids`` (ids[i] on shards[i])."""
        query = (
            "SELECT w.id, extract(epoch FROM w.created_at), extract(epoch FROM w.completed_at), w.status"
            " FROM workflows w"
        )
        if ids is None:
            rows = self._all(query + " WHERE w.name = ANY(%s)", (shards,))
        else:
            rows = [row for shard, shard_ids in by_shard(shards, ids).items()
                    for row in self._all(query + " WHERE w.name = %s AND w.id = ANY(%s)", (shard, shard_ids))]
        return [(r[0], float(r[1]), None if r[2] is None else float(r[2]), r[3]) for r in rows]

    def activity_times(self, shards: list[str], ids: list[UUID]) -> list[tuple[float, float]]:
        """(scheduled, recorded) of each completed activity of these workflows (ids[i] on shards[i])."""
        return [
            (float(a), float(b))
            for shard, shard_ids in by_shard(shards, ids).items()
            for a, b in self._all(
                "SELECT extract(epoch FROM a.created_at), extract(epoch FROM a.completed_at) FROM activities a"
                " WHERE a.workflow_name = %s AND a.workflow_id = ANY(%s) AND a.status = 'completed'",
                (shard, shard_ids),
            )
        ]

    def event_times(self, shards: list[str], event_type: str) -> dict[UUID, float]:
        """Each workflow's (first) event of ``event_type``: when it was written."""
        return {
            wid: float(at)
            for wid, at in self._all(
                "SELECT workflow_id, extract(epoch FROM min(created_at)) FROM history_events"
                " WHERE workflow_name = ANY(%s) AND event_type = %s GROUP BY workflow_id",
                (shards, event_type),
            )
        }

    def signal_times(self, shards: list[str]) -> dict[UUID, float]:
        """When each workflow's (first) signal was inserted: clock_timestamp(),
        a millisecond or two before its transaction committed."""
        return {
            wid: float(at)
            for wid, at in self._all(
                "SELECT workflow_id, extract(epoch FROM min(created_at)) FROM signals"
                " WHERE workflow_name = ANY(%s) GROUP BY workflow_id",
                (shards,),
            )
        }

    def event_commit_times(self, shards: list[str], event_type: str) -> dict[UUID, float]:
        """When the transaction that wrote each workflow's ``event_type`` event
        committed (history rows are never updated, so xmin is that
        transaction; needs track_commit_timestamp)."""
        return {
            wid: float(at)
            for wid, at in self._all(
                "SELECT workflow_id, extract(epoch FROM pg_xact_commit_timestamp(xmin)) FROM history_events"
                " WHERE workflow_name = ANY(%s) AND event_type = %s",
                (shards, event_type),
            )
            if at is not None
        }

    def timer_times(self, shards: list[str]) -> list[tuple[float, float | None, float | None]]:
        """(fire_at, fired_at, timer_fired event written) of each timer."""
        return [
            (float(r[0]), None if r[1] is None else float(r[1]), None if r[2] is None else float(r[2]))
            for r in self._all(
                "SELECT extract(epoch FROM t.fire_at), extract(epoch FROM t.fired_at), extract(epoch FROM e.created_at)"
                " FROM timers t LEFT JOIN history_events e ON e.workflow_name = t.workflow_name"
                "  AND e.workflow_id = t.workflow_id AND coalesce(e.step, e.sequence_num) = t.sequence_num"
                "  AND e.event_type = 'timer_fired'"
                " WHERE t.workflow_name = ANY(%s)",
                (shards,),
            )
        ]

    def decisions(self, shards: list[str]) -> dict[str, int]:
        """Loan outcomes: the output's ``decision``, or the status when there is none."""
        return {
            str(k): int(n)
            for k, n in self._all(
                "SELECT coalesce(output->>'decision', status), count(*) FROM workflows"
                " WHERE name = ANY(%s) GROUP BY 1",
                (shards,),
            )
        }


# -- the pgbench baseline's own tables -----------------------------------------

PGBENCH_COUNTER_ROWS = 100


def create_pgbench_tables(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE bench_counters (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0)")
        conn.execute(
            "INSERT INTO bench_counters (id) SELECT g FROM generate_series(1, %s) g", (PGBENCH_COUNTER_ROWS,)
        )
        conn.execute(
            "CREATE TABLE bench_events (id bigserial PRIMARY KEY, counter_id int NOT NULL,"
            " at timestamptz NOT NULL DEFAULT now())"
        )


PGBENCH_SCRIPT = f"""\\set id random(1, {PGBENCH_COUNTER_ROWS})
BEGIN;
INSERT INTO bench_events (counter_id) VALUES (:id);
UPDATE bench_counters SET n = n + 1 WHERE id = :id;
COMMIT;
"""


# -- the backlog: finished and waiting workflows, written in bulk --------------


@dataclass(frozen=True)
class BulkIds:
    """Ids made in Python (UUIDv7) with the shard the engine's ring gives them."""

    shards: Sequence[str]
    ids: Sequence[UUID]


def load_backlog(
    dsn: str, *, tenant_id: UUID, finished: BulkIds, finished_activity: str, waiting_signal: BulkIds,
    signal_name: str, sleeping: BulkIds, sleep_seconds: float, uuid7_in_sql: bool,
) -> None:
    """Write workflows as the engine would have left them: ``finished``
    three-activity workflows with their activities and 8 history events
    each, workflows waiting for ``signal_name``, and workflows asleep on a
    timer ``sleep_seconds`` away (a timers row and its task); then VACUUM
    ANALYZE and CHECKPOINT, as autovacuum and the checkpointer would have by
    then."""
    new_id = sql.SQL("uuidv7()" if uuid7_in_sql else "gen_random_uuid()")
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "CREATE TEMP TABLE lt_done ON COMMIT DROP AS"
            " SELECT u.name, u.id, u.n::int AS n FROM unnest(%s::text[], %s::uuid[]) WITH ORDINALITY u(name, id, n)",
            (finished.shards, finished.ids),
        )
        conn.execute(
            "INSERT INTO workflows (name, id, tenant_id, version, status, input, output, sequence_num, last_event,"
            " activity_results, created_at, updated_at, completed_at)"
            " SELECT name, id, %(t)s, 1, 'completed', to_jsonb(n), to_jsonb(n + 3), 4, 8,"
            "  jsonb_build_object('1', n + 1, '2', n + 2, '3', n + 3),"
            "  now() - interval '1 day', now() - interval '1 day', now() - interval '1 day'"
            " FROM lt_done",
            {"t": tenant_id},
        )
        conn.execute(sql.SQL(
            "CREATE TEMP TABLE lt_done_acts ON COMMIT DROP AS"
            " SELECT d.name, {} AS id, d.id AS workflow_id, d.n, k FROM lt_done d, generate_series(1, 3) k"
        ).format(new_id))
        conn.execute(
            "INSERT INTO activities (workflow_name, id, workflow_id, tenant_id, name, sequence_num, status, input,"
            " output, attempt, max_attempts, created_at, updated_at, completed_at)"
            " SELECT name, id, workflow_id, %(t)s, %(a)s, k, 'completed', to_jsonb(n + k - 1), to_jsonb(n + k), 0, 3,"
            "  now() - interval '1 day', now() - interval '1 day', now() - interval '1 day'"
            " FROM lt_done_acts",
            {"t": tenant_id, "a": finished_activity},
        )
        conn.execute(sql.SQL(
            "INSERT INTO history_events (workflow_name, id, workflow_id, tenant_id, sequence_num, step, event_type,"
            " event_data, created_at)"
            " SELECT name, {id}, id, %(t)s, 1, 0, 'workflow_started', '{{\"version\": 1}}', now() - interval '1 day'"
            "  FROM lt_done"
            " UNION ALL SELECT name, {id}, workflow_id, %(t)s, 2 * k, k, 'activity_scheduled',"
            "  jsonb_build_object('name', %(a)s::text, 'activity_id', id, 'input', n + k - 1), now() - interval '1 day'"
            "  FROM lt_done_acts"
            " UNION ALL SELECT name, {id}, workflow_id, %(t)s, 2 * k + 1, k, 'activity_completed',"
            "  jsonb_build_object('name', %(a)s::text, 'output', n + k, 'attempt', 0), now() - interval '1 day'"
            "  FROM lt_done_acts"
            " UNION ALL SELECT name, {id}, id, %(t)s, 8, 0, 'workflow_completed', jsonb_build_object('output', n + 3),"
            "  now() - interval '1 day' FROM lt_done"
        ).format(id=new_id), {"t": tenant_id, "a": finished_activity})

        conn.execute(
            "INSERT INTO workflows (name, id, tenant_id, version, status, input, sequence_num, waiting_for, last_event)"
            " SELECT name, id, %s, 1, 'running', to_jsonb(n::int), 1, %s, 1"
            " FROM unnest(%s::text[], %s::uuid[]) WITH ORDINALITY u(name, id, n)",
            (tenant_id, f"signal:{signal_name}", waiting_signal.shards, waiting_signal.ids),
        )
        conn.execute(
            "INSERT INTO workflows (name, id, tenant_id, version, status, input, sequence_num, waiting_for, last_event)"
            " SELECT name, id, %s, 1, 'running', to_jsonb(%s::float8), 1, 'timer', 2"
            " FROM unnest(%s::text[], %s::uuid[]) u(name, id)",
            (tenant_id, sleep_seconds, sleeping.shards, sleeping.ids),
        )
        conn.execute(sql.SQL(
            "INSERT INTO history_events (workflow_name, id, workflow_id, tenant_id, sequence_num, step, event_type,"
            " event_data)"
            " SELECT name, {}, id, %s, 1, 0, 'workflow_started', '{{\"version\": 1}}'"
            " FROM unnest(%s::text[], %s::uuid[]) u(name, id)"
        ).format(new_id), (tenant_id, [*waiting_signal.shards, *sleeping.shards], [*waiting_signal.ids, *sleeping.ids]))
        conn.execute(sql.SQL(
            "CREATE TEMP TABLE lt_sleep ON COMMIT DROP AS"
            " SELECT u.name, u.id, {} AS timer_id, now() + %s * interval '1 second' AS fire_at"
            " FROM unnest(%s::text[], %s::uuid[]) u(name, id)"
        ).format(new_id), (sleep_seconds, sleeping.shards, sleeping.ids))
        conn.execute(
            "INSERT INTO timers (workflow_name, id, workflow_id, tenant_id, sequence_num, fire_at)"
            " SELECT name, timer_id, id, %s, 1, fire_at FROM lt_sleep",
            (tenant_id,),
        )
        conn.execute(sql.SQL(
            "INSERT INTO task_queue (workflow_name, id, workflow_id, tenant_id, task_type, target_id,"
            " workflow_version, visibility_timeout)"
            " SELECT name, {}, id, %s, 'timer', timer_id, 1, fire_at FROM lt_sleep"
        ).format(new_id), (tenant_id,))
        conn.execute(sql.SQL(
            "INSERT INTO history_events (workflow_name, id, workflow_id, tenant_id, sequence_num, step, event_type,"
            " event_data)"
            " SELECT name, {}, id, %s, 2, 1, 'timer_started',"
            "  jsonb_build_object('timer_id', timer_id, 'fire_at', fire_at, 'seconds', %s::float8)"
            " FROM lt_sleep"
        ).format(new_id), (tenant_id, sleep_seconds))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        try:  # the load's WAL is flushed now, not by a checkpoint in the middle of the measurement
            conn.execute("CHECKPOINT")
        except psycopg.errors.InsufficientPrivilege:
            pass


def table_rows(dsn: str, tables: Iterable[str]) -> dict[str, int]:
    """Exact row counts, for the report of what the backlog holds."""
    counts: dict[str, int] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for t in tables:
            row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t))).fetchone()
            counts[t] = int(row[0]) if row else 0
    return counts


def listen(conn: psycopg.Connection[Any], channel: str) -> None:
    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))


def fill_workflows(dsn: str, count: int, *, name: str = "loan-application", shards: int = 3) -> None:
    """Bulk-insert ``count`` workflow rows (for a render benchmark; no
    history): spread over ``shards`` shards and the last 30 days, 90 %
    completed, 8 % running on a document signal, 2 % failed; then ANALYZE."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO workflows (name, id, tenant_id, version, status, input, output, error, waiting_for,"
            " sequence_num, created_at, updated_at, completed_at)"
            " SELECT %(name)s || '-shard-' || (i %% %(shards)s), gen_random_uuid(),"
            "  '00000000-0000-0000-0000-000000000000', 1, s.status,"
            "  jsonb_build_object('applicant_name', 'Applicant ' || i, 'amount', 1000 + i, 'purpose', 'bulk'),"
            "  CASE WHEN s.status = 'completed' THEN '{\"decision\": \"approved\"}'::jsonb END,"
            "  CASE WHEN s.status = 'failed' THEN 'ActivityFailed: activity verify-document failed after 5"
            " attempt(s): TimeoutError: issuer did not answer' END,"
            "  CASE WHEN s.status = 'running' THEN 'signal:document-income' END, 5, t.at, t.at,"
            "  CASE WHEN s.status <> 'running' THEN t.at + interval '1 minute' END"
            " FROM generate_series(1, %(count)s) i"
            " CROSS JOIN LATERAL (SELECT CASE WHEN i %% 50 = 0 THEN 'failed' WHEN i %% 50 < 5 THEN 'running'"
            "   ELSE 'completed' END AS status) s"
            " CROSS JOIN LATERAL (SELECT now() - (i * 2592000.0 / %(count)s) * interval '1 second' AS at) t",
            {"name": name, "shards": shards, "count": count},
        )
        conn.execute("ANALYZE workflows")
