"""Every SQL statement the library runs, one named function each.

Each statement filters by the shard key (``workflows.name`` or
``workflow_name``), which keeps one workflow's rows on one node under Citus.
psycopg errors are wrapped here and nowhere else.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Generic, Iterable, Iterator, Sequence, TypeVar
from uuid import UUID

import msgspec
import psycopg
import psycopg.conninfo
import psycopg.errors
from psycopg import sql
from psycopg.adapt import PyFormat, Transformer
from psycopg.rows import tuple_row
import psycopg_pool
import uuid6
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from flows import codec, history, sharding
from flows.codec import Json
from flows.errors import DatabaseError, DatabaseUnavailable

log = logging.getLogger("flows.store")

Conn = psycopg.Connection[Any]
AsyncConn = psycopg.AsyncConnection[Any]
R = TypeVar("R")

# Connection-class errors (SQLSTATE 08), shutdowns and the like: worth a retry
# once the database is back, never a reason to fail a workflow.
PoolTimeout = psycopg_pool.PoolTimeout  # no connection could be had in time
TRANSIENT_ERRORS = (
    psycopg.OperationalError,
    psycopg.errors.SerializationFailure,
    psycopg.errors.DeadlockDetected,
    DatabaseUnavailable,  # connect() failed: the server may come back
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


# -- connecting: every failure becomes a DatabaseError naming the host ----------

CONNECT_TIMEOUT_SECONDS = 10  # a first connection slower than this fails instead of hanging
_CHECK = "DATABASE_URL (or the connection string given to flows.Engine)"
_FORMS = "postgresql://user:password@host:5432/dbname, or key=value pairs"
_PASSWORDS = re.compile(r"password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)|://[^:/@\s]*:([^@\s]*)@")


def _redacted(text: str, dsn: str) -> str:
    """``text`` without any password the connection string holds."""
    for match in _PASSWORDS.finditer(dsn):
        secret = match.group(1) or match.group(2)
        if secret:
            text = text.replace(secret.strip("'"), "***")
    return text


def _where(params: dict[str, Any]) -> str:
    host = params.get("host") or params.get("hostaddr") or ""
    where = f"the local socket in {host!r}" if host.startswith("/") else f"host {host!r}" if host else "the default local socket"
    if params.get("port"):
        where += f" port {params['port']}"
    more = [f"{label} {params[key]!r}" for key, label in (("dbname", "database"), ("user", "user")) if params.get(key)]
    return where + (f" ({', '.join(more)})" if more else "")


def _bad_dsn(dsn: str, problem: str) -> DatabaseError:
    return DatabaseError(_redacted(f"the database connection string {problem}. Check {_CHECK}: it takes the form {_FORMS}", dsn))


def check_dsn(dsn: str) -> None:
    """Raise DatabaseError if no connection could ever be made with ``dsn``:
    it does not parse, or names a host or port that cannot exist."""
    if not isinstance(dsn, str):
        raise DatabaseError(f"the database connection string must be a str, not {type(dsn).__name__}")
    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.Error as exc:
        # libpq quotes the token it choked on, which may be part of a password.
        detail = "" if _PASSWORDS.search(dsn) else f" ({str(exc).strip()})"
        raise _bad_dsn(dsn, f"cannot be parsed{detail}") from None
    for host in str(params.get("host") or "").split(","):
        if host and not host.startswith(("/", "@")):
            try:
                host.encode("idna")
            except UnicodeError:
                raise _bad_dsn(dsn, f"names an invalid host {host!r}") from None
    for port in str(params.get("port") or "").split(","):
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise _bad_dsn(dsn, f"names an invalid port {port!r}")


def connection_error(dsn: str, exc: BaseException) -> DatabaseError:
    """The DatabaseError to raise when connecting with ``dsn`` failed with
    ``exc``: it names the host (never the password) and what to check;
    DatabaseUnavailable when a retry may succeed."""
    try:
        check_dsn(dsn)
    except DatabaseError as bad:
        return bad
    where = _where(psycopg.conninfo.conninfo_to_dict(dsn))
    # libpq's first line says what failed (refused, unresolvable, timed out,
    # no such database or role, bad password); its later lines are hints.
    reason = " ".join((str(exc).strip().splitlines() or [type(exc).__name__])[0].split())
    cls = DatabaseUnavailable if isinstance(exc, psycopg.OperationalError) else DatabaseError
    return cls(_redacted(f"cannot connect to the database at {where}: {reason}. Check {_CHECK}, and that the"
                         " server runs there and is reachable from here.", dsn))


def connect(dsn: str, *, autocommit: bool = False, timeout_seconds: float | None = None) -> Conn:
    """A new connection; DatabaseError (DatabaseUnavailable when worth a retry) if none can be made."""
    extra: dict[str, Any] = {} if timeout_seconds is None else {"connect_timeout": max(1, round(timeout_seconds))}
    try:
        return psycopg.connect(dsn, autocommit=autocommit, **extra)
    except (psycopg.Error, UnicodeError) as exc:  # an invalid host name fails in the idna codec
        raise connection_error(dsn, exc) from exc


def open_pool(
    dsn: str, *, min_size: int = 1, max_size: int = 10, name: str = "flows", check: bool = False,
    statement_timeout: float | None = None, idle_in_transaction_timeout: float | None = None,
    timeout: float = 30.0,
) -> ConnectionPool:
    """A pool of autocommit connections (a lone statement costs no BEGIN and
    COMMIT; every multi-statement write says ``conn.transaction()``). Open it
    after fork().

    ``check`` tests each connection as it is handed out (one round trip), so
    a client never gets one the server closed while it sat idle; the worker
    goes without and retries its loop instead. The timeouts (seconds) are
    set on each new connection: the server cancels a statement running
    longer, and ends a session idle that long inside a transaction, which
    releases the locks it held. ``timeout`` is how long a caller waits for
    a connection (PoolTimeout after it)."""
    settings = [(name, round(seconds * 1000)) for name, seconds in (
        ("statement_timeout", statement_timeout), ("idle_in_transaction_session_timeout", idle_in_transaction_timeout),
    ) if seconds]

    def configure(conn: Conn) -> None:
        for setting, millis in settings:
            conn.execute(sql.SQL("SET {} = {}").format(sql.Identifier(setting), sql.Literal(millis)))

    pool = ConnectionPool(
        dsn, min_size=min_size, max_size=max_size, name=name, open=False, timeout=timeout,
        kwargs={"autocommit": True}, check=ConnectionPool.check_connection if check else None,
        configure=configure if settings else None,
    )
    pool.open(wait=False)
    return pool


# SQLSTATE classes whose primary message may quote a value of the statement
# (22, data exceptions: 'invalid input syntax for type uuid: "..."') or text
# a function composed (P0, RAISE): describe() leaves their message out.
_VALUE_QUOTING_CLASSES = ("22", "P0")


def describe(exc: BaseException) -> str:
    """A database error as one line fit for a log: its class, SQLSTATE, the
    objects PostgreSQL names (table, column, constraint, type) and, unless
    its class may quote values, the primary message. Never DETAIL, CONTEXT
    or the statement, which carry row values (names, comments, payloads)."""
    name = type(exc).__name__
    sqlstate = getattr(exc, "sqlstate", None)
    if not isinstance(exc, psycopg.Error) or sqlstate is None:
        # Raised by the client (no connection, pool timeout): no row values.
        first = str(exc).strip().splitlines()
        return f"{name}: {first[0]}" if first else name
    diag = exc.diag
    line = f"{name} ({sqlstate})"
    if diag.message_primary and not sqlstate.startswith(_VALUE_QUOTING_CLASSES):
        line += f": {diag.message_primary}"
    objects = [
        f"{what}={value}" for what, value in (
            ("table", diag.table_name), ("column", diag.column_name), ("constraint", diag.constraint_name),
            ("type", diag.datatype_name),
        ) if value
    ]
    return line + (f" [{' '.join(objects)}]" if objects else "")


def log_error(logger: logging.Logger, level: int, event: str, exc: BaseException, **ids: Any) -> None:
    """Log a failure with ids and its class, never its payload: a database
    error as ``describe`` puts it (no row values), anything else with its
    traceback (our own code's errors)."""
    fields = " ".join(f"{k}={v}" for k, v in ids.items())
    database = isinstance(exc, psycopg.Error)
    logger.log(level, "%s %s error=%s", event, fields, describe(exc) if database else type(exc).__name__,
               exc_info=None if database else exc)


@contextmanager
def wrapped() -> Iterator[None]:
    """Raise psycopg errors as DatabaseError (keeping the original as cause,
    and its SQLSTATE), DatabaseUnavailable for the connection-class ones (a
    retry may succeed), with a message that quotes no row values."""
    try:
        yield
    except psycopg.Error as exc:
        cls = DatabaseUnavailable if isinstance(exc, psycopg.OperationalError) else DatabaseError
        raise cls(describe(exc), sqlstate=exc.sqlstate) from exc


def ping(conn: Conn) -> None:
    conn.execute("SELECT 1").fetchone()


@contextmanager
def within_callers_transaction(conn: Conn) -> Iterator[None]:
    """A block of writes that joins whatever transaction the caller has open
    on ``conn`` and never ends it, failing alone (psycopg's transaction
    contexts, docs/basic/transactions.rst):

    - a transaction is open (a non-autocommit connection after a statement,
      or inside ``conn.transaction()``): a savepoint, released at the end,
      or rolled back to on an error so that the caller's transaction stays
      usable;
    - a non-autocommit connection that is idle: its implicit transaction is
      opened first, as the caller's own next statement would open it, so
      the block is a savepoint in it and the caller's commit() or
      rollback() decides (``conn.transaction()`` alone would be an outermost
      block that COMMITs on exit);
    - an autocommit connection outside any transaction: a transaction of
      the block's own, committed at its end."""
    if not conn.autocommit and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        conn.execute("SELECT 1")  # psycopg sends its BEGIN first
    with conn.transaction():
        yield


# -- statements run by the sync Engine and the AsyncEngine alike ----------------


@dataclass(frozen=True)
class Statement(Generic[R]):
    """One statement's text and parameters and how to read its rows, built
    once by a named function below and run on a psycopg connection
    (``run``) or an async one (``arun``): the client API's SQL exists once
    for both engines."""

    query: str
    params: tuple[Any, ...]
    read: Callable[[list[tuple[Any, ...]]], R]


def run(conn: Conn, statement: Statement[R]) -> R:
    cur = conn.execute(statement.query, statement.params)
    return statement.read(cur.fetchall() if cur.description else [])


async def arun(conn: AsyncConn, statement: Statement[R]) -> R:
    cur = await conn.execute(statement.query, statement.params)
    return statement.read(await cur.fetchall() if cur.description else [])


def _first(rows: list[tuple[Any, ...]]) -> Any:
    return rows[0][0] if rows else None


def _nothing(rows: list[tuple[Any, ...]]) -> None:
    return None


def open_async_pool(dsn: str, *, max_size: int = 10, name: str = "flows-async") -> AsyncConnectionPool:
    """An async pool of autocommit connections, not opened yet: ``await
    pool.open()`` inside the running event loop."""
    return AsyncConnectionPool(
        dsn, min_size=1, max_size=max_size, name=name, open=False, timeout=30.0, kwargs={"autocommit": True},
        check=AsyncConnectionPool.check_connection,
    )


async def connect_async(dsn: str) -> AsyncConn:
    """An async autocommit connection (for LISTEN)."""
    return await psycopg.AsyncConnection.connect(dsn, autocommit=True)


async def listen_async(conn: AsyncConn, channels: Iterable[str]) -> None:
    for name in channels:
        await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(name)))


