"""The worker fleet: heartbeats, and the release of dead workers' leases.

worker_heartbeats is fleet metadata keyed by the lease owner, not by a shard
key (see migrations/002_workers.sql). Statements on task_queue made on its
behalf still filter by the shard names it records.
"""

from __future__ import annotations

import msgspec

from flows.store.connections import Conn
from flows.store.leases import Serves, release_leases


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
