"""Activity attempts: start-to-close timeouts, fencing of late results,
heartbeats with details, unique owners, and dead workers released without
a supervisor."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any, Callable

import psycopg
import pytest

import flows
from flows import Engine, Worker, store
from flows.store import leases as lease_store
from flows.store import steps as step_store
from tests import engine_app
from tests.acceptance.fleet_harness import wait_until
from tests.integration.conftest import Spawn

# Every test here runs with workflows replayed, and with them parked in memory.
pytestmark = pytest.mark.usefixtures("replay_mode")

QUICK = flows.RetryPolicy(initial_interval=0.2, backoff=1.0, max_attempts=3, jitter=0.0)
_ledger_lock = threading.Lock()
events: list[tuple[str, int, float]] = []  # (what, attempt, time.monotonic())


def note(what: str, attempt: int) -> None:
    with _ledger_lock:
        events.append((what, attempt, time.monotonic()))


@pytest.fixture(autouse=True)
def fresh_events() -> None:
    events.clear()


@flows.activity("att-slow", retry=QUICK, timeout=0.6)
def slow_steps(ctx: flows.ActivityContext, seconds: float) -> str:
    """Python code in small steps (as most is): interruptible between them."""
    note("start", ctx.attempt)
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(0.02)
        return f"finished attempt {ctx.attempt}"
    finally:
        note("stop", ctx.attempt)


@flows.workflow("att-slow")
def slow_workflow(ctx: flows.WorkflowContext, seconds: float) -> str:
    try:
        return ctx.activity(slow_steps, seconds)
    except flows.ActivityFailed as exc:
        return f"gave up after {exc.attempts}: {exc.error}"


def test_an_attempt_past_its_timeout_fails_and_attempts_never_overlap(
    engine: Engine, db: psycopg.Connection[Any], start_worker: Callable[..., Worker]
) -> None:
    start_worker([slow_workflow], [slow_steps])
    run = engine.start(slow_workflow, 2.0)  # each attempt would take 2 s; the timeout is 0.6 s
    out = engine.result(run.workflow_name, run.workflow_id, timeout=15)
    assert out == "gave up after 3: TimeoutError: attempt 3 ran past its timeout of 0.6s"
    wait_until(lambda: len(events) == 6, what="the last attempt to stop")  # it may stop after the result is in
    assert [(what, attempt) for what, attempt, _ in events] == [
        ("start", 1), ("stop", 1), ("start", 2), ("stop", 2), ("start", 3), ("stop", 3)]
    for (_, _, stopped), (_, _, restarted) in zip(events[1::2], events[2::2]):
        assert restarted >= stopped  # one attempt at a time
    retrying = db.execute(
        "SELECT event_data->>'error' FROM history_events WHERE workflow_id = %s AND event_type = 'activity_retrying'"
        " ORDER BY sequence_num", (run.workflow_id,)).fetchall()
    assert retrying == [(f"TimeoutError: attempt {n} ran past its timeout of 0.6s",) for n in (1, 2)]


@flows.activity("att-blocking", retry=QUICK, timeout=0.5)
def blocking(ctx: flows.ActivityContext, seconds: float) -> str:
    """One call that blocks in C: interrupted only once it returns."""
    note("start", ctx.attempt)
    try:
        time.sleep(seconds if ctx.attempt == 1 else 0)
        return f"attempt {ctx.attempt}"
    finally:
        note("stop", ctx.attempt)


@flows.workflow("att-blocking")
def blocking_workflow(ctx: flows.WorkflowContext, seconds: float) -> str:
    return ctx.activity(blocking, seconds)


def test_the_late_result_of_a_timed_out_attempt_is_discarded(
    engine: Engine, db: psycopg.Connection[Any], start_worker: Callable[..., Worker]
) -> None:
    start_worker([blocking_workflow], [blocking])
    run = engine.start(blocking_workflow, 1.5)
    assert engine.result(run.workflow_name, run.workflow_id, timeout=10) == "attempt 2"
    wait_until(lambda: ("stop", 1) in [(w, a) for w, a, _ in events], what="the first attempt to return")
    time.sleep(0.3)  # its result reaches the database, or would
    assert db.execute("SELECT status, output, attempt FROM activities WHERE workflow_id = %s",
                      (run.workflow_id,)).fetchall() == [("completed", "attempt 2", 1)]
    assert db.execute("SELECT count(*) FROM history_events WHERE workflow_id = %s"
                      " AND event_type = 'activity_completed'", (run.workflow_id,)).fetchone() == (1,)


def test_only_the_delivery_holding_the_lease_may_record(
    engine: Engine, db: psycopg.Connection[Any], start_worker: Callable[..., Worker]
) -> None:
    """Fencing: a delivery whose lease ran out and was taken by another
    worker finds its task gone when it reports, whatever owner name it has."""
    replayer = start_worker([engine_app.hold], [])
    run = engine.start(engine_app.hold, 1.0)
    wait_until(lambda: db.execute("SELECT 1 FROM task_queue WHERE task_type = 'activity'").fetchone(),
               what="the activity task")
    replayer.stop()
    shard = run.workflow_name_sharded
    [first], _ = lease_store.claim_activities(db, shard, ["t-slow"], "same-name", 1)
    db.execute("UPDATE task_queue SET visibility_timeout = now() WHERE id = %s", (first.task_id,))  # lease ran out
    [second], _ = lease_store.claim_activities(db, shard, ["t-slow"], "same-name", 1)
    assert (first.token, second.token, second.lost) == (1, 2, 1)
    with store.StepTransaction(db) as tx:
        assert step_store.lock_activity(tx, first, "same-name") is None  # the stale delivery: refused
    with store.StepTransaction(db) as tx:
        assert step_store.lock_activity(tx, second, "same-name") is not None  # the current one


@flows.activity("att-beating", retry=QUICK, timeout=30, heartbeat_timeout=0.5)
def beating(ctx: flows.ActivityContext, items: int) -> dict[str, Any]:
    """Works through ``items``, beating its progress; the first attempt
    stops beating halfway (as if stuck), the next resumes from its details."""
    done = (ctx.last_heartbeat or {}).get("done", 0)
    resumed_from = done
    while done < items:
        if ctx.attempt == 1 and done == items // 2:
            note("stuck", ctx.attempt)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:  # no beats: the heartbeat timeout ends the attempt
                time.sleep(0.02)
        done += 1
        ctx.heartbeat({"done": done})
        time.sleep(0.01)
    return {"attempt": ctx.attempt, "resumed_from": resumed_from}


@flows.workflow("att-beating")
def beating_workflow(ctx: flows.WorkflowContext, items: int) -> Any:
    return ctx.activity(beating, items)


def test_an_attempt_that_stops_beating_is_retried_and_the_next_resumes_from_its_details(
    engine: Engine, db: psycopg.Connection[Any], start_worker: Callable[..., Worker]
) -> None:
    start_worker([beating_workflow], [beating])
    run = engine.start(beating_workflow, 20)
    wait_until(lambda: ("stuck", 1) in [(w, a) for w, a, _ in events], what="the first attempt to get stuck")
    status = wait_until(lambda: (s := engine.query(run.workflow_name, run.workflow_id)).activity is not None
                        and s.activity.heartbeat_details == {"done": 10} and s, what="the last beat's details")
    assert status.activity.name == "att-beating" and status.activity.heartbeat_at is not None
    assert engine.result(run.workflow_name, run.workflow_id, timeout=10) == {"attempt": 2, "resumed_from": 10}
    [(error,)] = db.execute(
        "SELECT event_data->>'error' FROM history_events WHERE workflow_id = %s AND event_type = 'activity_retrying'",
        (run.workflow_id,)).fetchall()
    assert error == "TimeoutError: attempt 1 sent no heartbeat for 0.5s (heartbeat_timeout)"


def test_owner_ids_are_unique_where_host_and_pid_repeat(engine: Engine) -> None:
    owners = {Worker(engine, [engine_app.sleeper]).owner for _ in range(20)}
    assert len(owners) == 20


def test_a_killed_plain_worker_is_released_by_another_plain_worker(
    engine: Engine, db_url: str, ledger: Any, spawn_worker: Spawn
) -> None:
    """No supervisor: the survivor's heartbeat finds the dead worker stale
    and releases its lease (300 s long) at once; its attempt counts as lost
    and the next one runs on the survivor."""
    fast = {"FLOWS_HEARTBEAT_SECONDS": "0.5", "FLOWS_STALE_SECONDS": "3"}
    doomed = spawn_worker(db_url, ENGINE_APP_HANG="long", **fast)
    run = engine.start(engine_app.long_workflow, 0.1)
    wait_until(lambda: ledger.execute("SELECT 1 FROM ledger").fetchone(), what="the first attempt")
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(5)
    started = time.monotonic()
    spawn_worker(db_url, **fast)
    out = engine.result(run.workflow_name, run.workflow_id, timeout=40)
    assert out.startswith("ran 0.1s in pid") and f"pid {doomed.pid}" not in out
    assert time.monotonic() - started < 40
    assert [a for (a,) in ledger.execute("SELECT attempt FROM ledger ORDER BY at")] == [1, 2]