async def wait_notify_async(conn: AsyncConn, timeout: float) -> None:
    """Wait up to ``timeout`` seconds for one notification on ``conn``."""
    async for _ in conn.notifies(timeout=timeout, stop_after=1):
        pass


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


# -- starting, signalling, reading (the client side) ------------------------


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
        _first,
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
        _nothing,
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
        _first,
    )


# -- the worker side ----------------------------------------------------------


class ReplayState(msgspec.Struct, frozen=True):
    """A locked workflow and what its replay reads: ``task`` is the claimed
    (task id, task type, target id, seconds until the next task of the
    claimer's versions in the shard is due (None if none), the task's
    lease_seconds (a timeout task's length)), None when recording an
    activity's end. ``events`` are (step, type, data) in the order written."""

    task: tuple[UUID, str, UUID | None, float | None, float | None] | None
    now: datetime
    workflow: WorkflowRow
    events: list[tuple[int, str, msgspec.Raw]] | None
    signals: list[tuple[UUID, str, msgspec.Raw]] | None
    tail: bool = False  # events are only those written after workflow.last_event

    @property
    def stamp(self) -> tuple[datetime, int | None]:
        """What the latest step left on the workflow row (see flows.continuation)."""
        return self.workflow.updated_at, self.workflow.last_event


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


