"""The engine against a real PostgreSQL, with a worker running in a thread."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import uuid6
import pytest

import flows
from flows import Engine, store
from flows.store import steps as step_store
from tests import engine_app
from tests.engine_app import Job, broken_workflow, documents, flaky_workflow, hold, sleeper, three_steps

# Every test here runs with workflows replayed, and with them parked in memory.
pytestmark = pytest.mark.usefixtures("replay_mode")


def rows(db: psycopg.Connection[Any], query: str, *params: Any) -> list[tuple[Any, ...]]:
    return db.execute(query, params).fetchall()


def wait_for(engine: Engine, run: flows.Execution, waiting_for: str, timeout: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while engine.query(run.workflow_name, run.workflow_id).waiting_for != waiting_for:
        assert time.monotonic() < deadline, engine.query(run.workflow_name, run.workflow_id)
        time.sleep(0.02)


def test_a_workflow_runs_every_primitive_and_records_each_step(engine: Engine, worker: Any, db: Any) -> None:
    run = engine.start(three_steps, Job("a"))
    assert run.workflow_name == "t-three-steps"
    assert run.workflow_name_sharded == engine.shard_of("t-three-steps", run.workflow_id)
    wait_for(engine, run, "signal:go")
    engine.send_signal(run.workflow_name, run.workflow_id, "go", {"by": "test"})
    out = engine.result(run.workflow_name, run.workflow_id, timeout=15)
    assert out["first"] == "a-1 done" and out["second"] == "a-2 done" and out["go"] == {"by": "test"}
    assert len(out["dice"]) == 8

    wid = run.workflow_id
    assert rows(db, "SELECT name, status, version FROM workflows WHERE id = %s", wid) == [
        (run.workflow_name_sharded, "completed", 1)]
    assert rows(db, "SELECT name, status, sequence_num, attempt FROM activities WHERE workflow_id = %s"
                    " ORDER BY sequence_num", wid) == [("t-record", "completed", 1, 0), ("t-record", "completed", 5, 0)]
    assert rows(db, "SELECT signal_name, consumed, consumed_seq FROM signals WHERE workflow_id = %s", wid) == [
        ("go", True, 2)]
    assert rows(db, "SELECT sequence_num, fired FROM timers WHERE workflow_id = %s", wid) == [(3, True)]
    history = rows(db, "SELECT sequence_num, event_type FROM history_events WHERE workflow_id = %s"
                       " ORDER BY sequence_num", wid)
    assert [seq for seq, _ in history] == list(range(1, len(history) + 1))  # strictly increasing, no ties
    events = [e for _, e in history]
    assert events == ["workflow_started", "activity_scheduled", "activity_completed", "signal_received",
                      "timer_started", "timer_fired", "random_generated", "activity_scheduled",
                      "activity_completed", "time_recorded", "uuid_generated", "workflow_completed"]
    [(data,)] = rows(db, "SELECT event_data FROM history_events WHERE workflow_id = %s"
                         " AND event_type = 'random_generated'", wid)
    assert data == {"random_bytes": out["dice"], "num_bytes": 8}
    assert rows(db, "SELECT count(*) FROM task_queue")[0][0] == 0
    [(results,)] = rows(db, "SELECT activity_results FROM workflows WHERE id = %s", wid)
    assert results == {"1": "a-1 done", "5": "a-2 done"}


def test_a_signal_sent_before_the_wait_is_kept_for_it(engine: Engine, worker: Any, db: Any) -> None:
    run = engine.start(documents, ["identity", "income"])
    engine.send_signal(run.workflow_name, run.workflow_id, "doc-income", "W2")  # out of order
    engine.send_signal(run.workflow_name, run.workflow_id, "doc-identity", "DL")
    assert engine.result(run.workflow_name, run.workflow_id, timeout=10) == ["DL", "W2"]
    assert rows(db, "SELECT signal_name, consumed_seq FROM signals WHERE workflow_id = %s ORDER BY consumed_seq",
                run.workflow_id) == [("doc-identity", 1), ("doc-income", 2)]


def test_two_signals_of_one_name_feed_two_waits_in_order(engine: Engine, worker: Any) -> None:
    run = engine.start(documents, ["x", "x"])
    wait_for(engine, run, "signal:doc-x")
    engine.send_signal(run.workflow_name, run.workflow_id, "doc-x", 1)
    engine.send_signal(run.workflow_name, run.workflow_id, "doc-x", 2)
    assert engine.result(run.workflow_name, run.workflow_id, timeout=10) == [1, 2]


def test_a_timer_fires_after_fire_at_by_the_database_clock_and_soon_after(engine: Engine, worker: Any, db: Any) -> None:
    run = engine.start(sleeper, 1.0)
    engine.result(run.workflow_name, run.workflow_id, timeout=10)
    [(fire_at, fired, fired_at, created)] = rows(
        db, "SELECT fire_at, fired, fired_at, created_at FROM timers WHERE workflow_id = %s", run.workflow_id)
    assert fired and fired_at >= fire_at
    assert (fire_at - created).total_seconds() == pytest.approx(1.0, abs=0.05)
    # Woken by its own deadline, not by the 30 s safety poll.
    assert (fired_at - fire_at).total_seconds() < 2.0


def test_a_flaky_activity_is_retried_with_backoff_until_it_succeeds(engine: Engine, worker: Any, db: Any) -> None:
    run = engine.start(flaky_workflow, "credit check")
    assert engine.result(run.workflow_name, run.workflow_id, timeout=15) == "credit check finally"
    attempts = rows(db, "SELECT attempt, at FROM ledger ORDER BY at")
    assert [a for a, _ in attempts] == [1, 2, 3]  # ctx.attempt counts from 1
    gaps = [(b[1] - a[1]).total_seconds() for a, b in zip(attempts, attempts[1:])]
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4  # initial 0.2 s, factor 2, no jitter
    assert rows(db, "SELECT status, attempt, error FROM activities WHERE workflow_id = %s", run.workflow_id) == [
        ("completed", 2, None)]
    assert len(rows(db, "SELECT 1 FROM history_events WHERE workflow_id = %s AND event_type = 'activity_retrying'",
                    run.workflow_id)) == 2


def test_exhausted_retries_can_be_caught_by_the_workflow(engine: Engine, worker: Any, db: Any) -> None:
    run = engine.start(broken_workflow, True)
    out = engine.result(run.workflow_name, run.workflow_id, timeout=10)
    assert out == "fallback after 2 attempts: RuntimeError: the bureau is down"
    assert rows(db, "SELECT status, attempt FROM activities WHERE workflow_id = %s", run.workflow_id) == [("failed", 1)]
    assert rows(db, "SELECT count(*) FROM dead_letter_queue")[0][0] == 0


def test_uncaught_activity_failure_fails_the_workflow_into_the_dead_letter_queue(
    engine: Engine, worker: Any, db: Any
) -> None:
    run = engine.start(broken_workflow, False)
    with pytest.raises(flows.WorkflowFailed, match="the bureau is down") as caught:
        engine.result(run.workflow_name, run.workflow_id, timeout=10)
    assert caught.value.status == "failed"
    status = engine.query(run.workflow_name, run.workflow_id)
    assert status.status == "failed" and status.output is None
    [(name, error)] = rows(db, "SELECT workflow_name, error FROM dead_letter_queue WHERE workflow_id = %s",
                           run.workflow_id)
    assert name == run.workflow_name_sharded and "ActivityFailed" in error


def test_starting_with_the_same_id_twice_returns_the_first_execution(engine: Engine, db: Any) -> None:
    first = engine.start(documents, ["a"], workflow_id="018c123e-4567-7890-abcd-ef0123456789")
    again = engine.start(documents, ["b"], workflow_id="018c123e-4567-7890-abcd-ef0123456789")
    assert first.created and not again.created and again.workflow_id == first.workflow_id
    assert rows(db, "SELECT input FROM workflows") == [(["a"],)]
    assert rows(db, "SELECT count(*) FROM task_queue")[0][0] == 1


def test_another_tenant_cannot_see_or_touch_a_workflow(engine: Engine) -> None:
    tenant_a, tenant_b = "00000000-0000-7000-8000-00000000000a", "00000000-0000-7000-8000-00000000000b"
    run = engine.start(documents, ["a"], tenant_id=tenant_a)
    assert engine.query(run.workflow_name, run.workflow_id, tenant_id=tenant_a).status == "running"
    for call in (
        lambda: engine.query(run.workflow_name, run.workflow_id, tenant_id=tenant_b),
        lambda: engine.query(run.workflow_name, run.workflow_id),  # the default tenant is another tenant
        lambda: engine.send_signal(run.workflow_name, run.workflow_id, "doc-a", 1, tenant_id=tenant_b),
        lambda: engine.cancel(run.workflow_name, run.workflow_id, tenant_id=tenant_b),
        lambda: engine.result(run.workflow_name, run.workflow_id, timeout=1, tenant_id=tenant_b),
    ):
        with pytest.raises(flows.WorkflowNotFound):
            call()


def test_signals_to_an_ended_workflow_are_refused(engine: Engine, db: Any) -> None:
    run = engine.start(documents, ["a"])
    assert engine.cancel(run.workflow_name, run.workflow_id) is True
    assert engine.cancel(run.workflow_name, run.workflow_id) is False
    with pytest.raises(flows.WorkflowNotRunning):
        engine.send_signal(run.workflow_name, run.workflow_id, "doc-a", 1)
    with pytest.raises(flows.WorkflowFailed, match="cancelled"):
        engine.result(run.workflow_name, run.workflow_id, timeout=1)
    assert rows(db, "SELECT count(*) FROM signals")[0][0] == 0
    assert rows(db, "SELECT count(*) FROM task_queue")[0][0] == 0


@pytest.mark.parametrize("bad", ["not-a-uuid", "", None, 12])
def test_malformed_ids_are_invalid_input(engine: Engine, bad: Any) -> None:
    with pytest.raises(flows.InvalidInput, match="workflow_id"):
        engine.query("t-documents", bad)


def test_input_the_workflow_cannot_read_is_refused_before_anything_is_written(engine: Engine, db: Any) -> None:
    with pytest.raises(flows.InvalidInput):
        engine.start(three_steps, {"name": 5})
    with pytest.raises(flows.InvalidInput, match="JSON"):
        engine.start(documents, {object()})
    assert rows(db, "SELECT count(*) FROM workflows")[0][0] == 0


def test_unknown_workflow_is_not_found(engine: Engine) -> None:
    with pytest.raises(flows.WorkflowNotFound):
        engine.query("t-documents", "018c123e-4567-7890-abcd-ef0123456789")


def test_result_times_out_on_a_workflow_that_waits(engine: Engine) -> None:
    run = engine.start(documents, ["never"])
    with pytest.raises(TimeoutError):
        engine.result(run.workflow_name, run.workflow_id, timeout=0.3)


def test_an_engine_can_use_the_callers_own_pool(db_url: str, worker: Any) -> None:
    from psycopg_pool import ConnectionPool

    with ConnectionPool(db_url, min_size=1, max_size=2) as pool, Engine(pool) as engine:
        run = engine.start(documents, ["a"])
        engine.send_signal(run.workflow_name, run.workflow_id, "doc-a", {"n": 1})
        assert engine.result(run.workflow_name, run.workflow_id, timeout=10) == [{"n": 1}]
        assert engine.query(run.workflow_name, run.workflow_id).output == [{"n": 1}]
        with pool.connection() as conn:  # the caller's pool keeps its own adapters
            assert conn.execute("SELECT '{\"a\": 1}'::jsonb").fetchone() == ({"a": 1},)


def test_query_shows_the_input_decoded_and_ping_answers(engine: Engine) -> None:
    run = engine.start(three_steps, Job("in"))
    assert engine.query(run.workflow_name, run.workflow_id).input == Job("in")
    engine.ping()


def test_ping_fails_clearly_when_the_database_is_unreachable() -> None:
    with Engine("host=/nonexistent dbname=x connect_timeout=1") as engine:
        with pytest.raises(flows.DatabaseUnavailable, match="cannot connect to the database at the local socket in "
                                                            "'/nonexistent' .*No such file or directory"):
            engine.ping(timeout=0.5)


def test_a_timer_fires_on_time_while_every_activity_slot_is_busy(
    engine: Engine, start_worker: Any, ledger: Any, db: Any
) -> None:
    start_worker(engine_app.ALL_WORKFLOWS, engine_app.ALL_ACTIVITIES, concurrency=1)
    running = engine.start(hold, 2.5)
    deadline = time.monotonic() + 10
    while not ledger.execute("SELECT 1 FROM ledger").fetchone():  # the attempt holds the only slot
        assert time.monotonic() < deadline
        time.sleep(0.02)
    queued = engine.start(hold, 2.5)  # its attempt is due, waiting for the slot
    wait_for(engine, queued, "activity:t-slow")
    run = engine.start(sleeper, 0.3)
    engine.result(run.workflow_name, run.workflow_id, timeout=10)
    [(late,)] = rows(db, "SELECT extract(epoch FROM fired_at - fire_at) FROM timers WHERE workflow_id = %s",
                     run.workflow_id)
    assert 0 <= late < 1.0  # not left for the 30 s safety poll behind the queued activity
    assert ledger.execute("SELECT count(*) FROM ledger").fetchone() == (1,)  # the queued one still waits
    assert engine.query(running.workflow_name, running.workflow_id).status == "running"


def test_result_is_woken_by_the_workflows_end_not_by_polling(
    engine: Engine, worker: Any, db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flows.engine

    monkeypatch.setattr(flows.engine, "RESULT_RECHECK_SECONDS", 60.0)  # only the NOTIFY can wake it in time
    run = engine.start(sleeper, 0.3)
    began = time.monotonic()
    assert engine.result(run.workflow_name, run.workflow_id, timeout=10)
    assert time.monotonic() - began < 5  # not the last look at the 10 s timeout
    assert rows(db, "SELECT result_waiters FROM workflows") == [(0,)]  # withdrawn again


def test_no_end_announcement_when_nobody_waits(engine: Engine, worker: Any, db: Any) -> None:
    from flows import sharding

    for shard in engine.shard_names("t-sleeper"):
        db.execute(f'LISTEN "{sharding.channel(shard, "flows-done")}"')
    run = engine.start(sleeper, 0.0)
    deadline = time.monotonic() + 10
    while engine.query(run.workflow_name, run.workflow_id).status != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert list(db.notifies(timeout=0.2)) == []


def test_a_claim_says_when_its_shards_next_task_of_the_workers_versions_falls_due(
    engine: Engine, db_url: str
) -> None:
    """A worker claims only in shards where work is due, and learns each
    shard's next due time from the claim itself: "now" while another task
    waits, the timer's fire time once only that is left, None when empty."""
    shard = engine.shard_of(three_steps.name, uuid6.uuid7())
    runs: list[flows.Execution] = []
    while len(runs) < 2:
        run = engine.start(three_steps, Job(f"j{len(runs)}"), workflow_id=uuid6.uuid7())
        if run.workflow_name_sharded == shard:
            runs.append(run)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("DELETE FROM task_queue WHERE workflow_name <> %s", (shard,))
        conn.execute(
            "INSERT INTO task_queue (workflow_name, id, workflow_id, tenant_id, task_type, workflow_version,"
            " visibility_timeout) VALUES (%s, %s, %s, %s, 'timer', 1, now() + interval '1 hour')",
            (shard, uuid6.uuid7(), uuid6.uuid7(), runs[0].tenant_id))
        answers = []
        for _ in range(3):
            with store.StepTransaction(conn) as tx:
                claimed = step_store.claim_replay(tx, shard, [1])
            answers.append((claimed.state is not None, claimed.next_due))
        with store.StepTransaction(conn) as tx:
            assert step_store.claim_replay(tx, shard, [2]).next_due is None  # no version-2 work
        conn.execute("DELETE FROM task_queue WHERE workflow_name = %s", (shard,))
        with store.StepTransaction(conn) as tx:
            assert step_store.claim_replay(tx, shard, [1]) == step_store.Claimed(None, None)
    (first, now_due), (second, timer_due), (third, still_timer) = answers
    assert (first, second, third) == (True, True, False)
    assert now_due is not None and now_due <= 0  # the second workflow's task waited
    assert timer_due is not None and 3590 < timer_due <= 3600
    assert still_timer is not None and 3590 < still_timer <= 3600



def test_the_sharded_name_a_status_shows_is_accepted_wherever_a_name_is(engine: Engine, worker: Any) -> None:
    run = engine.start(documents, ["a", "b"])
    status = engine.query(run.workflow_name, run.workflow_id)
    assert status.name == run.workflow_name_sharded == engine.shard_of("t-documents", run.workflow_id)
    sharded = status.name
    assert engine.query(sharded, run.workflow_id).id == run.workflow_id
    assert engine.shard_of(sharded, run.workflow_id) == sharded
    engine.send_signal(sharded, run.workflow_id, "doc-a", {"n": 1})
    with pytest.raises(TimeoutError):
        engine.result(sharded, run.workflow_id, timeout=0.5)  # found, still waiting for doc-b
    assert engine.cancel(sharded, run.workflow_id) is True
    assert engine.query(sharded, run.workflow_id).status == "cancelled"

    other = next(n for n in engine.shard_names("t-documents") if n != sharded)
    with pytest.raises(flows.WorkflowNotFound, match=f"that id belongs on {sharded}"):
        engine.query(other, run.workflow_id)
    with pytest.raises(flows.WorkflowNotFound):
        engine.send_signal(other, run.workflow_id, "doc-b")
