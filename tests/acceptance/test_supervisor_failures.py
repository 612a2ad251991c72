"""The supervisor itself killed, PostgreSQL restarted under load, a machine
that never comes back, workflows that crash, and a database that is not
there at start-up."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from flows import Engine, embedded, migrate
from flows.store import leases as lease_store
from tests import fleet_app
from tests.acceptance.fleet_harness import (
    EXIT,
    SPAWN,
    Fleet,
    alive,
    assert_all_completed,
    children_of,
    fleets,
    ledger,
    signal_all,
    start_orders,
    wait_until,
)
from tests.conftest import _admin

__all__ = ["fleets", "ledger"]  # fixtures

pytestmark = pytest.mark.slow


def test_sigkill_supervisor_its_workers_exit_and_a_new_one_finishes_the_work(
    db_url: str, engine: Engine, ledger: Any, fleets: Callable[..., Fleet]
) -> None:
    first = fleets(db_url, "--workers", "3")
    workers = first.wait_ready(3)
    runs = start_orders(engine, 60, work_seconds=0.3)
    signal_all(engine, runs[:30])
    wait_until(lambda: ledger.execute("SELECT count(*) FROM fleet_attempts").fetchone()[0] >= 10, what="load")

    first.proc.kill()
    first.wait()
    # Orphaned, each worker notices and leaves: after what it holds, releasing the rest.
    wait_until(lambda: not any(alive(pid) for pid in workers), timeout=20, what="orphaned workers to exit")
    assert ledger.execute("SELECT count(*) FROM worker_heartbeats").fetchone() == (0,)
    assert ledger.execute("SELECT count(*) FROM task_queue WHERE lease_owner IS NOT NULL").fetchone() == (0,)
    assert not all(engine.query(r.workflow_name, r.workflow_id).status == "completed" for r, _ in runs)

    second = fleets(db_url, "--workers", "2")
    signal_all(engine, runs[30:])
    assert_all_completed(engine, ledger, runs)
    second.send(signal.SIGTERM)
    assert second.wait() == 0, second.log()


def test_a_killed_workers_lease_is_released_at_once_not_when_it_runs_out(
    db_url: str, engine: Engine, ledger: Any, fleets: Callable[..., Fleet]
) -> None:
    fleet = fleets(db_url, "--workers", "2")
    fleet.wait_ready(2)
    run = engine.start(fleet_app.hold_workflow, 1.0)
    (pid,) = wait_until(lambda: ledger.execute("SELECT pid FROM fleet_attempts").fetchone(), what="the attempt")
    assert pid in children_of(fleet.pid)
    os.kill(pid, signal.SIGKILL)

    fleet.wait_log(rf"leases-released owner=\S+:{pid}:\w+ count=1")
    # Its lease had 300 s to run: only the release lets another worker redo it now.
    assert engine.result(run.workflow_name, run.workflow_id, timeout=30) == "held 1.0s"
    pids = [p for (p,) in ledger.execute("SELECT pid FROM fleet_attempts ORDER BY at")]
    assert len(pids) == 2 and pids[0] == pid != pids[1]


@pytest.fixture
def private_server() -> Iterator[tuple[Path, str]]:
    """A PostgreSQL server of this test's own, free to restart (never the shared one).

    Not under pytest's tmp_path: every pytest session resets /tmp/pytest-of-<user>
    to mode 0700, which locks the server's own user (embedded_postgres, when we
    run as root) out of its data folder, and then pg_ctl cannot stop it."""
    data = Path(tempfile.mkdtemp(prefix="flows-fleet-pg-")) / "pg"
    try:
        url = embedded.start(data)
        migrate.migrate(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(fleet_app.LEDGER_SQL)
        yield data, url
    finally:
        try:
            embedded.stop(data)
        except subprocess.CalledProcessError:
            print((data / "log").read_text()[-3000:])  # why the server would not stop
            raise
        shutil.rmtree(data.parent, ignore_errors=True)


def test_the_fleet_rides_out_a_postgres_restart_under_load(
    private_server: tuple[Path, str], fleets: Callable[..., Fleet]
) -> None:
    data, url = private_server
    fleet = fleets(url, "--workers", "2")
    fleet.wait_ready(2)
    with Engine(url, shards=3) as engine:
        runs = start_orders(engine, 60, work_seconds=0.2)
        signal_all(engine, runs[:30])
        with psycopg.connect(url, autocommit=True) as conn:
            wait_until(lambda: conn.execute("SELECT count(*) FROM fleet_ledger").fetchone()[0] >= 20, what="load")

        embedded.stop(data)
        time.sleep(1.0)
        embedded.start(data)

        signal_all(engine, runs[30:])
        with psycopg.connect(url, autocommit=True) as conn:
            assert_all_completed(engine, conn, runs)
    assert fleet.proc.poll() is None
    assert not fleet.matches(EXIT)  # no worker died of it
    fleet.send(signal.SIGTERM)
    assert fleet.wait() == 0, fleet.log()


def test_leases_of_a_machine_that_died_are_released_once_its_heartbeat_is_stale(
    db_url: str, engine: Engine, ledger: Any, fleets: Callable[..., Fleet], start_worker: Any
) -> None:
    # Another machine's worker took the first activity of each order, then the machine died.
    replayer = start_worker([fleet_app.order], [])  # schedules activities, runs none
    runs = start_orders(engine, 5, work_seconds=0.01)
    shards = engine.shard_names("fleet-order")
    wait_until(lambda: ledger.execute("SELECT count(*) FROM task_queue WHERE task_type = 'activity'").fetchone()
               == (5,), what="activities scheduled")
    replayer.stop()
    with ledger.transaction():
        leased = [t for s in shards
                  for t in lease_store.claim_activities(ledger, s, ["fleet-effect"], "lost-host:41", 10)[0]]
        assert len(leased) == 5
        ledger.execute("UPDATE task_queue SET visibility_timeout = now() + interval '1 hour'"
                       " WHERE lease_owner = 'lost-host:41'")  # a lease that would outlive the test
    ledger.execute(
        "INSERT INTO worker_heartbeats (owner, pid, host, shard_group, shards, started_at, last_beat)"
        " VALUES ('lost-host:41', 41, 'lost-host', '0,1,2', %s, now() - interval '1 hour', now() - interval '1 hour')",
        (shards,))

    fleet = fleets(db_url, "--workers", "2", "--stale-seconds", "2")
    fleet.wait_log(re.compile(r"stale-worker-released owner=lost-host:41 leases=5"))
    signal_all(engine, runs)
    assert_all_completed(engine, ledger, runs)
    # The fleet's own, live workers were never taken for dead.
    assert len(fleet.matches(SPAWN)) == 2 and not fleet.matches(EXIT)
    assert ledger.execute("SELECT count(*) FROM worker_heartbeats").fetchone() == (2,)
    fleet.send(signal.SIGTERM)
    assert fleet.wait() == 0, fleet.log()


def test_crashing_workflows_end_in_the_dead_letter_queue_and_the_rest_completes(
    db_url: str, engine: Engine, ledger: Any, fleets: Callable[..., Fleet]
) -> None:
    fleet = fleets(db_url, "--workers", "2")
    fleet.wait_ready(2)
    crashes = [engine.start(fleet_app.crash, n) for n in range(5)]
    poisoned = [engine.start(fleet_app.poison, n) for n in range(5)]
    runs = start_orders(engine, 30, work_seconds=0.01)
    signal_all(engine, runs)
    assert_all_completed(engine, ledger, runs)

    for run in crashes + poisoned:
        wait_until(lambda: engine.query(run.workflow_name, run.workflow_id).status == "failed", what="failure")
    dlq = dict(ledger.execute("SELECT workflow_id, error FROM dead_letter_queue").fetchall())
    assert set(dlq) == {r.workflow_id for r in crashes + poisoned}
    assert all("RuntimeError: bug in workflow code" in dlq[r.workflow_id] for r in crashes)
    assert all("ConnectionError: downstream" in dlq[r.workflow_id] for r in poisoned)
    assert ledger.execute("SELECT count(*) FROM task_queue").fetchone() == (0,)  # nothing keeps retrying
    assert len(fleet.matches(SPAWN)) == 2 and not fleet.matches(EXIT)  # no worker died of it
    fleet.send(signal.SIGTERM)
    assert fleet.wait() == 0, fleet.log()


def test_no_database_at_start_up_exits_4(tmp_path: Path, fleets: Callable[..., Fleet]) -> None:
    fleet = fleets(f"postgresql://postgres@/postgres?host={tmp_path}", FLOWS_STARTUP_DB_WAIT_SECONDS="1")
    assert fleet.wait() == 4, fleet.log()
    assert "database-unreachable" in fleet.log()
    assert not fleet.matches(SPAWN)


def _migrations_copy(tmp_path: Path) -> Path:
    directory = tmp_path / "migrations"
    shutil.copytree(migrate.MIGRATIONS_DIR, directory)
    return directory


def test_a_migration_file_changed_since_it_was_applied_exits_4_naming_it(
    db_url: str, tmp_path: Path, fleets: Callable[..., Fleet]
) -> None:
    directory = _migrations_copy(tmp_path)
    with (directory / "005_step_functions.sql").open("a") as f:
        f.write("-- edited after release\n")
    fleet = fleets(db_url, FLOWS_MIGRATIONS_DIR=str(directory))
    assert fleet.wait() == 4, fleet.log()
    assert "database-migrations-refused" in fleet.log() and str(directory / "005_step_functions.sql") in fleet.log()
    assert "Traceback" not in fleet.log() and not fleet.matches(SPAWN)


def test_pending_migrations_exit_4_naming_them(db_url: str, tmp_path: Path, fleets: Callable[..., Fleet]) -> None:
    directory = _migrations_copy(tmp_path)
    (directory / "999_later.sql").write_text("CREATE TABLE later (id int);\n")
    fleet = fleets(db_url, FLOWS_MIGRATIONS_DIR=str(directory))
    assert fleet.wait() == 4, fleet.log()
    assert "database-not-migrated: run `flows migrate` first (pending: 999_later.sql)" in fleet.log()
    assert not fleet.matches(SPAWN)


def test_an_unmigrated_database_exits_4(db_url: str, fleets: Callable[..., Fleet]) -> None:
    name = f"{conninfo_to_dict(db_url)['dbname']}_empty"
    with _admin() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        fleet = fleets(make_conninfo(db_url, dbname=name))
        assert fleet.wait() == 4, fleet.log()
        assert "database-not-migrated: run `flows migrate` first" in fleet.log()
    finally:
        with _admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