class Claimed(msgspec.Struct, frozen=True):
    """What a replay claim found: the replay ``state`` (None: nothing
    claimable, or a task to carry, ``carry``) and seconds until the shard's
    next task is due (None: none; <= 0: one is due now, perhaps held by
    another worker)."""

    state: ReplayState | None
    next_due: float | None
    carry: Carry | None = None


class _CarryAnswer(msgspec.Struct, frozen=True):
    id: UUID
    type: str
    token: int
    info: msgspec.Raw = msgspec.Raw(b"null")


class _ClaimAnswer(msgspec.Struct, frozen=True):
    task: tuple[UUID, str, UUID | None, float | None, float | None] | None = None
    carry: _CarryAnswer | None = None
    now: datetime | None = None
    workflow: WorkflowRow | None = None
    events: list[tuple[int, str, msgspec.Raw]] | None = None
    signals: list[tuple[UUID, str, msgspec.Raw]] | None = None
    tail: bool = False
    next: float | None = None


_replay_state = msgspec.json.Decoder(ReplayState)
_child_info = msgspec.json.Decoder(ChildInfo)
_end_info = msgspec.json.Decoder(EndInfo)
_claim_answer = msgspec.json.Decoder(_ClaimAnswer)


def _state(row: tuple[Any, ...] | None) -> ReplayState | None:
    return None if row is None or row[0] is None else _replay_state.decode(row[0])


