"""Connecting to PostgreSQL, and the one place its errors are wrapped.

A failure to connect becomes a DatabaseError that names the host (never the
password) and what to check; a psycopg error raised by a statement becomes a
DatabaseError (DatabaseUnavailable when a retry may succeed) whose message
quotes no row values. Also here: pools, LISTEN/NOTIFY, and the database's
clock, which decides whenever something is due.
"""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Iterable, Iterator

import psycopg
import psycopg.conninfo
import psycopg.errors
import psycopg_pool
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from flows import sharding
from flows.errors import DatabaseError, DatabaseUnavailable

Conn = psycopg.Connection[Any]
AsyncConn = psycopg.AsyncConnection[Any]

# Connection-class errors (SQLSTATE 08), shutdowns and the like: worth a retry
# once the database is back, never a reason to fail a workflow.
PoolTimeout = psycopg_pool.PoolTimeout  # no connection could be had in time
TRANSIENT_ERRORS = (
    psycopg.OperationalError,
    psycopg.errors.SerializationFailure,
    psycopg.errors.DeadlockDetected,
    DatabaseUnavailable,  # connect() failed: the server may come back
)


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


def connect_bounded(dsn: str, *, seconds: float) -> Conn:
    """An autocommit connection on which no wait lasts much beyond
    ``seconds``: connecting (connect_timeout), a statement and the locks it
    waits for (statement_timeout), and a server or network that went
    silent (TCP keepalives, and tcp_user_timeout for data sent but never
    acknowledged: without them a read on a dead connection waits for
    hours). For a process that must not hang on the database: the
    supervisor's helper, the metrics endpoint. DatabaseError as
    ``connect``'s."""
    whole = max(1, round(seconds))
    # Keepalives and tcp_user_timeout are TCP's: libpq ignores them on a Unix socket.
    tcp: dict[str, Any] = {"keepalives": 1, "keepalives_idle": whole, "keepalives_interval": 1, "keepalives_count": 3,
           "tcp_user_timeout": whole * 1000}
    try:
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=whole, **tcp)
    except (psycopg.Error, UnicodeError) as exc:
        raise connection_error(dsn, exc) from exc
    try:
        with wrapped():
            conn.execute(sql.SQL("SET statement_timeout = {}").format(sql.Literal(round(seconds * 1000))))
    except BaseException:
        conn.close()
        raise
    return conn


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


def refused_by_database(exc: BaseException) -> bool:
    """A step the database refuses for what it holds, not for its state:
    data exceptions (SQLSTATE class 22) and integrity violations (23).
    Retrying it in place would fail the same way for ever."""
    return isinstance(exc, psycopg.Error) and (exc.sqlstate or "")[:2] in ("22", "23")


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


def database_now(conn: Conn) -> datetime:
    """The database's clock (``now()``: the start of the current transaction)."""
    row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]
