"""Prometheus metrics of worker processes (``flows worker``) writing in one
metrics directory, scraped over HTTP and checked against the database: the
counts of two processes add up, a killed one's counts stay, no label
carries an id. And the database gauges of the web app's /metrics."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterator
from uuid import UUID

import psycopg
import pytest
import uuid6

import flows
from flows import Engine, metrics, sharding
from tests import metrics_app
from tests.integration.conftest import Spawn
from tests.acceptance.loan_stack import free_port
from tests.metrics_support import Scrape, assert_no_ids, attempts, count, scrape, settled, workflows

ORDER, DOOMED, NAP = "m-order", "m-doomed", "m-nap"


def ids_on(shard: int, n: int) -> list[UUID]:
    """``n`` fresh workflow ids that land on ``shard`` (of 3)."""
    out: list[UUID] = []
    while len(out) < n:
        wid = uuid6.uuid7()
        if sharding.shard_index(wid, 3) == shard:
            out.append(wid)
    return out


def wait_for(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def run_workflows(engine: Engine, db: psycopg.Connection[Any], orders: list[UUID], doomed: list[UUID]) -> None:
    """Start them, signal each order once it waits (so the signal wakes it), and wait for all to end."""
    for wid in orders:
        engine.start(metrics_app.order, 1, workflow_id=wid)
    for wid in doomed:
        engine.start(metrics_app.doomed, 1, workflow_id=wid)
    for wid in orders:
        wait_for(lambda: engine.query(ORDER, wid).waiting_for == "signal:go", f"{wid} to wait")
        engine.send_signal(ORDER, wid, "go")
    for name, ids in ((ORDER, orders), (DOOMED, doomed)):
        for wid in ids:
            wait_for(lambda: engine.query(name, wid).status in ("completed", "failed"), f"{name} {wid} to end")


def matches_database(url: str, db: psycopg.Connection[Any], orders: int, doomed: int) -> Scrape:
    """A scrape whose counters match the rows the workflows left (once written)."""
    return settled(lambda: assert_matches_database(scrape(url), db, orders, doomed))


def assert_matches_database(s: Scrape, db: psycopg.Connection[Any], orders: int, doomed: int) -> Scrape:
    assert s.value("flows_workflows_completed_total", workflow=ORDER) == workflows(db, ORDER, "completed") == orders
    assert s.value("flows_workflows_failed_total", workflow=DOOMED) == workflows(db, DOOMED, "failed") == doomed
    assert count(db, "SELECT count(*) FROM dead_letter_queue WHERE workflow_name LIKE 'm-doomed-%'") == doomed
    for activity in ("m-work", "m-flaky", "m-broken"):
        assert s.value("flows_activity_attempts_total", activity=activity) == attempts(db, activity)
        assert s.value("flows_activity_failures_total", activity=activity) == attempts(db, activity, True)
        assert s.value("flows_activity_duration_seconds_count", activity=activity) == attempts(db, activity)
    # Per order: start, signal, work's end, timer, flaky's failure, flaky's end; per doomed: start, two failures.
    assert s.value("flows_steps_total", workflow=ORDER) == 6 * orders
    assert s.value("flows_steps_total", workflow=DOOMED) == 3 * doomed
    assert s.value("flows_step_latency_seconds_count", workflow=ORDER) == 6 * orders
    assert s.value("flows_step_latency_seconds_count", workflow=DOOMED) == 3 * doomed
    signals = count(db, "SELECT count(*) FROM signals WHERE workflow_name LIKE 'm-order-%' AND consumed")
    assert s.value("flows_wakeup_latency_seconds_count", workflow=ORDER) == signals == orders
    fired = count(db, "SELECT count(*) FROM timers WHERE workflow_name LIKE 'm-order-%' AND fired")
    assert s.value("flows_timer_lateness_seconds_count", workflow=ORDER) == fired == orders
    # A timer's lateness runs from its fire_at to the commit, after the claim that fired it (fired_at).
    row = db.execute("SELECT sum(extract(epoch FROM fired_at - fire_at)) FROM timers"
                     " WHERE workflow_name LIKE 'm-order-%'").fetchone()
    assert row is not None and s.value("flows_timer_lateness_seconds_sum", workflow=ORDER) >= float(row[0]) > 0
    assert s.value("flows_timer_lateness_seconds_bucket", workflow=ORDER, le="+Inf") == orders
    assert s.value("flows_wakeup_latency_seconds_sum", workflow=ORDER) > 0
    assert_no_ids(s)
    return s


@pytest.fixture
def metrics_dir(tmp_path: Path) -> Path:
    path = tmp_path / "metrics"
    path.mkdir()
    return path


@pytest.fixture
def spawn_worker(spawn_worker: Spawn, db_url: str, metrics_dir: Path) -> Callable[[str], subprocess.Popen[bytes]]:
    """``flows worker --app tests.metrics_app`` processes on these shard
    indices, writing their metrics in ``metrics_dir``; killed after the test."""

    def spawn(shards: str) -> subprocess.Popen[bytes]:
        return spawn_worker(db_url, "tests.metrics_app", ("--shard-indices", shards),
                            PROMETHEUS_MULTIPROC_DIR=str(metrics_dir), FLOWS_HEARTBEAT_SECONDS="1")

    return spawn


@pytest.fixture
def served(metrics_dir: Path, db_url: str) -> Iterator[str]:
    """The directory's /metrics, served from this process (over HTTP)."""
    port = free_port()
    server = metrics.serve(port, db_url, host="127.0.0.1", directory=str(metrics_dir))
    yield f"http://127.0.0.1:{port}/metrics"
    server.shutdown()
    server.server_close()


