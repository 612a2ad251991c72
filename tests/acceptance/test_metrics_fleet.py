"""Prometheus metrics of the real processes, scraped over HTTP: a
supervisor fleet with FLOWS_METRICS_PORT (two forked workers writing one
directory), and the loan stack's gunicorn /metrics beside it. Counters are
checked against the database, before and after a worker is killed."""

from __future__ import annotations

import glob
import os
import re
import signal
import tempfile
from pathlib import Path
from typing import Any, Callable

import psycopg
import pytest
from prometheus_client.multiprocess import MultiProcessCollector

from flows import Engine
from tests import fleet_app
from tests.acceptance.fleet_harness import Fleet, children_of, fleets, signal_all, start_orders, wait_until  # noqa: F401
from tests.acceptance.fleet_harness import ledger  # noqa: F401 - fixture
from tests.acceptance.loan_stack import Stack, free_port, loan_stack  # noqa: F401 - fixture
from tests.metrics_support import Scrape, assert_no_ids, attempts, count, scrape, settled, workflows

pytestmark = pytest.mark.slow
SERVING = re.compile(r"metrics-serving url=\S+ directory=(\S+)")
RELEASED = re.compile(r"leases-released owner=\S+ count=(\d+)")


def counted(path: str, name: str) -> float:
    """A counter's total in one process's file."""
    return sum(s.value for m in MultiProcessCollector.merge([path]) for s in m.samples if s.name == name)


def check_fleet(s: Scrape, db: psycopg.Connection[Any]) -> Scrape:
    """The fleet's scrape against the database, after six orders and two poisoned workflows."""
    assert s.value("flows_dead_letters", workflow="fleet-poison") == 2  # the database gauges are cached a few seconds
    assert s.value("flows_workflows_completed_total", workflow="fleet-order") == workflows(db, "fleet-order",
                                                                                         "completed") == 6
    assert s.value("flows_workflows_failed_total", workflow="fleet-poison") == workflows(db, "fleet-poison",
                                                                                        "failed") == 2
    for activity in ("fleet-effect", "fleet-always-fails"):
        assert s.value("flows_activity_attempts_total", activity=activity) == attempts(db, activity) > 0
        assert s.value("flows_activity_failures_total", activity=activity) == attempts(db, activity, True)
    assert s.value("flows_activity_attempts_total", activity="fleet-effect") == count(
        db, "SELECT count(*) FROM fleet_attempts")  # each attempt the activity itself saw
    assert s.value("flows_timer_lateness_seconds_count", workflow="fleet-order") == count(
        db, "SELECT count(*) FROM timers WHERE fired")
    assert s.value("flows_shard_workers", workflow="fleet-order") == 3  # every shard served once
    return s


def check_loans(fleet: Scrape, db: psycopg.Connection[Any]) -> Scrape:
    """The fleet's scrape against the database, after six loans."""
    assert fleet.value("flows_workflows_completed_total", workflow="loan-application") == workflows(
        db, "loan-application", "completed") == 6
    for activity in ("check-credit-score", "verify-document", "disburse-loan"):
        assert fleet.value("flows_activity_attempts_total", activity=activity) == attempts(db, activity) > 0
    # Each signal was sent once its loan waited for it: each woke one step.
    assert fleet.value("flows_wakeup_latency_seconds_count", workflow="loan-application") == count(
        db, "SELECT count(*) FROM signals WHERE consumed")
    assert fleet.value("flows_timer_lateness_seconds_count", workflow="loan-application") == count(
        db, "SELECT count(*) FROM timers WHERE fired") == 6
    return fleet


