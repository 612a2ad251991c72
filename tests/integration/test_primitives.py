"""The primitives on a real database: parallel activities, child workflows,
timeouts, signal-with-start (schedules and asyncio have files of their own).
Crash paths kill real worker processes."""

from __future__ import annotations

import signal
import threading
import uuid
from typing import Any, Callable

import psycopg
import pytest
import uuid6

import flows
from flows import Engine, Worker, context, store
from flows.steps import ReplayBudget, StepWriter
from flows.store import carry as carry_store
from flows.store import client as client_store
from flows.store import leases as lease_store
from flows.store import steps as step_store
from tests import primitives_app
from tests.integration.conftest import Spawn
from tests.integration.test_crashes import wait_until
from tests.primitives_app import (
    approval,
    child,
    fan_out,
    fan_out_failing,
    forever,
    inbox,
    parent,
    parent_waits,
)

@pytest.fixture
def workers(start_worker: Callable[..., Worker], ledger: Any) -> Worker:
    return start_worker(primitives_app.ALL_WORKFLOWS, primitives_app.ALL_ACTIVITIES, concurrency=4)


APP = "tests.primitives_app"


# -- parallel activities ----------------------------------------------------------


def test_three_one_second_activities_run_at_the_same_time(engine: Engine, workers: Worker, db: Any) -> None:
    run = engine.start(fan_out, [["a", 1.0], ["b", 1.0], ["c", 1.0]])
    assert engine.result(run.workflow_name, run.workflow_id, timeout=30) == ["a done", "b done", "c done"]
    rows = db.execute("SELECT sequence_num, started_at, completed_at FROM activities WHERE workflow_id = %s"
                      " ORDER BY sequence_num", (run.workflow_id,)).fetchall()
    assert [seq for seq, _, _ in rows] == [1, 2, 3]
    latest_start = max(started for _, started, _ in rows)
    first_end = min(ended for _, _, ended in rows)
    assert latest_start < first_end  # all three were running at once
    span = (max(ended for _, _, ended in rows) - min(started for _, started, _ in rows)).total_seconds()
    assert span < 2.5  # one after the other would take 3 s at least
    steps = db.execute("SELECT step FROM history_events WHERE workflow_id = %s AND event_type = 'activity_scheduled'",
                       (run.workflow_id,)).fetchall()
    assert sorted(steps) == [(1,), (2,), (3,)]


def test_a_step_leases_only_as_many_activities_as_slots_it_reserved(engine: Engine, db_url: str, db: Any) -> None:
    run = engine.start(fan_out, [["a", 0], ["b", 0], ["c", 0]])
    writer = StepWriter({(fan_out.name, 1): fan_out}, {primitives_app.nap.name: primitives_app.nap},
                        lambda: False, ReplayBudget(0), shards=engine.shards)
    with psycopg.connect(db_url, autocommit=True) as conn:
        with store.StepTransaction(conn) as tx:
            claimed = step_store.claim_replay(tx, run.workflow_name_sharded, [1], owner="me")
            assert claimed.state is not None
            leased, _ = writer.advance(tx, claimed.state, "me", slots=1)
    assert len(leased) == 1 and leased[0].sequence_num == 1
    owners = db.execute("SELECT a.sequence_num, a.status, t.lease_owner FROM activities a JOIN task_queue t"
                        " ON t.workflow_name = a.workflow_name AND t.target_id = a.id WHERE a.workflow_id = %s"
                        " ORDER BY 1", (run.workflow_id,)).fetchall()
    assert owners == [(1, "running", "me"), (2, "scheduled", None), (3, "scheduled", None)]
    status = engine.query(run.workflow_name, run.workflow_id)
    assert status.waiting_for == "activity:p-sleep,activity:p-sleep,activity:p-sleep"
    assert [a.status for a in status.activities] == ["running", "scheduled", "scheduled"]


def test_gather_raises_the_failure_recorded_first(engine: Engine, workers: Worker) -> None:
    for fail_fast in (False, True):
        run = engine.start(fan_out_failing, fail_fast)
        assert engine.result(run.workflow_name, run.workflow_id, timeout=30) == "RuntimeError: early is down"


