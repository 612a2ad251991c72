"""Long-lived workflows: continue-as-new, the history limit, and workflows
kept in memory between steps (used only while still current)."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import psycopg
import pytest

import flows
from flows import Engine, Worker, continuation, steps, store
from flows.store import steps as step_store
from tests.acceptance.fleet_harness import wait_until
from tests.conftest import on_citus

QUICK = flows.RetryPolicy(initial_interval=0.05, backoff=1.0, max_attempts=2, jitter=0.0)


@flows.activity("ll-add", retry=QUICK)
def add(ctx: flows.ActivityContext, pair: list[int]) -> int:
    return pair[0] + pair[1]


@flows.workflow("ll-counter")
def counter(ctx: flows.WorkflowContext, state: dict[str, Any]) -> dict[str, Any]:
    """Adds each `n` signal to a total; every 3 signals it starts afresh
    carrying the total, until `stop` arrives."""
    total, runs, seen = state["total"], state["runs"], []
    for _ in range(3):
        n = ctx.wait_for_signal("n", type=int)
        if n < 0:
            return {"total": total, "runs": runs, "last_run": seen}
        total = ctx.activity(add, [total, n])
        seen.append(n)
    ctx.continue_as_new({"total": total, "runs": runs + 1})


def test_continue_as_new_keeps_the_id_and_pending_signals_and_the_old_runs(
    engine: Engine, db: psycopg.Connection[Any], start_worker: Callable[..., Worker]
) -> None:
    start_worker([counter], [add])
    run = engine.start(counter, {"total": 0, "runs": 0})
    for n in range(1, 8):  # sent at once: most wait, and carry over into the next runs
        engine.send_signal(run.workflow_name, run.workflow_id, "n", n)
    wait_until(lambda: db.execute("SELECT run FROM workflows WHERE id = %s", (run.workflow_id,)).fetchone()[0] == 3,
               what="the third run")
    status = engine.query(run.workflow_name, run.workflow_id)
    assert status.status == "running" and status.input == {"total": 21, "runs": 2}
    engine.send_signal(run.workflow_name, run.workflow_id, "n", -1)
    assert engine.result(run.workflow_name, run.workflow_id, timeout=20) == {
        "total": 28, "runs": 2, "last_run": [7]}

    rows = db.execute("SELECT sequence_num, step, event_type FROM history_events WHERE workflow_id = %s"
                      " ORDER BY sequence_num", (run.workflow_id,)).fetchall()
    assert [seq for seq, _, _ in rows] == list(range(1, len(rows) + 1))  # one audit trail over all runs
    kinds = [kind for _, _, kind in rows]
    assert kinds.count("workflow_started") == 3 and kinds.count("workflow_continued_as_new") == 2
    assert kinds[-1] == "workflow_completed"
    # Steps go on numbering across runs: no step of one run collides with another's.
    assert db.execute("SELECT count(*), count(DISTINCT sequence_num) FROM activities WHERE workflow_id = %s",
                      (run.workflow_id,)).fetchone() == (7, 7)
    [(results,)] = db.execute("SELECT activity_results FROM workflows WHERE id = %s", (run.workflow_id,)).fetchall()
    assert list(results.values()) == [28]  # the last run's activities
    assert db.execute("SELECT count(*) FROM signals WHERE workflow_id = %s AND NOT consumed",
                      (run.workflow_id,)).fetchone() == (0,)


@flows.workflow("ll-loop")
def loop(ctx: flows.WorkflowContext, steps_wanted: int) -> int:
    total = 0
    for i in range(steps_wanted):
        total = ctx.activity(add, [total, i])
    return total


def test_a_run_past_the_history_limit_fails_clearly_and_warns_before(
    engine: Engine, start_worker: Callable[..., Worker], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(steps, "HISTORY_LIMIT", 30)
    caplog.set_level(logging.WARNING, "flows.worker")
    start_worker([loop], [add])
    ok = engine.start(loop, 5)  # 1 + 2 x 5 events + the end: well under
    too_long = engine.start(loop, 40)
    assert engine.result(ok.workflow_name, ok.workflow_id, timeout=10) == 10
    with pytest.raises(flows.WorkflowFailed, match=r"HistoryLimitExceeded: this run has 3\d history events, over"
                                                   r" the limit of 30 \(FLOWS_HISTORY_LIMIT\)"):
        engine.result(too_long.workflow_name, too_long.workflow_id, timeout=20)
    assert [r for r in caplog.records if r.getMessage().startswith("workflow-history-near-limit")
            and str(too_long.workflow_id) in r.getMessage()]


@flows.workflow("ll-stamped")
def stamped(ctx: flows.WorkflowContext, rounds: int) -> list[str]:
    """Each round waits for a signal, then records a uuid: a worker running
    it from a stale memory would wait again for a round already done."""
    seen = []
    for _ in range(rounds):
        ctx.wait_for_signal("go")
        seen.append(str(ctx.uuid7()))
    return seen


def step_once(worker: Worker, db_url: str, shard: str) -> step_store.ReplayState | None:
    """Claim and replay one task of ``shard`` with ``worker``'s step writer
    (its memory included), as its loop would."""
    with psycopg.connect(db_url, autocommit=True) as conn, store.StepTransaction(conn) as tx:
        claimed = step_store.claim_replay(tx, shard, [1], worker.steps.whole_below)
        if claimed.state is not None:
            worker.steps.advance(tx, claimed.state, None)
        return claimed.state


def test_a_worker_drops_what_it_remembers_once_another_worker_moved_the_workflow_on(
    engine: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(continuation, "PARK_MIN_EVENTS", 0)  # keep every workflow as parked code
    first, second = Worker(engine, [stamped]), Worker(engine, [stamped])
    run = engine.start(stamped, 3)
    shard, key = run.workflow_name_sharded, (run.workflow_name_sharded, run.workflow_id)
    try:
        assert step_once(first, db_url, shard) is not None  # waits for round 1: kept by first
        kept = first.replay_cache.take(key)
        assert kept is not None and kept.parked is not None and kept.parked.alive
        first.replay_cache.put(key, kept)

        engine.send_signal(run.workflow_name, run.workflow_id, "go")
        assert step_once(second, db_url, shard) is not None  # round 1 done by second
        engine.send_signal(run.workflow_name, run.workflow_id, "go")
        assert step_once(first, db_url, shard) is not None  # round 2: first's memory is stale

        assert not kept.parked.alive  # dropped (its code abandoned), replaced by a fresh replay
        now_kept = first.replay_cache.take(key)
        assert now_kept is not None and now_kept.parked is not kept.parked
        first.replay_cache.put(key, now_kept)
        engine.send_signal(run.workflow_name, run.workflow_id, "go")
        assert step_once(first, db_url, shard) is not None  # round 3, from current memory
        out = engine.result(run.workflow_name, run.workflow_id, timeout=5)
        assert len(out) == 3 and len(set(out)) == 3
    finally:
        first.replay_cache.clear()
        second.replay_cache.clear()


def test_a_long_loop_is_resumed_in_memory_not_replayed(
    engine: Engine, start_worker: Callable[..., Worker], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past FLOWS_PARK_MIN_EVENTS a worker parks the code: the loop body runs
    once per step, not once per step per earlier step."""
    monkeypatch.setattr(continuation, "PARK_MIN_EVENTS", 20)
    calls: list[int] = []

    def counted(ctx: flows.WorkflowContext, n: int) -> int:
        total = 0
        for i in range(n):
            calls.append(i)
            total = ctx.activity(add, [total, i])
        return total

    definition = flows.WorkflowDefinition("ll-counted", counted, 1, int, int)
    start_worker([definition], [add])
    run = engine.start(definition, 60)
    started = time.monotonic()
    assert engine.result(run.workflow_name, run.workflow_id, timeout=30) == sum(range(60))
    assert time.monotonic() - started < 30
    # Replayed from the top while short (about 10 steps, 1 + 2 + ... calls),
    # then resumed: one call per step. A full replay at every step would
    # make 60 * 61 / 2 = 1830.
    assert len(calls) < 200, len(calls)


