"""The supervisor's loop never waits on the database: with every statement
that would release a dead worker's leases stalled behind a lock, it still
reaps the worker, starts its replacement, and stops on SIGTERM in bounded
time; the leases are released once the database answers again."""

from __future__ import annotations

import os
import re
import signal
import time
from typing import Any, Callable

import psycopg
import pytest

from flows import Engine
from tests import fleet_app
from tests.acceptance.fleet_harness import SPAWN, Fleet, alive, children_of, fleets, ledger, wait_until

__all__ = ["fleets", "ledger"]  # fixtures

pytestmark = pytest.mark.slow


def _stall_task_queue(db_url: str) -> psycopg.Connection[Any]:
    """A transaction holding task_queue's strongest lock: every statement
    on it (the release of leases, the workers' claims) waits until it ends."""
    conn = psycopg.connect(db_url)
    conn.execute("LOCK TABLE task_queue IN ACCESS EXCLUSIVE MODE")
    return conn


def test_a_stalled_release_never_stops_the_supervisor_reaping_respawning_and_stopping(
    db_url: str, engine: Engine, ledger: Any, fleets: Callable[..., Fleet]
) -> None:
    fleet = fleets(db_url, "--workers", "2", FLOWS_GRACEFUL_TIMEOUT="2")
    workers = fleet.wait_ready(2)
    run = engine.start(fleet_app.hold_workflow, 5.0)  # a lease for the release to give back
    (holder,) = wait_until(lambda: ledger.execute("SELECT pid FROM fleet_attempts").fetchone(), what="the attempt")
    assert holder in workers

    lock = _stall_task_queue(db_url)
    try:
        os.kill(holder, signal.SIGKILL)
        fleet.wait_log(rf"worker-exit pid={holder} ", timeout=10)
        # The release of its lease waits behind the lock, in the helper: the
        # loop goes on and starts the replacement at once.
        wait_until(lambda: len(fleet.matches(SPAWN)) == 3, timeout=10, what="the replacement worker")
        (new,) = {int(m[1]) for m in fleet.matches(SPAWN)} - set(workers)
        assert alive(new) and new in children_of(fleet.pid)
        time.sleep(6)  # past the helper's statement timeout: the release failed and is being retried
        assert fleet.matches(re.compile(r"database-unavailable during=release"))
        assert not fleet.matches(re.compile(rf"leases-released owner=\S+:{holder}:"))
    finally:
        lock.close()  # the transaction ends: the release gets through

    fleet.wait_log(rf"leases-released owner=\S+:{holder}:\w+ count=1", timeout=15)
    assert engine.result(run.workflow_name, run.workflow_id, timeout=60) == "held 5.0s"
    fleet.send(signal.SIGTERM)
    assert fleet.wait(30) == 0, fleet.log()


def test_sigterm_is_answered_while_every_release_is_stalled(
    db_url: str, engine: Engine, ledger: Any, fleets: Callable[..., Fleet]
) -> None:
    fleet = fleets(db_url, "--workers", "2", FLOWS_GRACEFUL_TIMEOUT="2")
    workers = fleet.wait_ready(2)
    lock = _stall_task_queue(db_url)
    try:
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        fleet.wait_log(rf"worker-exit pid={victim} ", timeout=10)
        wait_until(lambda: len(fleet.matches(SPAWN)) == 3, timeout=10, what="the replacement worker")

        began = time.monotonic()
        fleet.send(signal.SIGTERM)
        # The workers' own last statements wait on the lock too: they are
        # killed 5 s after their graceful timeout; the supervisor gives the
        # releases of their leases 5 s more, then leaves.
        assert fleet.wait(30) == 0, fleet.log()
        assert time.monotonic() - began < 25, fleet.log()
        assert fleet.matches(re.compile(r"leases-not-released owner="))
    finally:
        lock.close()