@pytest.mark.slow
def test_a_worker_killed_mid_fan_out_leaves_only_the_unfinished_activity_to_redo(
    engine: Engine, db_url: str, ledger: Any, spawn_worker: Spawn
) -> None:
    doomed = spawn_worker(db_url, APP, PRIM_HANG_ON="c")
    run = engine.start(fan_out, [["a", 0.1], ["b", 0.1], ["c", 0.1]])
    wait_until(lambda: ledger.execute(
        "SELECT count(*) FROM activities WHERE workflow_id = %s AND status = 'completed'",
        (run.workflow_id,)).fetchone() == (2,), timeout=30)
    wait_until(lambda: ledger.execute("SELECT 1 FROM ledger WHERE step LIKE %s", ("%:c",)).fetchone())
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(5)

    spawn_worker(db_url, APP, FLOWS_STALE_SECONDS="1", FLOWS_HEARTBEAT_SECONDS="0.3")  # takes the dead worker's leases
    assert engine.result(run.workflow_name, run.workflow_id, timeout=40) == ["a done", "b done", "c done"]
    runs = dict(ledger.execute("SELECT split_part(step, ':', 3), count(*) FROM ledger GROUP BY 1").fetchall())
    assert runs == {"a": 1, "b": 1, "c": 2}


# -- child workflows -------------------------------------------------------------------


def test_children_run_on_their_own_shards_and_their_ends_reach_the_parent(
    engine: Engine, workers: Worker, db: Any
) -> None:
    run = engine.start(parent, ["ok", "fail"])
    out = engine.result(run.workflow_name, run.workflow_id, timeout=30)
    assert out == ["c0 by child", "failed: ValueError: child c1 refuses"]
    ids = [uuid.uuid5(run.workflow_id, f"child:{step}") for step in (1, 2)]
    assert engine.query(child.name, ids[0]).status == "completed"
    assert engine.query(child.name, ids[1]).status == "failed"
    rows = db.execute("SELECT name, parent_name, parent_id, parent_step FROM workflows WHERE id = ANY(%s)"
                      " ORDER BY parent_step", (ids,)).fetchall()
    assert rows == [(engine.shard_of(child.name, ids[0]), run.workflow_name_sharded, run.workflow_id, 1),
                    (engine.shard_of(child.name, ids[1]), run.workflow_name_sharded, run.workflow_id, 2)]
    assert db.execute("SELECT status FROM children WHERE workflow_id = %s ORDER BY sequence_num",
                      (run.workflow_id,)).fetchall() == [("completed",), ("failed",)]
    assert db.execute("SELECT count(*) FROM task_queue").fetchone() == (0,)


def step_then_claim_carry(engine: Engine, db_url: str, run: flows.Execution, wf: Any, owner: str) -> carry_store.Carry:
    """Write the parent's first step (it asks for a child) and lease its
    `child` task to ``owner``, as a worker about to carry it would."""
    shard = run.workflow_name_sharded
    writer = StepWriter({(wf.name, 1): wf}, {}, lambda: False, ReplayBudget(0), shards=engine.shards)
    with psycopg.connect(db_url, autocommit=True) as conn:
        with store.StepTransaction(conn) as tx:
            claimed = step_store.claim_replay(tx, shard, [1], owner="me")
            assert claimed.state is not None
            writer.advance(tx, claimed.state, None, slots=0)
        with store.StepTransaction(conn) as tx:
            carry = step_store.claim_replay(tx, shard, [1], owner=owner).carry
    assert carry is not None and isinstance(carry.info, carry_store.ChildInfo)
    return carry


def test_a_child_started_twice_is_started_once(engine: Engine, db_url: str, db: Any, start_worker: Any,
                                               ledger: Any) -> None:
    """A worker that started the child and died before dropping its task:
    the task is carried again, and finds the child there."""
    run = engine.start(parent, ["ok"])
    shard = run.workflow_name_sharded
    carry = step_then_claim_carry(engine, db_url, run, parent, "doomed")
    assert isinstance(carry.info, carry_store.ChildInfo)
    info = carry.info
    with psycopg.connect(db_url, autocommit=True) as conn:
        first = store.run(conn, client_store.start_workflow(shard=info.child_name, workflow_id=info.child_id,
                                                     tenant_id=info.tenant_id, version=1, input=b'["c0", "ok"]',
                                                     parent=(shard, run.workflow_id, 1)))
        assert first == "created"
        lease_store.release_leases(conn, [shard], "doomed")  # as a supervisor does for a dead worker
    start_worker(primitives_app.ALL_WORKFLOWS, primitives_app.ALL_ACTIVITIES)
    assert engine.result(run.workflow_name, run.workflow_id, timeout=30) == ["c0 by child"]
    assert db.execute("SELECT count(*) FROM workflows WHERE parent_id = %s", (run.workflow_id,)).fetchone() == (1,)