def test_fleet_metrics_add_up_its_workers_and_keep_a_killed_ones(
    fleets: Callable[..., Fleet], db_url: str, engine: Engine, db: psycopg.Connection[Any], ledger: Any,
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    fleet = fleets(db_url, "--workers", "2", FLOWS_METRICS_PORT=str(port))
    workers = fleet.wait_ready(2)
    directory = fleet.wait_log(SERVING)[0][1]
    wait_until(lambda: scrape(url).value("flows_workers_alive") == 2, what="two workers alive")

    runs = start_orders(engine, 6, work_seconds=0.01, sleep_seconds=0.1)
    signal_all(engine, runs)
    poison = [engine.start(fleet_app.poison, n) for n in range(2)]
    for run, _ in runs:
        engine.result(run.workflow_name, run.workflow_id, timeout=60)
    for run in poison:
        wait_until(lambda: engine.query(run.workflow_name, run.workflow_id).status == "failed", what="poison fails")

    assert count(db, "SELECT count(*) FROM dead_letter_queue WHERE workflow_name LIKE 'fleet-poison-%'") == 2
    s = settled(lambda: check_fleet(scrape(url), db))
    # Both processes recorded, each in its own files; the scrape is their sum.
    steps = [counted(f"{directory}/counter_{pid}.db", "flows_steps_total") for pid in workers]
    assert all(n > 0 for n in steps) and sum(steps) == s.value("flows_steps_total")
    assert_no_ids(s)

    # Kill the worker running a long attempt: its lease is released, its counts stay.
    held = engine.start(fleet_app.hold_workflow, 60.0)
    [(pid,)] = wait_until(lambda: db.execute("SELECT pid FROM fleet_attempts WHERE key LIKE %s",
                                             (f"{held.workflow_id}:%",)).fetchall(), what="the hold attempt")
    os.kill(pid, signal.SIGKILL)
    released = int(fleet.wait_log(RELEASED)[0][1])
    fleet.wait_ready(2)
    after = wait_until(lambda: (a := scrape(url)).value("flows_leases_released_total") and a, what="the release")
    assert after.value("flows_leases_released_total", cause="exited") == released == 1
    assert after.value("flows_worker_exits_total", cause="killed") == 1
    for name in ("flows_workflows_completed_total", "flows_steps_total", "flows_activity_attempts_total"):
        assert after.value(name) >= s.value(name) > 0
    assert after.value("flows_steps_total") >= sum(steps)
    # The dead worker's live gauge is gone: two alive, not three.
    wait_until(lambda: scrape(url).value("flows_workers_alive") == 2, what="the replacement alive")
    engine.cancel(held.workflow_name, held.workflow_id)

    fleet.send(signal.SIGTERM)
    assert fleet.wait() == 0
    assert not os.path.exists(directory)  # a fleet's directory lives as long as the fleet


def _web_directory(master: int) -> str:
    [found] = glob.glob(os.path.join(tempfile.gettempdir(), f"flows-metrics-web-{master}-*"))
    return found


def test_loan_stack_metrics_web_and_fleet(loan_stack: Callable[..., Stack], db: psycopg.Connection[Any]) -> None:
    port = free_port()
    stack = loan_stack(FLOWS_METRICS_PORT=str(port))
    fleet_url, web_url = f"http://127.0.0.1:{port}/metrics", stack.base_url + "/metrics"
    loans = []
    for n in range(6):
        code, body = stack.call("POST", "/api/loans", {"applicant_name": "Jane Smith", "amount": 10000 + n,
                                                       "purpose": "metrics"})
        assert code == 201, body
        loans.append(f"/api/loans/loan-application/{body['workflow_id']}")

    def advance(path: str) -> bool:
        code, body = stack.call("GET", path)
        assert code == 200, body
        waiting = body["WaitingFor"]
        if waiting.startswith("signal:document-"):
            kind = waiting.removeprefix("signal:document-")
            stack.call("POST", f"{path}/documents", {"document_type": kind, "document_id": f"{kind.upper()}-1"})
        elif waiting == "signal:manager-approval":
            stack.call("POST", f"{path}/approve", {"approver_role": "manager", "approved": True})
        return body["Status"] != "running"

    wait_until(lambda: all([advance(p) for p in loans]), timeout=60, what="every loan to end")
    web = scrape(web_url)
    started = count(db, "SELECT count(*) FROM workflows")
    assert web.value("flows_workflows_started_total", workflow="loan-application") == started == 6
    assert web.value("flows_dead_letters") == 0 and web.value("flows_database_up") == 1
    fleet = settled(lambda: check_loans(scrape(fleet_url), db))
    assert_no_ids(web)
    assert_no_ids(fleet)

    # Kill a gunicorn worker that counted starts: gunicorn replaces it, its starts stay counted.
    master = stack.procs["web"].pid
    directory = _web_directory(master)
    victim = next(pid for pid in children_of(master)
                  if os.path.exists(path := f"{directory}/counter_{pid}.db")
                  and counted(path, "flows_workflows_started_total") > 0)
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: victim not in (kids := children_of(master)) and len(kids) == 2, what="a new gunicorn worker")
    assert scrape(web_url).value("flows_workflows_started_total", workflow="loan-application") == 6
    assert Path(directory).is_dir()
