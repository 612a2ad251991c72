"""The fleet as an operator sees it, and the fleet's own upkeep.

- ``fleet``: the workers (from their heartbeats) and each shard's queue
  (``Engine.fleet``, the console's fleet page); ``shard_gauges``: the
  metrics endpoint's gauges; ``counts``: ``flows status``.
- The supervisor's database work, run by its helper thread
  (flows/supervisor/database.py) on a ``connect``-ed connection, where no
  wait is unbounded: ``check`` (at start-up), ``probe``,
  ``release_worker`` (a worker it saw die) and ``release_stale`` (workers
  elsewhere whose heartbeats stopped).

Each raises DatabaseError (flows.errors) for what the database refused or
could not answer, never a psycopg error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flows import migrate, store
from flows.ops import Database
from flows.store import fleet as fleet_store
from flows.store import ops as ops_store

DEFAULT_STALE_SECONDS = 30.0  # a worker this long without a heartbeat is taken for dead (FLOWS_STALE_SECONDS)

FleetWorker = ops_store.FleetWorker
ShardGauges = ops_store.ShardGauges


def stale_seconds() -> float:
    """FLOWS_STALE_SECONDS, else DEFAULT_STALE_SECONDS."""
    return float(os.environ.get("FLOWS_STALE_SECONDS") or DEFAULT_STALE_SECONDS)


# -- what an operator sees -------------------------------------------------------------


@dataclass(frozen=True)
class ShardState:
    """One shard's queue and who serves it."""

    shard: str
    tasks: int
    due: int
    leased: int
    oldest_due_seconds: float | None
    workers: list[str]  # owners of live workers serving it


@dataclass(frozen=True)
class Fleet:
    now: datetime
    stale_seconds: float
    workers: list[FleetWorker]
    shards: list[ShardState]

    def alive(self, worker: FleetWorker) -> bool:
        return worker.beat_age_seconds <= self.stale_seconds


def fleet(db: Database, stale_seconds: float) -> Fleet:
    """``Engine.fleet``."""
    with store.wrapped(), db.connection() as conn:
        now = store.database_now(conn)
        workers = ops_store.fleet_workers(conn)
        names = sorted(set(ops_store.shard_names(conn)) | {s for w in workers for s in w.shards})
        queues = ops_store.shard_queues(conn, names)
    serving: dict[str, list[str]] = {}
    for w in workers:
        if w.beat_age_seconds <= stale_seconds:
            for s in w.shards:
                serving.setdefault(s, []).append(w.owner)
    shards = [ShardState(q.shard, q.tasks, q.due, q.leased, q.oldest_due_seconds, serving.get(q.shard, []))
              for q in queues]
    return Fleet(now, stale_seconds, workers, shards)


def shard_gauges(conn: Any, stale_seconds: float) -> list[ShardGauges]:
    """The metrics' gauges of every shard that has workflows or a worker."""
    with store.wrapped():
        return ops_store.shard_gauges(conn, stale_seconds)


def counts(db: Database) -> dict[str, dict[str, dict[str, int]]]:
    """``flows status``: workflows per shard and status, tasks per shard and type."""
    with store.wrapped(), db.connection() as conn:
        return {"workflows": ops_store.count_workflows(conn), "tasks": ops_store.count_tasks(conn)}


# -- the supervisor's database work ------------------------------------------------------


def connect(dsn: str, *, seconds: float) -> store.Conn:
    """A connection of the supervisor's helper (or the metrics endpoint's)
    on which no wait lasts much beyond ``seconds`` (connect, statement,
    lock, a silent network: ``store.connect_bounded``)."""
    return store.connect_bounded(dsn, seconds=seconds)


def check(conn: Any) -> list[str]:
    """The migrations not applied yet; MigrationChanged (a FlowsError) when
    a file changed after it was applied or none can be found."""
    with store.wrapped():
        return migrate.check(conn)


def probe(conn: Any) -> None:
    """One cheap statement: the database answers."""
    with store.wrapped():
        fleet_store.fleet_schema_ready(conn)


def release_worker(conn: Any, owner: str, shards: list[str]) -> int:
    """A worker is known dead: its leased tasks are due at once (the shards'
    workers woken) and its heartbeat forgotten. Returns the tasks released."""
    with store.wrapped():
        return fleet_store.release_worker(conn, owner, shards)


def release_stale(conn: Any, stale_seconds: float, alive: list[str]) -> list[tuple[str, int]]:
    """Take the workers silent for ``stale_seconds`` (by the database clock),
    except the ``alive`` owners, for dead and release their leases: (owner,
    tasks released) each."""
    with store.wrapped():
        return fleet_store.release_stale_workers(conn, stale_seconds, alive)


def reachable(dsn: str) -> None:
    """Connect once and leave: DatabaseError naming the host and what to
    check when the server cannot be reached (``flows worker`` at boot)."""
    store.connect(dsn, timeout_seconds=store.CONNECT_TIMEOUT_SECONDS).close()