@pytest.mark.parametrize("policy", ["cancel", "abandon"])
def test_cancelling_a_parent_cancels_its_children_per_policy(
    engine: Engine, workers: Worker, db: Any, policy: str
) -> None:
    run = engine.start(parent_waits, policy)
    kid = uuid.uuid5(run.workflow_id, "child:1")
    wait_until(lambda: db.execute("SELECT waiting_for FROM workflows WHERE id = %s", (kid,)).fetchone()
               == ("signal:go",), timeout=30)
    assert engine.cancel(run.workflow_name, run.workflow_id)
    if policy == "cancel":
        with pytest.raises(flows.WorkflowFailed, match="cancelled: its parent p-parent-waits/"):
            engine.result(child.name, kid, timeout=30)
    else:
        assert engine.query(child.name, kid).status == "running"
        engine.send_signal(child.name, kid, "go")
        assert engine.result(child.name, kid, timeout=30) == "waiter by child"


def test_a_parent_that_ends_before_its_child_started_leaves_no_child_running(
    engine: Engine, db_url: str, db: Any, start_worker: Any, ledger: Any
) -> None:
    """The parent is cancelled after its step asked for the child, while the
    child's start is in flight: the start, carried late, finds the child
    written as cancelled."""
    run = engine.start(parent_waits, "cancel")
    shard = run.workflow_name_sharded
    stale = step_then_claim_carry(engine, db_url, run, parent_waits, "slow")  # a start in flight
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert engine.cancel(run.workflow_name, run.workflow_id)
        start_worker(primitives_app.ALL_WORKFLOWS, primitives_app.ALL_ACTIVITIES)
        kid = uuid.uuid5(run.workflow_id, "child:1")
        wait_until(lambda: db.execute("SELECT count(*) FROM task_queue WHERE workflow_name = %s", (shard,))
                   .fetchone() == (0,), timeout=30)
        from flows import children
        children.carry(conn, stale)  # the slow delivery goes on: its start must not revive the child
    assert db.execute("SELECT status FROM workflows WHERE id = %s", (kid,)).fetchone() == ("cancelled",)
    assert db.execute("SELECT status FROM children WHERE id = %s", (kid,)).fetchone() == ("cancelled",)


# -- timeouts ------------------------------------------------------------------------


def test_a_signal_wait_times_out_or_gets_the_signal_and_replays_the_same(
    engine: Engine, workers: Worker, db: Any
) -> None:
    late = engine.start(approval, 0.5)
    assert engine.result(late.workflow_name, late.workflow_id, timeout=30) == "timed out"
    on_time = engine.start(approval, 60.0)
    wait_until(lambda: engine.query(on_time.workflow_name, on_time.workflow_id).waiting_for == "signal:approve")
    engine.send_signal(on_time.workflow_name, on_time.workflow_id, "approve", "ann")
    assert engine.result(on_time.workflow_name, on_time.workflow_id, timeout=30) == "approved by ann"
    # the signal won: its timer is gone with its task
    assert db.execute("SELECT count(*) FROM timers WHERE workflow_id = %s", (on_time.workflow_id,)).fetchone() == (0,)
    for run, expected in ((late, b'"timed out"'), (on_time, b'"approved by ann"')):
        state = step_store.replay_state(db, run.workflow_name_sharded, run.workflow_id)
        assert state is not None and state.events is not None
        for _ in range(2):  # replayed from its recorded history, again and again: the same branch
            outcome = context.replay(approval, workflow_id=run.workflow_id, workflow_name=run.workflow_name_sharded,
                                     tenant_id=run.tenant_id, input=state.workflow.input,
                                     events=[e for e in state.events if e[1] != "workflow_completed"], signals=[],
                                     db_now=state.now)
            assert (outcome.status, outcome.output) == ("completed", expected)