def test_worker_processes_add_up_and_a_killed_one_still_counts(
    engine: Engine, db: psycopg.Connection[Any], spawn_worker: Callable[[str], subprocess.Popen[bytes]],
    metrics_dir: Path, served: str,
) -> None:
    spawn = spawn_worker
    first = spawn("0")
    second = spawn("1,2")
    wait_for(lambda: scrape(served).value("flows_workers_alive") == 2, "two workers alive")
    # Work on both: shard 0 is the first process's, shards 1 and 2 the second's.
    run_workflows(engine, db, ids_on(0, 2) + ids_on(1, 2) + ids_on(2, 1), ids_on(0, 1) + ids_on(2, 1))
    s = matches_database(served, db, orders=5, doomed=2)
    files = {p.name for p in metrics_dir.iterdir()}
    assert {f"counter_{first.pid}.db", f"counter_{second.pid}.db"} <= files  # both wrote their own

    # A timer on shard 0 falls due while no worker serves it: it fires late.
    nap = engine.start(metrics_app.nap, 1.0, workflow_id=ids_on(0, 1)[0])
    wait_for(lambda: engine.query(NAP, nap.workflow_id).waiting_for == "timer", "the nap's timer")

    # A killed worker's counts stay; its live gauge goes once it is marked dead.
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    metrics.process_dead(first.pid, str(metrics_dir))
    after = scrape(served)
    assert after.value("flows_workers_alive") == 1
    for name, labels in (("flows_workflows_completed_total", {"workflow": ORDER}),
                         ("flows_steps_total", {"workflow": ORDER}),
                         ("flows_activity_attempts_total", {"activity": "m-flaky"})):
        assert after.value(name, **labels) == s.value(name, **labels) > 0

    # A new process on shard 0 adds its counts to the dead one's.
    wait_for(lambda: count(db, "SELECT count(*) FROM timers WHERE workflow_id = %s AND NOT fired"
                               " AND fire_at < now() - interval '0.5 second'", nap.workflow_id),
             "the nap's timer overdue")
    spawn("0")
    wait_for(lambda: scrape(served).value("flows_workers_alive") == 2, "the replacement alive")
    run_workflows(engine, db, ids_on(0, 2) + ids_on(1, 1), ids_on(0, 1))
    final = matches_database(served, db, orders=8, doomed=3)
    assert engine.result(NAP, nap.workflow_id, timeout=30) == "rested"

    def nap_timed() -> Scrape:
        got = scrape(served)
        assert got.value("flows_timer_lateness_seconds_count", workflow=NAP) == 1
        return got

    final = settled(nap_timed)
    row = db.execute("SELECT extract(epoch FROM fired_at - fire_at) FROM timers WHERE workflow_id = %s",
                     (nap.workflow_id,)).fetchone()
    assert row is not None and row[0] >= 0.5
    assert final.value("flows_timer_lateness_seconds_sum", workflow=NAP) >= float(row[0])
    assert final.value("flows_timer_lateness_seconds_bucket", workflow=NAP, le="0.25") == 0
    assert not metrics.enabled()  # this process set no metrics directory: it recorded nothing


