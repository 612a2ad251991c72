"""Every SQL statement the library runs, one named function each.

Each statement filters by the shard key (``workflows.name`` or
``workflow_name``), which keeps one workflow's rows on one node under Citus.
psycopg errors are wrapped here and nowhere else.
"""

from __future__ import annotations

import functools
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
from psycopg.adapt import PyFormat, Transformer
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


@functools.lru_cache(maxsize=1024)
def _text_array(items: tuple[str, ...]) -> str:
    """A list of shards as a text[] value in PostgreSQL's input form, made
    once: psycopg dumps a list element by element on every call (74 against
    16 us of client CPU for a worker's 12 shards). Pass it as ``%s::text[]``."""
    values = list(items)
    return bytes(Transformer().get_dumper(values, PyFormat.TEXT).dump(values) or b"{}").decode()


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


# What a wake-up announces (the NOTIFY payload), so a worker claims only that
# kind of task: a replay (workflow and timer tasks) or an activity; ANY_WORK
# (the empty payload) claims both.
REPLAY_WORK, ACTIVITY_WORK, ANY_WORK = "w", "a", ""


def notify(conn: Conn, shards: Iterable[str], kind: str = "flows", work: str = ANY_WORK) -> None:
    """Wake the listeners of each shard when this transaction commits.

    PostgreSQL folds identical notifications of one transaction, and a
    transaction holding one takes a global lock at commit: send few."""
    for shard in set(shards):
        conn.execute("SELECT pg_notify(%s, %s)", (sharding.channel(shard, kind), work))


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
    replayed: Replayed | None = None  # the replay that leased it, when this worker made it


@dataclass(frozen=True)
class Replayed:
    """A worker's copy of a workflow's history and signals just after a step
    it wrote, kept with the activity that step leased to it: recording that
    activity's end need not read them again (``lock_activity_step``)."""

    sequence_num: int
    events: list[tuple[int, str, msgspec.Raw]]
    signals: list[tuple[UUID, str, msgspec.Raw]]


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


def send_signal(
    conn: Conn, *, shard: str, workflow_id: UUID, tenant_id: UUID | None, signal_id: UUID, name: str, payload: bytes,
    task_id: UUID,
) -> str | None:
    """Store a signal for a workflow that has not ended and, when it waits
    for exactly this signal, queue its replay and wake its shard; one
    statement (``flows_send_signal``, migration 006). Returns the workflow's
    status, None when this tenant (None = any) has no such workflow."""
    row = conn.execute(
        "SELECT flows_send_signal(%s, %s, %s, %s, %s, %s, %s, %s)",
        (shard, workflow_id, tenant_id, signal_id, name, Json(payload), task_id, sharding.channel(shard)),
    ).fetchone()
    return None if row is None else row[0]


def enqueue_workflow_task(conn: Conn, shard: str, workflow_id: UUID, tenant_id: UUID, task_id: UUID) -> None:
    """Ask for a replay; a no-op when one is already pending."""
    conn.execute(
        "INSERT INTO task_queue (workflow_name, id, workflow_id, tenant_id, task_type)"
        " VALUES (%s, %s, %s, %s, 'workflow')"
        " ON CONFLICT (workflow_name, workflow_id) WHERE task_type = 'workflow' DO NOTHING",
        (shard, task_id, workflow_id, tenant_id),
    )
    notify(conn, [shard], work=REPLAY_WORK)


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


class ReplayState(msgspec.Struct, frozen=True):
    """A locked workflow and what its replay reads: ``task`` is the claimed
    (task id, task type, target id, whether another task is due in the
    shards claimed from), None when recording an activity's end."""

    task: tuple[UUID, str, UUID | None, bool] | None
    now: datetime
    workflow: WorkflowRow
    events: list[tuple[int, str, msgspec.Raw]] | None  # None: as in the worker's copy
    signals: list[tuple[UUID, str, msgspec.Raw]] | None


_replay_state = msgspec.json.Decoder(ReplayState)
_TIMER_FIRED = history.EVENT_NAMES[history.TimerFired]


def _state(row: tuple[Any, ...] | None) -> ReplayState | None:
    return None if row is None or row[0] is None else _replay_state.decode(row[0])


