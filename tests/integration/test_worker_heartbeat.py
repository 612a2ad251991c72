"""Worker heartbeats (worker_heartbeats) and the store functions supervisors
use to release a dead worker's leases."""

from __future__ import annotations

import os
import socket
import time
from typing import Any, Callable

import psycopg

import flows
from flows import Engine, Worker, sharding, store
from flows.store import fleet as fleet_store
from flows.store import leases as lease_store
from tests import engine_app, fleet_app
from tests.acceptance.fleet_harness import wait_until


def beats(db: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return db.execute(
        "SELECT owner, pid, host, shard_group, shards, last_beat FROM worker_heartbeats ORDER BY owner").fetchall()


def test_a_worker_announces_itself_beats_and_leaves(
    db: psycopg.Connection[Any], start_worker: Callable[..., Worker]
) -> None:
    worker = start_worker([fleet_app.order], [], shards=[0, 2], heartbeat_seconds=0.1)
    first = wait_until(lambda: beats(db), what="a heartbeat row")
    owner, pid, host, group, shards, beat = first[0]
    assert (owner, pid, host, group) == (worker.owner, os.getpid(), socket.gethostname(), "0,2")
    assert shards == ["fleet-order-shard-0", "fleet-order-shard-2"]
    wait_until(lambda: beats(db)[0][5] > beat, what="a later beat")

    db.execute("DELETE FROM worker_heartbeats")  # a supervisor took it for dead
    wait_until(lambda: beats(db), what="the worker to register again")

    worker.stop()
    wait_until(lambda: not beats(db), what="the row to go with the worker")


def _lease(db: psycopg.Connection[Any], engine: Engine, start_worker: Callable[..., Worker], owner: str) -> list[str]:
    """Schedule one activity and lease it to ``owner``; return the shards."""
    replayer = start_worker([fleet_app.order], [], heartbeat_seconds=0)
    engine.start(fleet_app.order, fleet_app.Order(1))
    wait_until(lambda: db.execute("SELECT 1 FROM task_queue WHERE task_type = 'activity'").fetchone())
    replayer.stop()
    shards = engine.shard_names("fleet-order")
    leased = [task for shard in shards
              for task in lease_store.claim_activities(db, shard, ["fleet-effect"], owner, 10)[0]]
    assert len(leased) == 1
    return shards


def leased_to(db: psycopg.Connection[Any], owner: str) -> int:
    return int(db.execute("SELECT count(*) FROM task_queue WHERE lease_owner = %s", (owner,)).fetchone()[0])


def test_release_worker_frees_its_leases_and_forgets_it(
    db: psycopg.Connection[Any], engine: Engine, start_worker: Callable[..., Worker]
) -> None:
    shards = _lease(db, engine, start_worker, "gone:1")
    fleet_store.register_worker(db, owner="gone:1", pid=1, host="gone", shard_group="0,1,2", shards=shards)
    assert fleet_store.release_worker(db, "gone:1", shards) == 1
    assert leased_to(db, "gone:1") == 0 and beats(db) == []
    assert db.execute("SELECT count(*) FROM task_queue WHERE visibility_timeout <= now()").fetchone() == (1,)
    assert fleet_store.release_worker(db, "gone:1", shards) == 0


def test_only_stale_workers_not_known_alive_are_swept(
    db: psycopg.Connection[Any], engine: Engine, start_worker: Callable[..., Worker]
) -> None:
    shards = _lease(db, engine, start_worker, "stale:1")
    for owner in ("stale:1", "fresh:2", "alive-but-silent:3"):
        fleet_store.register_worker(db, owner=owner, pid=1, host="h", shard_group="0,1,2", shards=shards)
    db.execute("UPDATE worker_heartbeats SET last_beat = now() - interval '1 minute' WHERE owner <> 'fresh:2'")

    assert fleet_store.release_stale_workers(db, 30, alive=["alive-but-silent:3"]) == [("stale:1", 1)]
    assert [row[0] for row in beats(db)] == ["alive-but-silent:3", "fresh:2"]
    assert leased_to(db, "stale:1") == 0
    assert fleet_store.release_stale_workers(db, 30, alive=["alive-but-silent:3"]) == []


@flows.workflow("t-nap")
def nap(ctx: flows.WorkflowContext, seconds: float) -> str:
    ctx.sleep(seconds)
    return "rested"


def test_a_worker_alone_on_its_shards_announces_its_news_to_itself(
    db: psycopg.Connection[Any], db_url: str, engine: Engine, start_worker: Callable[..., Worker]
) -> None:
    """A NOTIFY costs every listening backend a transaction: a worker that
    no other serves its shards with wakes itself, and NOTIFYs again as soon
    as another worker registers on them."""
    shards = engine.shard_names("t-nap")
    with psycopg.connect(db_url, autocommit=True) as listener:
        store.listen(listener, [sharding.channel(s) for s in shards])
        worker = start_worker([nap], [], heartbeat_seconds=0.1)
        wait_until(lambda: worker.heartbeat.alone, what="the worker to learn it is alone")  # its row, then the flag

        def payloads_of_a_nap() -> list[str]:
            run = engine.start(nap, 0.2)
            assert engine.result(run.workflow_name, run.workflow_id, timeout=10) == "rested"
            return [n.payload for n in listener.notifies(timeout=0.3)]

        assert payloads_of_a_nap() == [store.REPLAY_WORK]  # the start's only: the timer's stayed in the worker
        fleet_store.register_worker(db, owner="other:1", pid=1, host="other", shard_group="0,1,2", shards=shards)
        def last_beat() -> Any:
            return next(b[5] for b in beats(db) if b[0] == worker.owner)

        seen = last_beat()
        wait_until(lambda: last_beat() > seen, what="a beat that sees the other worker")
        assert payloads_of_a_nap() == [store.REPLAY_WORK] * 2  # the start's and the timer's
        worker.stop()


def test_work_that_falls_due_unannounced_is_taken_at_the_next_beat(
    db: psycopg.Connection[Any], engine: Engine, start_worker: Callable[..., Worker]
) -> None:
    """A missed notification costs at most one heartbeat: each beat asks
    whether a task of the worker's shards is due, and with heartbeats on the
    loop's own safety poll is an hour away."""
    start_worker([engine_app.sleeper], [], heartbeat_seconds=0.2)
    run = engine.start(engine_app.sleeper, 3600.0)
    wait_until(lambda: db.execute(
        "SELECT 1 FROM timers WHERE workflow_id = %s", (run.workflow_id,)).fetchone(), what="the timer")
    time.sleep(0.3)  # the worker has looked up its next due task: an hour away
    db.execute("UPDATE task_queue SET visibility_timeout = now() WHERE workflow_id = %s", (run.workflow_id,))  # no NOTIFY
    assert isinstance(engine.result(run.workflow_name, run.workflow_id, timeout=10), str)


def test_a_worker_whose_pool_is_exhausted_keeps_beating(
    db: psycopg.Connection[Any], start_worker: Callable[..., Worker]
) -> None:
    """Its heartbeat has a connection of its own: a worker busy enough to
    use every pooled connection for longer than the stale limit is alive,
    and must not be taken for dead (its leases released, its work redone)."""
    worker = start_worker([fleet_app.order], [], heartbeat_seconds=0.2, stale_seconds=2.0)
    first = wait_until(lambda: beats(db), what="a heartbeat row")[0][5]
    pool = worker._pool
    held = [pool.getconn(timeout=10) for _ in range(pool.max_size)]  # every connection, as busy steps would
    try:
        time.sleep(3.0)  # longer than the stale limit
        last = beats(db)[0][5]
        fresh = db.execute("SELECT clock_timestamp() - %s < interval '1 second'", (last,)).fetchone()[0]
        assert last > first and fresh, f"the heartbeat stalled at {last} while the pool was in use"
    finally:
        for conn in held:
            pool.putconn(conn)