def test_a_workflow_past_its_execution_timeout_fails_timed_out(engine: Engine, workers: Worker, db: Any) -> None:
    run = engine.start(forever, None, timeout=1.0)
    with pytest.raises(flows.WorkflowFailed, match="timed out: still running after its execution timeout of 1s"):
        engine.result(run.workflow_name, run.workflow_id, timeout=30)
    assert db.execute("SELECT status FROM activities WHERE workflow_id = %s", (run.workflow_id,)).fetchall() \
        == [("cancelled",)]
    assert db.execute("SELECT count(*) FROM task_queue WHERE workflow_id = %s", (run.workflow_id,)).fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM dead_letter_queue WHERE workflow_id = %s",
                      (run.workflow_id,)).fetchone() == (1,)
    with pytest.raises(flows.InvalidInput, match="timeout must be a number of seconds > 0"):
        engine.start(forever, None, timeout=0)


# -- signal-with-start -----------------------------------------------------------------


def test_signal_with_start_racing_on_one_id_makes_one_workflow_and_two_signals(
    engine: Engine, workers: Worker, db: Any
) -> None:
    wid = uuid6.uuid7()
    barrier = threading.Barrier(2)
    made: list[flows.Execution] = []

    def send(item: str) -> None:
        barrier.wait()
        made.append(engine.signal_with_start(inbox, 2, "item", item, workflow_id=wid))

    threads = [threading.Thread(target=send, args=(item,)) for item in ("x", "y")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(e.created for e in made) == [False, True]
    assert sorted(engine.result(inbox.name, wid, timeout=30)) == ["x", "y"]
    assert db.execute("SELECT count(*) FROM workflows WHERE id = %s", (wid,)).fetchone() == (1,)
    with pytest.raises(flows.WorkflowNotRunning):
        engine.signal_with_start(inbox, 2, "item", "z", workflow_id=wid)
    with pytest.raises(flows.InvalidInput, match="workflow_id"):
        engine.signal_with_start(inbox, 2, "item", "z", workflow_id=None)


def test_the_primitives_work_in_workflows_kept_in_memory_as_parked_code(
    engine: Engine, start_worker: Callable[..., Worker], ledger: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker keeps workflows with long histories as parked code, resumed
    where they wait: gather, children and signal timeouts wait there too."""
    from flows import continuation

    monkeypatch.setattr(continuation, "PARK_MIN_EVENTS", 0)  # keep every workflow as parked code
    start_worker(primitives_app.ALL_WORKFLOWS, primitives_app.ALL_ACTIVITIES, concurrency=4)
    fan = engine.start(fan_out, [["a", 0.3], ["b", 0.1], ["c", 0.2]])
    kids = engine.start(parent, ["ok", "fail"])
    late = engine.start(approval, 0.5)
    on_time = engine.start(approval, 60.0)
    wait_until(lambda: engine.query(on_time.workflow_name, on_time.workflow_id).waiting_for == "signal:approve")
    engine.send_signal(on_time.workflow_name, on_time.workflow_id, "approve", "ann")
    assert engine.result(fan.workflow_name, fan.workflow_id, timeout=30) == ["a done", "b done", "c done"]
    assert engine.result(kids.workflow_name, kids.workflow_id, timeout=30) == \
        ["c0 by child", "failed: ValueError: child c1 refuses"]
    assert engine.result(late.workflow_name, late.workflow_id, timeout=30) == "timed out"
    assert engine.result(on_time.workflow_name, on_time.workflow_id, timeout=30) == "approved by ann"


def test_a_workflow_remembered_by_its_worker_sees_each_event_once(engine: Engine, workers: Worker) -> None:
    """A claim that sends a short run's whole history replaces what the
    worker remembers of it, rather than being added to it."""
    run = engine.start(primitives_app.history_length, None)
    wait_until(lambda: engine.query(run.workflow_name, run.workflow_id).waiting_for == "signal:go")
    engine.send_signal(run.workflow_name, run.workflow_id, "go")
    # the final replay's history: started, scheduled, completed (the signal it consumes is written after)
    assert engine.result(run.workflow_name, run.workflow_id, timeout=30) == [3, 3, 3]