class StepTransaction:
    """A worker step's transaction: BEGIN goes with its first statement and
    COMMIT with its last, in one round trip each (client-side binding lets
    one message carry several statements). Half the round trips and client
    CPU of ``conn.transaction()`` around two statements (measured 280 vs
    540 us of CPU, 510 vs 940 us wall, on a Unix socket). Other statements
    may run in between on ``conn``; leaving the block commits what is still
    open, or rolls it back on an exception."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self._cur = psycopg.ClientCursor(conn)

    def __enter__(self) -> StepTransaction:
        return self

    def begin_with(self, query: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        self._cur.execute("BEGIN; " + query, params)
        self._cur.nextset()
        return self._cur.fetchone()

    def commit_with(self, query: str, params: tuple[Any, ...]) -> None:
        self._cur.execute(query + "; COMMIT", params)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self.conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            return
        if exc_type is None:
            self.conn.execute("COMMIT")
            return
        try:
            self.conn.execute("ROLLBACK")
        except psycopg.Error:  # the connection broke: the server rolls back, the pool discards it
            pass


def claim_workflow_task(tx: StepTransaction, shards: list[str]) -> ReplayState | None:
    """Claim one due workflow or timer task (deleted, its timer fired) and
    lock its workflow row, both skipping rows another transaction holds: two
    replays of one workflow never overlap, and a claim never waits.

    Shards are tried in the order given, each by its own index-ordered scan
    (oldest due first) that stops at the first free task: one query over
    ``workflow_name = ANY(...)`` would sort every due task to return one.
    One statement (``flows_claim_workflow_task``, migration 005)."""
    return _state(tx.begin_with(
        "SELECT flows_claim_workflow_task(%s::text[], %s, %s)", (_text_array(tuple(shards)), uuid6.uuid7(), _TIMER_FIRED)
    ))


def lock_activity_step(tx: StepTransaction, task: ActivityTask, owner: str) -> ReplayState | None:
    """Lock the workflow row to record the end of an activity attempt and
    delete our leased task. None if the lease was lost (it expired and
    another worker took the task, or the workflow ended and dropped it).

    When the task carries the copy of the replay state its step left
    (``task.replayed``) and nothing was written since, the state comes back
    with that copy's history and signals instead of reading them again."""
    copy = task.replayed
    state = _state(tx.begin_with(
        "SELECT flows_lock_activity_step(%s, %s, %s, %s, %s::integer, %s::integer, %s::integer)",
        (task.shard, task.workflow_id, task.task_id, owner,
         *((None, None, None) if copy is None else (copy.sequence_num, len(copy.events), len(copy.signals)))),
    ))
    if state is None or state.events is not None:
        return state
    assert copy is not None
    return msgspec.structs.replace(state, events=copy.events, signals=copy.signals)


def replay_state(conn: Conn, shard: str, workflow_id: UUID) -> ReplayState | None:
    """The workflow with its history and unconsumed signals, unlocked (for inspection)."""
    return _state(conn.execute("SELECT flows_replay_state(%s, %s, NULL)", (shard, workflow_id)).fetchone())


class ActivityEnd(msgspec.Struct, omit_defaults=True):
    """The attempt whose end a step records: completed with ``output`` or
    failed (no attempts left) with ``error``."""

    id: UUID
    status: str
    attempt: int
    output: msgspec.Raw | None = None
    error: str | None = None


class NewActivity(msgspec.Struct):
    id: UUID
    task_id: UUID
    name: str
    seq: int
    input: msgspec.Raw
    max_attempts: int
    lease_seconds: float
    lease_owner: str | None  # leased at once to this worker, which runs it next


class NewTimer(msgspec.Struct):
    id: UUID
    task_id: UUID
    seq: int
    fire_at: datetime


class NewEvent(msgspec.Struct):
    id: UUID
    seq: int
    kind: str
    data: msgspec.Raw  # the event Struct's JSON, encoded once: sent as is, and kept in a worker's copy


class ConsumedSignal(msgspec.Struct):
    id: UUID
    seq: int


class Step(msgspec.Struct, omit_defaults=True):
    """Everything one replay of a locked workflow writes (see
    ``flows_record_step`` in migration 005 for each field)."""

    shard: str
    workflow_id: UUID
    tenant_id: UUID
    status: str
    seq: int
    waiting_for: str | None = None
    activity: ActivityEnd | None = None
    activities: list[NewActivity] = []
    signals: list[ConsumedSignal] = []
    timers: list[NewTimer] = []
    events: list[NewEvent] = []
    results: dict[str, msgspec.Raw] = {}
    output: msgspec.Raw | None = None
    error: str | None = None
    dlq_id: UUID | None = None
    end_event: NewEvent | None = None
    wake_channel: str | None = None
    wake_work: str = ANY_WORK  # the NOTIFY payload: which kind of task is new
    done_channel: str | None = None


_step_encoder = msgspec.json.Encoder()


def _encode_event(data: msgspec.Struct) -> bytes:
    # Its values passed the size limit on their own; the NUL check stays.
    return codec.encode(data, "history event", limit=1 << 31)