@pytest.mark.skipif(on_citus(), reason="the history's scans are counted on the worker nodes there")
def test_a_step_reads_only_the_end_of_a_long_history_under_generic_plans(
    engine: Engine, db: psycopg.Connection[Any],
) -> None:
    """The tail read a step makes stays an index range scan once autovacuum
    has analyzed a long history: under the claims' forced generic plans a
    sequential scan of the whole history made each step of a 10,000-step
    loop 2 ms slower at its end (loadtest long)."""
    run = engine.start(counter, {"total": 0, "runs": 0})
    shard = run.workflow_name_sharded
    db.execute(
        "INSERT INTO history_events (workflow_name, id, workflow_id, tenant_id, sequence_num, step, event_type,"
        " event_data) SELECT %s, gen_random_uuid(), %s, tenant_id, n, n, 'ActivityCompleted', '{}'"
        " FROM workflows, generate_series(2, 5001) n WHERE name = %s AND id = %s",
        (shard, run.workflow_id, shard, run.workflow_id))
    db.execute("ANALYZE history_events")
    with db.transaction():
        db.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        for after in range(4990, 4996):  # past psycopg's and PL/pgSQL's first custom plans
            state = db.execute("SELECT flows_state_v3(%s, %s, NULL, %s, now())::json",
                               (shard, run.workflow_id, after)).fetchone()
            assert state is not None
            assert [e[0] for e in state[0]["events"]] == list(range(after + 1, 5002))
        scans = db.execute("SELECT seq_scan, idx_scan FROM pg_stat_xact_user_tables"
                           " WHERE relname = 'history_events'").fetchone()
    assert scans is not None
    assert scans[0] == 0, f"the tail read scanned the whole history ({scans[0]} sequential scans)"
    assert scans[1] >= 6
