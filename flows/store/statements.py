"""How statements run: a client statement built once by a named function
(its text, parameters, and how to read its rows) and run on a psycopg
connection or an async one; a worker step's transaction, in two round
trips; the array parameters, sent as text.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

import psycopg
from psycopg.adapt import PyFormat, Transformer

from flows import codec
from flows.codec import Json
from flows.store.connections import AsyncConn, Conn

R = TypeVar("R")

# jsonb goes out as the bytes msgspec made (our own Json type only) and comes
# back as text cast in the query, so any connection, ours or a caller's,
# works without changing its adapters.
psycopg.adapters.register_dumper(Json, codec.JsonbDumper)


@functools.lru_cache(maxsize=1024)
def text_array(items: tuple[str, ...]) -> str:
    """A list of shards as a text[] value in PostgreSQL's input form, made
    once: psycopg dumps a list element by element on every call (74 against
    16 us of client CPU for a worker's 12 shards). Pass it as ``%s::text[]``."""
    values = list(items)
    return bytes(Transformer().get_dumper(values, PyFormat.TEXT).dump(values) or b"{}").decode()


@functools.lru_cache(maxsize=64)
def int_array(items: tuple[int, ...]) -> str:
    return "{" + ",".join(str(int(i)) for i in items) + "}"


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


def read_first(rows: list[tuple[Any, ...]]) -> Any:
    return rows[0][0] if rows else None


def read_nothing(rows: list[tuple[Any, ...]]) -> None:
    return None


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