def event(seq: int, data: msgspec.Struct) -> NewEvent:
    """A history event with a fresh id, for ``Step.events``."""
    return NewEvent(uuid6.uuid7(), seq, history.event_type(data), msgspec.Raw(_encode_event(data)))


def record_step(tx: StepTransaction, step: Step) -> None:
    """Write a replay's decisions in one statement (``flows_record_step``)
    and commit: the attempt that ended, new activities (those leased to a
    worker are not due until their lease runs out), consumed signals, new
    timers, history, and the workflow row; NOTIFY the shard when new work
    is due now."""
    tx.commit_with("SELECT flows_record_step(%s)", (Json(_step_encoder.encode(step)),))


def insert_event(
    conn: Conn, shard: str, workflow_id: UUID, tenant_id: UUID, seq: int, event: msgspec.Struct, event_id: UUID
) -> None:
    conn.execute(
        "INSERT INTO history_events (workflow_name, id, workflow_id, tenant_id, sequence_num, event_type, event_data)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (shard, event_id, workflow_id, tenant_id, seq, history.event_type(event), Json(_encode_event(event))),
    )


def claim_activity_tasks(conn: Conn, shards: list[str], owner: str, limit: int) -> list[ActivityTask]:
    """Lease up to ``limit`` due activity tasks to ``owner`` (for each task's
    lease_seconds) and mark their activities running (one statement:
    ``flows_claim_activity_tasks``, migration 008)."""
    rows = conn.execute(
        "SELECT * FROM flows_claim_activity_tasks(%s, %s::text[], %s)", (owner, _text_array(tuple(shards)), limit),
    ).fetchall()
    return [ActivityTask(*row) for row in rows]


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
    notify(conn, [shard], work=ACTIVITY_WORK)


# When the earliest task of some shards falls due (NULL: none; parameters:
# the shards as text[], whether activity tasks count). The earliest of each
# shard in index order, then the least of those: min() over
# workflow_name = ANY(...) read every task of the shards (2 ms a call with
# 10,000 workflows waiting on timers).
_EARLIEST_DUE = (
    "(SELECT min(t.due) FROM unnest(%s::text[]) s(shard) CROSS JOIN LATERAL ("
    "  SELECT visibility_timeout AS due FROM task_queue"
    "  WHERE workflow_name = s.shard AND (%s OR task_type <> 'activity')"
    "  ORDER BY visibility_timeout LIMIT 1) t)"
)


def next_due(conn: Conn, shards: list[str], *, activities: bool = True) -> float | None:
    """Seconds from now (by the database clock) until the earliest task of
    these shards is due (leaving activity tasks out unless ``activities``);
    <= 0 when one is due already, None when none exist."""
    row = conn.execute(
        f"SELECT extract(epoch FROM {_EARLIEST_DUE} - clock_timestamp())", (_text_array(tuple(shards)), activities),
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


_SHARED = "EXISTS (SELECT 1 FROM worker_heartbeats o WHERE o.owner <> %s AND o.shards && %s::text[])"


def register_worker(conn: Conn, *, owner: str, pid: int, host: str, shard_group: str, shards: list[str]) -> bool:
    """Announce a worker (a new process under ``owner`` starts afresh).
    Returns whether another registered worker serves one of its shards."""
    row = conn.execute(
        "INSERT INTO worker_heartbeats (owner, pid, host, shard_group, shards) VALUES (%s, %s, %s, %s, %s)"
        " ON CONFLICT (owner) DO UPDATE SET pid = EXCLUDED.pid, host = EXCLUDED.host,"
        " shard_group = EXCLUDED.shard_group, shards = EXCLUDED.shards, started_at = now(), last_beat = now()"
        f" RETURNING {_SHARED}",
        (owner, pid, host, shard_group, shards, owner, shards),
    ).fetchone()
    return bool(row and row[0])


def beat_worker(conn: Conn, owner: str, shards: list[str]) -> tuple[bool, bool] | None:
    """Refresh the worker's heartbeat and say whether another registered
    worker serves one of ``shards`` (its own) and whether a task of them is
    due (by the database clock: the beat is the worker's safety net for
    notifications it missed); None if its row is gone (a supervisor took it
    for dead and released its leases): register again."""
    row = conn.execute(
        f"UPDATE worker_heartbeats SET last_beat = now() WHERE owner = %s"
        f" RETURNING {_SHARED}, {_EARLIEST_DUE} <= clock_timestamp()",
        (owner, owner, shards, _text_array(tuple(shards)), True),
    ).fetchone()
    return None if row is None else (bool(row[0]), bool(row[1]))


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
