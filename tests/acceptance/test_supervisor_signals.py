"""What each signal does to a real supervisor and its workers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from flows import Engine
from tests import fleet_app
from tests.acceptance.fleet_harness import (
    EXIT,
    READY,
    SPAWN,
    Fleet,
    alive,
    assert_all_completed,
    fleets,
    ledger,
    signal_all,
    start_orders,
    wait_until,
)
from tests.conftest import ROOT

__all__ = ["fleets", "ledger"]  # fixtures

pytestmark = pytest.mark.slow


def running_attempts(db: Any) -> int:
    """Activity attempts started but not finished (no ledger row yet)."""
    row = db.execute(
        "SELECT count(*) FROM fleet_attempts a WHERE NOT EXISTS (SELECT 1 FROM fleet_ledger l WHERE l.key = a.key)"
    ).fetchone()
    return int(row[0])


def leased(db: Any) -> int:
    return int(db.execute("SELECT count(*) FROM task_queue WHERE lease_owner IS NOT NULL").fetchone()[0])


def test_sigterm_lets_activities_in_flight_finish_and_exits_0(
    db_url: str, engine: Engine, ledger: Any, fleets: Callable[..., Fleet]
) -> None:
    fleet = fleets(db_url, "--workers", "2", FLOWS_GRACEFUL_TIMEOUT="30")
    fleet.wait_ready(2)
    start_orders(engine, 6, work_seconds=1.5, signal=False)
    wait_until(lambda: running_attempts(ledger) == 6, what="6 activities in flight")

    fleet.send(signal.SIGTERM)
    assert fleet.wait(45) == 0, fleet.log()

    assert running_attempts(ledger) == 0  # every attempt in flight finished its effect...
    assert ledger.execute("SELECT count(*) FROM activities WHERE status = 'completed'").fetchone() == (6,)  # ...and was recorded
    assert leased(ledger) == 0
    assert ledger.execute("SELECT count(*) FROM worker_heartbeats").fetchone() == (0,)
    assert [m[4] for m in fleet.matches(EXIT)] == ["exited with code 0"] * 2
    assert not fleet.matches(re.compile("worker-overdue|leases-released"))


def test_sigquit_stops_at_once_and_releases_what_was_in_flight(
    db_url: str, engine: Engine, ledger: Any, fleets: Callable[..., Fleet]
) -> None:
    fleet = fleets(db_url, "--workers", "2")
    fleet.wait_ready(2)
    start_orders(engine, 4, work_seconds=20.0, signal=False)
    wait_until(lambda: running_attempts(ledger) == 4, what="4 activities in flight")

    fleet.send(signal.SIGQUIT)
    assert fleet.wait(15) == 0, fleet.log()
    assert running_attempts(ledger) == 4  # not waited for
    assert leased(ledger) == 0  # but due again at once, for the next fleet
    assert ledger.execute(
        "SELECT count(*) FROM task_queue WHERE task_type = 'activity' AND visibility_timeout <= now()"
    ).fetchone() == (4,)


def test_sighup_rolls_the_workers_without_dropping_work(
    db_url: str, engine: Engine, ledger: Any, fleets: Callable[..., Fleet]
) -> None:
    fleet = fleets(db_url, "--workers", "2")
    old = fleet.wait_ready(2)
    runs = start_orders(engine, 30, work_seconds=0.8)
    signal_all(engine, runs)
    wait_until(lambda: running_attempts(ledger) > 0, what="activities in flight")

    fleet.send(signal.SIGHUP)
    fleet.wait_log("generation-up generation=2")
    new = fleet.wait_ready(2)
    assert not set(new) & set(old)
    assert sorted(new.values()) == sorted(old.values())  # the same shard groups
    assert_all_completed(engine, ledger, runs)
    exits = {int(m[1]): m[4] for m in fleet.matches(EXIT)}
    assert exits == {pid: "exited with code 0" for pid in old}  # finished what they held, then left
    # Nothing was interrupted and redone: one attempt per step.
    assert ledger.execute("SELECT count(*), count(DISTINCT key) FROM fleet_attempts").fetchone() == (90, 90)


def test_sigttin_and_sigttou_add_and_remove_a_worker(
    db_url: str, engine: Engine, ledger: Any, fleets: Callable[..., Fleet]
) -> None:
    fleet = fleets(db_url, "--workers", "1")
    fleet.wait_groups(["0,1,2"])

    fleet.send(signal.SIGTTIN)
    fleet.wait_groups(["0,2", "1"])
    fleet.send(signal.SIGTTIN)
    fleet.wait_groups(["0", "1", "2"])
    fleet.send(signal.SIGTTIN)  # never more workers than shards
    fleet.wait_log("resize-ignored signal=SIGTTIN workers=3")

    fleet.send(signal.SIGTTOU)
    fleet.wait_groups(["0,2", "1"])
    assert [m[2] for m in fleet.matches(SPAWN)] == ["0,1,2", "0,2", "1", "0", "1", "2", "0,2", "1"]

    runs = start_orders(engine, 10, work_seconds=0.01)
    signal_all(engine, runs)
    assert_all_completed(engine, ledger, runs)
    fleet.send(signal.SIGTERM)
    assert fleet.wait() == 0, fleet.log()


def test_a_worker_that_cannot_boot_stops_the_supervisor(db_url: str, fleets: Callable[..., Fleet]) -> None:
    fleet = fleets(db_url, "--workers", "2", FLEET_APP_BROKEN_IF=__file__)
    assert fleet.wait() == 3, fleet.log()
    assert "worker-boot-failed app=tests.fleet_app error=ImportError" in fleet.log()
    assert len(fleet.matches(SPAWN)) == 2  # no respawn loop


def test_a_worker_dying_at_start_up_is_restarted_with_growing_back_off(
    db_url: str, fleets: Callable[..., Fleet]
) -> None:
    fleet = fleets(db_url, "--workers", "1", FLEET_APP_EXIT_AT_IMPORT="1")
    delays = [float(m[1]) for m in fleet.wait_log(re.compile(r"worker-restart-backoff group=0,1,2 failures=\d+ "
                                                             r"delay=([\d.]+)s"), count=3)]
    assert delays[:3] == [0.5, 1.0, 2.0]
    assert not fleet.matches(READY)
    fleet.send(signal.SIGTERM)
    assert fleet.wait() == 0, fleet.log()


def test_sighup_with_code_that_cannot_boot_keeps_the_old_workers(
    db_url: str, engine: Engine, ledger: Any, fleets: Callable[..., Fleet], tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    fleet = fleets(db_url, "--workers", "2", FLEET_APP_BROKEN_IF=str(broken))
    old = fleet.wait_ready(2)

    broken.touch()  # a bad deploy
    fleet.send(signal.SIGHUP)
    fleet.wait_log("reload-failed generation=2 cannot boot; keeping generation 1")
    assert all(alive(pid) for pid in old) and fleet.proc.poll() is None
    runs = start_orders(engine, 5, work_seconds=0.01)
    signal_all(engine, runs)
    assert_all_completed(engine, ledger, runs)  # served by the old workers

    broken.unlink()  # fixed
    fleet.send(signal.SIGHUP)
    fleet.wait_log("generation-up generation=3")
    assert not set(fleet.wait_ready(2)) & set(old)
    fleet.send(signal.SIGTERM)
    assert fleet.wait() == 0, fleet.log()


def test_sighup_loads_the_new_code(
    db_url: str, engine: Engine, fleets: Callable[..., Fleet], tmp_path: Path
) -> None:
    release = tmp_path / "release"
    release.write_text("v1")
    fleet = fleets(db_url, "--workers", "2", FLEET_APP_RELEASE_FILE=str(release))
    old = fleet.wait_ready(2)

    def run() -> str:
        started = engine.start(fleet_app.release_workflow, None)
        return str(engine.result(started.workflow_name, started.workflow_id, timeout=20))

    assert run() == "v1"
    release.write_text("v2")  # a deploy
    fleet.send(signal.SIGHUP)
    fleet.wait_log("generation-up generation=2")
    wait_until(lambda: not any(alive(pid) for pid in old), what="the old workers to leave")
    assert run() == "v2"


def test_flows_supervise_is_the_same_command(db_url: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "supervise", "--app", "tests.fleet_app", "--workers", "1"],
        cwd=ROOT, stderr=subprocess.PIPE, text=True, env={**os.environ, "DATABASE_URL": db_url},
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "worker-ready" in line:
                break
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "supervisor-stop exit_code=0" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
