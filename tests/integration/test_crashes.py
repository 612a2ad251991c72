"""Crash and restart paths, by really killing worker processes and
restarting a real PostgreSQL server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import psycopg
import pytest

from flows import Engine, embedded
from tests import engine_app
from tests.conftest import ROOT
from tests.engine_app import Job, documents, slow_replay, three_steps
from tests.integration.conftest import Spawn


def wait_until(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return value


def test_worker_killed_mid_activity_another_finishes_the_workflow(
    engine: Engine, db_url: str, ledger: Any, spawn_worker: Spawn
) -> None:
    doomed = spawn_worker(db_url, ENGINE_APP_HANG="activity")
    run = engine.start(three_steps, Job("k", sleep_seconds=0.1, hold_seconds=0.1))
    engine.send_signal(run.workflow_name, run.workflow_id, "go", {})
    slow_key = f"{run.workflow_id}:6"
    wait_until(lambda: ledger.execute("SELECT 1 FROM ledger WHERE step = %s", (slow_key,)).fetchone())
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(5)

    spawn_worker(db_url)  # picks the attempt up again once its 3 s lease runs out
    out = engine.result(run.workflow_name, run.workflow_id, timeout=20)
    assert out["slow"] == "slow done"
    notes = [n for (n,) in ledger.execute("SELECT note FROM ledger WHERE step = %s ORDER BY at", (slow_key,))]
    assert len(notes) == 2 and notes[0] != notes[1]  # run again, by another process
    assert ledger.execute(
        "SELECT count(*) FROM history_events WHERE workflow_id = %s AND step = 6"
        " AND event_type = 'activity_completed'", (run.workflow_id,)).fetchone() == (1,)
    assert ledger.execute("SELECT status FROM activities WHERE workflow_id = %s AND sequence_num = 6",
                          (run.workflow_id,)).fetchall() == [("completed",)]


@pytest.mark.parametrize("phase", ["start", "replay"])
def test_worker_killed_mid_workflow_task_rolls_back_and_another_finishes(
    engine: Engine, db_url: str, ledger: Any, spawn_worker: Spawn, tmp_path: Path, phase: str
) -> None:
    marker = tmp_path / "inside"
    doomed = spawn_worker(db_url, ENGINE_APP_HANG=phase)
    run = engine.start(slow_replay, str(marker))
    wait_until(marker.exists)
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(5)
    status = engine.query(run.workflow_name, run.workflow_id)
    assert status.status == "running"  # nothing of the interrupted replay was committed
    assert status.sequence_num == (0 if phase == "start" else 1)

    spawn_worker(db_url)
    assert engine.result(run.workflow_name, run.workflow_id, timeout=20) == "before done then finished"
    assert ledger.execute(
        "SELECT count(*) FROM history_events WHERE workflow_id = %s AND event_type = 'activity_completed'",
        (run.workflow_id,)).fetchone() == (1,)


def test_a_worker_rides_out_a_database_restart(
    private_server: tuple[Path, str], spawn_worker: Spawn, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, url = private_server
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(engine_app.LEDGER_SQL)
    # With the safety poll at two minutes and no heartbeat (whose beat looks
    # for due work), only LISTEN (re-established after the restart) can wake
    # the worker in time.
    worker = spawn_worker(url, FLOWS_SAFETY_POLL_SECONDS="120", FLOWS_HEARTBEAT_SECONDS="0")
    with Engine(url) as engine:
        runs = [engine.start(documents, ["a", "b"]) for _ in range(5)]
        wait_until(lambda: all(engine.query(r.workflow_name, r.workflow_id).waiting_for == "signal:doc-a"
                               for r in runs))
        for r in runs:
            engine.send_signal(r.workflow_name, r.workflow_id, "doc-a", "before restart")

        embedded.stop(data)
        time.sleep(1.0)
        embedded.start(data)

        for r in runs:
            engine.send_signal(r.workflow_name, r.workflow_id, "doc-b", "after restart")
        for r in runs:
            assert engine.result(r.workflow_name, r.workflow_id, timeout=30) == ["before restart", "after restart"]
    assert worker.poll() is None


def test_an_activity_that_kills_its_worker_runs_out_of_attempts_instead_of_looping(
    engine: Engine, db_url: str, ledger: Any, tmp_path: Path
) -> None:
    fleet = subprocess.Popen(
        [sys.executable, "-m", "supervisor", "--app", "tests.engine_app", "--workers", "1"],
        cwd=ROOT, env={**os.environ, "DATABASE_URL": db_url, "FLOWS_LOG_LEVEL": "WARNING"},
    )
    try:
        run = engine.start(engine_app.fatal_workflow, 1)
        out = engine.result(run.workflow_name, run.workflow_id, timeout=30)
    finally:
        fleet.terminate()
        fleet.wait(30)
    assert out.startswith("gave up after 2 attempts: WorkerLost")
    deaths = ledger.execute("SELECT attempt FROM ledger ORDER BY at").fetchall()
    assert deaths == [(1,), (2,)]  # each attempt ran once, then the failure reached the workflow