class Deferred:
    """A statement sent with a step's COMMIT, in its round trip
    (``StepTransaction.defer``); ``row`` is its first row once committed."""

    __slots__ = ("query", "params", "row")

    def __init__(self, query: str, params: tuple[Any, ...]) -> None:
        self.query, self.params = query, params
        self.row: tuple[Any, ...] | None = None


class StepTransaction:
    """A worker step's transaction: BEGIN goes with its first statement and
    COMMIT with its last, in one round trip each (client-side binding lets
    one message carry several statements). Half the round trips and client
    CPU of ``conn.transaction()`` around two statements. Other statements
    may run in between on ``conn``; leaving the block commits what is still
    open, or rolls it back on an exception. ``began`` is when BEGIN was
    sent (``time.monotonic()``)."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self._cur = psycopg.ClientCursor(conn)
        self.began = 0.0
        self._deferred: list[Deferred] = []

    def __enter__(self) -> StepTransaction:
        return self

    def begin_with(self, query: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        self.began = time.monotonic()
        self._cur.execute("BEGIN; " + query, params)
        self._cur.nextset()
        return self._cur.fetchone()

    def defer(self, query: str, params: tuple[Any, ...]) -> Deferred:
        """Run ``query`` just before the COMMIT, in the commit's round trip."""
        deferred = Deferred(query, params)
        self._deferred.append(deferred)
        return deferred

    def commit_with(self, query: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        return self.commit_all([query], params)[0]

    def commit_all(self, queries: list[str], params: tuple[Any, ...]) -> list[tuple[Any, ...] | None]:
        """Run ``queries`` and the deferred statements, and COMMIT, in one
        round trip; return each query's first row."""
        deferred, self._deferred = self._deferred, []
        for d in deferred:
            queries, params = queries + [d.query], params + d.params
        self._cur.execute("; ".join(queries) + "; COMMIT", params)
        rows = []
        for i in range(len(queries)):
            if i:
                self._cur.nextset()
            rows.append(self._cur.fetchone())
        for d, row in zip(deferred, rows[len(rows) - len(deferred):]):
            d.row = row
        return rows[:len(rows) - len(deferred)]

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


def _carry(c: _CarryAnswer, shard: str) -> Carry:
    info: ChildInfo | EndInfo | None = None
    if bytes(c.info) != b"null":
        info = _child_info.decode(c.info) if c.type == "child" else _end_info.decode(c.info)
    return Carry(c.id, c.type, c.token, info, shard)


def claim_replay(
    tx: StepTransaction, shard: str, versions: list[int], whole_below: int = 1 << 30, owner: str = ""
) -> Claimed:
    """Claim one due workflow, timer or timeout task of ``shard`` for a
    worker running these ``versions`` of its workflow (deleted, its timer
    fired) and lock its workflow row, both skipping rows another transaction
    holds: two replays of one workflow never overlap, and a claim never
    waits. The history comes whole when its run has fewer than
    ``whole_below`` events, else only the events since the latest step
    (``tail``). A due `child` or `parent` task is leased to ``owner``
    instead and returned as ``carry``. One statement
    (``flows_claim_replay_v4``, migration 040)."""
    row = tx.begin_with(
        "SELECT flows_claim_replay_v4(%s, %s::integer[], %s, %s, %s, %s)",
        (shard, _int_array(tuple(versions)), uuid6.uuid7(), sharding.channel(shard), whole_below, owner),
    )
    assert row is not None and row[0] is not None
    got = _claim_answer.decode(row[0])
    if got.carry is not None:
        return Claimed(None, got.next, _carry(got.carry, shard))
    if got.task is None or got.workflow is None or got.now is None:
        return Claimed(None, got.next)
    return Claimed(ReplayState(got.task, got.now, got.workflow, got.events, got.signals, got.tail), got.task[3])


class _Claims(msgspec.Struct, frozen=True):
    states: list[ReplayState]
    next: float | None = None
    carry: _CarryAnswer | None = None


_claims = msgspec.json.Decoder(_Claims)


def claim_replays(
    tx: StepTransaction, shard: str, versions: list[int], whole_below: int, limit: int, owner: str = ""
) -> tuple[list[ReplayState], float | None, Carry | None]:
    """Up to ``limit`` claims of ``claim_replay`` in one statement
    (``flows_claim_replays_v2``, migration 040), for a worker that found a
    backlog in ``shard``; also seconds until its next task is due. A due
    `child` or `parent` task ends the batch, leased to ``owner`` and
    returned as the carry."""
    row = tx.begin_with(
        "SELECT flows_claim_replays_v2(%s, %s::integer[], %s::uuid[], %s, %s, %s, %s)",
        (shard, _int_array(tuple(versions)), [uuid6.uuid7() for _ in range(limit)], sharding.channel(shard),
         whole_below, limit, owner),
    )
    assert row is not None and row[0] is not None
    got = _claims.decode(row[0])
    return got.states, got.next, None if got.carry is None else _carry(got.carry, shard)


def lock_workflow(tx: StepTransaction, shard: str, workflow_id: UUID) -> tuple[UUID, str, int, int] | None:
    """Lock a workflow row, waiting for a step in progress; return its
    (tenant_id, status, version, sequence_num), None if there is none."""
    row = tx.begin_with(
        "SELECT tenant_id, status, version, sequence_num FROM workflows WHERE name = %s AND id = %s FOR UPDATE",
        (shard, workflow_id),
    )
    return None if row is None else (row[0], row[1], row[2], row[3])


def lock_activity(
    tx: StepTransaction, task: ActivityTask, owner: str, stamp: tuple[datetime, int | None] | None = None
) -> ReplayState | None:
    """Lock the workflow row to record the end of an activity attempt and
    delete our leased task. None if this delivery no longer holds the lease
    (its attempt timed out and was recorded so, or another worker took the
    task, or the workflow ended and dropped it).

    With the ``stamp`` the worker remembers of the workflow's latest step
    still on its row, only the events written since come back (``tail``)."""
    updated_at, last_event = stamp if stamp is not None else (None, None)
    return _state(tx.begin_with(
        "SELECT flows_lock_activity_v3(%s, %s, %s, %s, %s, %s, %s::integer)",
        (task.shard, task.workflow_id, task.task_id, owner, task.token, updated_at, last_event),
    ))


def lock_activities(
    tx: StepTransaction, tasks: Sequence[tuple[ActivityTask, tuple[datetime, int | None] | None]], owner: str
) -> list[ReplayState | None]:
    """``lock_activity`` for several attempts (of different workflows) in one
    round trip, which begins the transaction; in the order given."""
    cur = psycopg.ClientCursor(tx.conn)
    params: list[Any] = []
    for task, stamp in tasks:
        updated_at, last_event = stamp if stamp is not None else (None, None)
        params += [task.shard, task.workflow_id, task.task_id, owner, task.token, updated_at, last_event]
    cur.execute("BEGIN; " + "; ".join(
        ["SELECT flows_lock_activity_v3(%s, %s, %s, %s, %s, %s, %s::integer)"] * len(tasks)), tuple(params))
    states: list[ReplayState | None] = []
    for _ in tasks:
        cur.nextset()
        states.append(_state(cur.fetchone()))
    return states


def load_state(tx: StepTransaction, shard: str, workflow_id: UUID, now: datetime) -> ReplayState:
    """The replay state with the current run's whole history, inside a step
    whose claim sent only a tail the worker cannot use."""
    row = tx.conn.execute("SELECT flows_state_v3(%s, %s, NULL, NULL, %s)", (shard, workflow_id, now)).fetchone()
    state = _state(row)
    assert state is not None
    return state


def replay_state(conn: Conn, shard: str, workflow_id: UUID) -> ReplayState | None:
    """The workflow with its history and unconsumed signals, unlocked (for inspection)."""
    return _state(conn.execute(
        "SELECT flows_state_v3(%s, %s, NULL, NULL, now())", (shard, workflow_id)).fetchone())


class ActivityEnd(msgspec.Struct, omit_defaults=True):
    """The attempt whose end a step records: completed with ``output`` or
    failed (no attempts left) with ``error``; ``details``: the attempt's
    last heartbeat details, when it beat."""

    id: UUID
    status: str
    attempt: int
    seq: int  # its step: the update names both unique keys of the row (see migration 053)
    output: msgspec.Raw | None = None
    error: str | None = None
    details: msgspec.Raw | None = None


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
    seq: int  # the step it belongs to (0: none)
    kind: str
    data: msgspec.Raw  # the event Struct's JSON, encoded once: sent as is, and kept in a worker's copy


class NewChild(msgspec.Struct):
    id: UUID
    name: str  # the child's sharded name
    version: int
    seq: int
    input: msgspec.Raw
    parent_close: str


class ConsumedSignal(msgspec.Struct):
    id: UUID
    seq: int


def reject_signals(tx: StepTransaction, shard: str, workflow_id: UUID, rejects: list[tuple[UUID, str]]) -> None:
    """Mark signals (id, reason) rejected by a wait, in the step's
    transaction (begun by its claim): consumed by no step, so no replay
    sees them again."""
    tx.conn.execute(
        "UPDATE signals s SET consumed = true, consumed_at = now(), rejected = r.reason"
        " FROM unnest(%s::uuid[], %s::text[]) AS r(id, reason)"
        " WHERE s.workflow_name = %s AND s.workflow_id = %s AND s.id = r.id AND NOT s.consumed",
        ([i for i, _ in rejects], [reason for _, reason in rejects], shard, workflow_id),
    )


class Retry(msgspec.Struct, omit_defaults=True):
    """A failed attempt with attempts left: the activity goes back to
    ``scheduled`` and a task for the next attempt is due ``delay`` seconds on."""

    id: UUID
    attempt: int  # failed attempts after this one
    error: str
    delay: float
    task_id: UUID
    name: str
    lease_seconds: float
    event: NewEvent
    details: msgspec.Raw | None = None


class Step(msgspec.Struct, omit_defaults=True):
    """Everything one replay of a locked workflow writes (see
    ``flows_record_step_v3`` in migration 010 and ``flows_record_step_v4``
    in 040 for each field)."""

    shard: str
    workflow_id: UUID
    tenant_id: UUID
    version: int
    status: str | None  # None: no replay (an attempt to retry); continued: the next run starts
    seq: int
    waiting_for: str | None = None
    activity: ActivityEnd | None = None
    retry: Retry | None = None
    activities: list[NewActivity] = []
    signals: list[ConsumedSignal] = []
    timers: list[NewTimer] = []
    cancel_timers: list[UUID] = []
    children: list[NewChild] = []
    events: list[NewEvent] = []
    output: msgspec.Raw | None = None
    next_input: msgspec.Raw | None = None  # continued: the next run's input
    next_task_id: UUID | None = None
    start_event: NewEvent | None = None
    error: str | None = None
    dlq_id: UUID | None = None
    end_event: NewEvent | None = None
    wake_channel: str | None = None
    wake_work: str = ANY_WORK  # the NOTIFY payload: which kind of task is new
    done_channel: str | None = None
    channel: str | None = None  # the shard's wake-up channel, for what an end sets going


_step_encoder = msgspec.json.Encoder()


def _encode_event(data: msgspec.Struct) -> bytes:
    # Its values passed the size limit on their own; the NUL check stays.
    return codec.encode(data, "history event", limit=1 << 31)


def event(seq: int, data: msgspec.Struct) -> NewEvent:
    """A history event of step ``seq`` with a fresh id, for ``Step.events``."""
    return NewEvent(uuid6.uuid7(), seq, history.event_type(data), msgspec.Raw(_encode_event(data)))


class Stamp(msgspec.Struct, frozen=True):
    updated_at: datetime
    last_event: int


_stamp = msgspec.json.Decoder(Stamp)


def record_step(tx: StepTransaction, step: Step) -> tuple[datetime, int]:
    """Write a replay's decisions in one statement (``flows_record_step_v5``)
    and commit: the attempt that ended (or is retried), new activities (those
    leased to a worker are not due until their lease runs out), consumed
    signals, new and cancelled timers, new children, history, and the
    workflow row; NOTIFY the shard when new work is due now. Returns the
    stamp the step left on the row (updated_at, last_event)."""
    row = tx.commit_with("SELECT flows_record_step_v5(%s)", (Json(_step_encoder.encode(step)),))
    assert row is not None
    stamp = _stamp.decode(row[0])
    return stamp.updated_at, stamp.last_event


def record_steps(tx: StepTransaction, steps: list[Step]) -> list[tuple[datetime, int]]:
    """Write several steps (of workflows this transaction locked) and
    commit, in one round trip; returns each step's stamp."""
    rows = tx.commit_all(["SELECT flows_record_step_v5(%s)"] * len(steps),
                         tuple(Json(_step_encoder.encode(step)) for step in steps))
    stamps = []
    for row in rows:
        assert row is not None
        got = _stamp.decode(row[0])
        stamps.append((got.updated_at, got.last_event))
    return stamps


def woken_at(
    tx: StepTransaction, shard: str, now: datetime, signal_ids: list[UUID], timer_id: UUID | None = None
) -> Deferred:
    """Seconds before ``now`` (a claim's database time) that the latest of
    these signals arrived, or this timer fell due: read with the step's
    COMMIT (for the metrics of the step they woke)."""
    return tx.defer(
        "SELECT extract(epoch FROM %s::timestamptz - greatest("
        "(SELECT max(created_at) FROM signals WHERE workflow_name = %s AND id = ANY(%s::uuid[])),"
        " (SELECT fire_at FROM timers WHERE workflow_name = %s AND id = %s)))::float8",
        (now, shard, signal_ids, shard, timer_id),
    )


# -- carrying a step's intents to other shards (flows/children.py) ----------------


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
        (shard, _text_array(tuple(names)), owner, limit, sharding.channel(shard)),
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


@functools.lru_cache(maxsize=64)
def _int_array(items: tuple[int, ...]) -> str:
    return "{" + ",".join(str(int(i)) for i in items) + "}"


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
            _text_array(self.shards),
            _text_array(tuple("[" + ",".join(map(str, v)) + "]" for v in self.versions)),
            _text_array(self.activities),
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
    return connect(dsn, autocommit=True, timeout_seconds=timeout_seconds)


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


class Beat(msgspec.Struct, frozen=True):
    """A heartbeat's news: another live worker serves one of our shards;
    some worker has been silent past the stale limit; a task of ours is due."""

    shared: bool
    stale: bool
    due: bool


_beat = msgspec.json.Decoder(Beat)


def beat_worker(conn: Conn, owner: str, serves: Serves, stale_seconds: float) -> Beat | None:
    """Refresh the worker's heartbeat, and learn what ``Beat`` says (whether
    a task is due is asked by the database clock: the beat is the worker's
    safety net for notifications it missed). None if its row is gone (a
    supervisor or another worker took it for dead and released its leases):
    register again. One statement (``flows_beat``)."""
    row = conn.execute(
        "SELECT flows_beat(%s, %s::text[], %s::text[], %s::text[], %s)", (owner, *serves.params, stale_seconds),
    ).fetchone()
    return None if row is None or row[0] is None else _beat.decode(row[0])


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


# -- schedules (flows/schedules.py) -------------------------------------------
#
# schedules is fleet metadata keyed by the schedule's id, not by a shard key
# (see migrations/040_primitives.sql): under Citus it stays on the
# coordinator. A scheduled run is started by start_workflow, a transaction
# of its own on the run's shard.

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


def db_now(conn: Conn) -> datetime:
    row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


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
    now = rows[0][-1] if rows else db_now(conn)
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


# -- the console and the operator's CLI: listing, inspecting, retrying, pruning --
#
# Reads for people, not for the fleet: each statement still filters by the
# shard key, and lists walk one index-ordered scan per shard (LATERAL ...
# LIMIT) so a page costs its own rows, not the table's.


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
        {"window": window_seconds, "bucket": bucket_seconds, "shards": _text_array(tuple(shards))},
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


def database_now(conn: Conn) -> datetime:
    row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


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