def test_web_metrics_read_the_queue_dead_letters_and_workers_from_the_database(
    db_url: str, db: psycopg.Connection[Any], start_worker: Callable[..., flows.Worker], engine: Engine,
) -> None:
    from webapp import create_app

    app = create_app({"DATABASE_URL": db_url, "SHARDS": 3})
    web = app.test_client()
    try:
        for wid in ids_on(0, 3) + ids_on(2, 1):
            engine.start(metrics_app.order, 1, workflow_id=wid)
        # No worker yet: the starts wait in the queue.
        time.sleep(0.05)
        s = Scrape(web.get("/metrics").get_data(as_text=True))
        assert s.value("flows_database_up") == 1
        assert s.value("flows_queue_depth", workflow=ORDER, shard="0") == 3
        assert s.value("flows_queue_depth", workflow=ORDER, shard="2") == 1
        assert s.has("flows_queue_depth") and s.value("flows_queue_depth", workflow=ORDER, shard="1") == 0
        oldest = s.value("flows_queue_oldest_due_age_seconds", workflow=ORDER, shard="0")
        row = db.execute("SELECT extract(epoch FROM now() - min(visibility_timeout)) FROM task_queue"
                         " WHERE workflow_name = 'm-order-shard-0'").fetchone()
        assert row is not None and 0 < oldest <= float(row[0])
        assert s.value("flows_shard_workers", workflow=ORDER, shard="0") == 0
        assert_no_ids(s)

        worker = start_worker(metrics_app.WORKFLOWS, [metrics_app.work, metrics_app.flaky, metrics_app.broken],
                              shards=[0, 1], heartbeat_seconds=0.2)
        doomed = ids_on(1, 2)
        for wid in doomed:
            engine.start(metrics_app.doomed, 1, workflow_id=wid)
        for wid in doomed:
            wait_for(lambda: engine.query(DOOMED, wid).status == "failed", "doomed to fail")
        wait_for(lambda: count(db, "SELECT count(*) FROM worker_heartbeats") == 1, "the worker's heartbeat")
        time.sleep(metrics.DATABASE_CACHE_SECONDS)  # past the cached read
        s = Scrape(web.get("/metrics").get_data(as_text=True))
        assert s.value("flows_dead_letters", workflow=DOOMED, shard="1") == 2 == count(
            db, "SELECT count(*) FROM dead_letter_queue WHERE workflow_name = 'm-doomed-shard-1'")
        assert s.value("flows_queue_depth", workflow=ORDER, shard="0") == 0  # waiting for signals now
        assert s.value("flows_shard_workers", workflow=ORDER, shard="0") == 1
        assert s.value("flows_shard_workers", workflow=ORDER, shard="2") == 0
        assert s.value("flows_queue_depth", workflow=ORDER, shard="2") == 1  # no worker serves it
        worker.stop()
    finally:
        from webapp.extension import client

        client.close(app)


def test_web_metrics_need_the_admin_key_when_keys_are_set(db_url: str) -> None:
    from webapp import create_app
    from webapp.extension import client

    tenant = "00000000-0000-0000-0000-00000000000a"
    app = create_app({"DATABASE_URL": db_url, "API_KEYS": f"tenant-key-0123456789:{tenant}",
                      "CONSOLE_ADMIN_KEY": "admin-key-0123456789"})
    web = app.test_client()
    try:
        assert web.get("/metrics").status_code == 401
        denied = web.get("/metrics", headers={"Authorization": "Bearer tenant-key-0123456789"})
        assert denied.status_code == 401 and denied.get_json()["error"] == "unauthorized"
        ok = web.get("/metrics", headers={"Authorization": "Bearer admin-key-0123456789"})
        assert ok.status_code == 200 and Scrape(ok.get_data(as_text=True)).value("flows_database_up") == 1
    finally:
        client.close(app)
