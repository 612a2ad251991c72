"""The operator's Engine methods on a real database: list, counts,
describe, retry (a failed activity, a workflow exception, a
NonDeterminismError), prune, export and replay, fleet, and the why
sentence read from the database."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any, Callable
from uuid import UUID

import psycopg
import pytest

import flows
from flows import ANY_TENANT, Engine, Worker
from flows.explain import why
from flows.store import ops as ops_store
from tests import console_app as app
from tests.webapp_support import wait_for

TENANT_A = UUID("0190aaaa-0000-7000-8000-000000000001")
TABLES = ("workflows", "activities", "history_events", "timers", "signals", "task_queue", "dead_letter_queue")


@pytest.fixture
def switch(monkeypatch: pytest.MonkeyPatch) -> dict[str, bool]:
    for key in app.SWITCH:
        monkeypatch.setitem(app.SWITCH, key, False)
    return app.SWITCH


@pytest.fixture
def worker(start_worker: Callable[..., Worker], switch: dict[str, bool]) -> Worker:
    return start_worker(app.WORKFLOWS, app.ACTIVITIES)


def ended(engine: Engine, run: flows.Execution, status: str = "failed", tenant: Any = None) -> flows.WorkflowStatus:
    def check() -> flows.WorkflowStatus | None:
        s = engine.query(run.workflow_name, run.workflow_id, tenant_id=tenant)
        return s if s.status == status else None
    return wait_for(check, 15, f"{run.workflow_id} {status}")  # type: ignore[no-any-return]


def waiting(engine: Engine, run: flows.Execution, what: str, tenant: Any = None) -> None:
    wait_for(lambda: engine.query(run.workflow_name, run.workflow_id, tenant_id=tenant).waiting_for == what, 15,
             f"{run.workflow_id} waiting for {what}")


def rows_of(db: psycopg.Connection[Any], wid: UUID) -> dict[str, int]:
    out = {}
    for t in TABLES:
        column = "id" if t == "workflows" else "workflow_id"
        out[t] = db.execute(f"SELECT count(*) FROM {t} WHERE {column} = %s", (wid,)).fetchone()[0]  # type: ignore[index]
    return out


def test_list_pages_through_every_workflow_newest_first_under_each_filter(engine: Engine, worker: Worker) -> None:
    buggy = [engine.start(app.buggy_workflow, f"b{i}") for i in range(3)]
    sleepers = [engine.start(app.wait_workflow, 60, tenant_id=TENANT_A if i < 2 else None) for i in range(4)]
    paths = [engine.start(app.path_workflow, f"p{i}") for i in range(2)]
    for run in buggy:
        ended(engine, run)
    for i, run in enumerate(sleepers):
        waiting(engine, run, "timer", TENANT_A if i < 2 else None)
    for run in paths:
        waiting(engine, run, "signal:go")

    seen, cursor = [], None
    while True:
        page = engine.list_workflows(limit=2, after=cursor)
        seen += page.workflows
        cursor = page.next_cursor
        if cursor is None:
            break
    started = [r.workflow_id for r in buggy + sleepers + paths]
    assert [w.id for w in seen] == started[::-1]  # all of them, once each, newest first

    def ids(**filters: Any) -> set[UUID]:
        return {w.id for w in engine.list_workflows(limit=1000, **filters).workflows}

    assert ids(status="failed") == {r.workflow_id for r in buggy}
    assert ids(name="c-wait") == {r.workflow_id for r in sleepers}
    assert ids(waiting_for="timer") == ids(name="c-wait")
    assert ids(waiting_for="signal") == ids(waiting_for="signal:go") == {r.workflow_id for r in paths}
    assert ids(waiting_for="signal:other") == set() and ids(waiting_for="sig") == set()
    assert ids(tenant_id=TENANT_A) == {r.workflow_id for r in sleepers[:2]}
    assert ids(tenant_id=None) == set(started) - ids(tenant_id=TENANT_A)  # None: the default tenant, as elsewhere
    middle = seen[4].created_at
    assert ids(created_from=middle) == {w.id for w in seen[:5]}
    assert ids(created_to=middle) == {w.id for w in seen[5:]}
    assert ids(created_from=middle.isoformat(), status="running", name="c-wait") == {
        r.workflow_id for r in sleepers[1:]}  # seen[4] is sleepers[1]

    assert engine.count_workflows() == {"failed": 3, "running": 6}
    assert engine.count_workflows("c-wait", tenant_id=TENANT_A) == {"running": 2}
    assert engine.count_workflows(waiting_for="signal") == {"running": 2}
    assert engine.workflow_names() == ["c-buggy", "c-path", "c-wait"]
    for bad, match in (({"status": "stuck"}, "status must be one of"), ({"limit": 0}, "limit must be"),
                       ({"limit": 1001}, "limit must be"), ({"after": "nope"}, "not a cursor"),
                       ({"created_from": "May 1st"}, "created_from is not an ISO 8601 time"),
                       ({"tenant_id": "acme"}, "tenant_id is not a UUID")):
        with pytest.raises(flows.InvalidInput, match=match):
            engine.list_workflows(**bad)


def test_describe_shows_every_attempt_signal_and_timer(engine: Engine, worker: Worker) -> None:
    fragile = engine.start(app.fragile_workflow, "pay")
    path = engine.start(app.path_workflow, "hello")
    ended(engine, fragile)
    waiting(engine, path, "signal:go")
    engine.send_signal("c-path", path.workflow_id, "later", {"n": 1})

    d = engine.describe("c-fragile", fragile.workflow_id)
    assert [(a.name, a.status) for a in d.activities] == [("c-echo", "completed"), ("c-fragile", "failed")]
    attempts = d.activities[1].attempts
    assert [(t.number, t.outcome, t.error) for t in attempts] == [
        (1, "failed", "ConnectionError: pay: service down"), (2, "failed", "ConnectionError: pay: service down")]
    assert attempts[0].retry_at is not None and attempts[0].ended_at is not None
    from datetime import timedelta

    assert attempts[1].started_at is not None  # not before it was due (the duration is the worker's measure)
    assert attempts[1].started_at >= attempts[0].retry_at - timedelta(milliseconds=50)
    assert all(t.duration_seconds is not None and 0 <= t.duration_seconds < 5 for t in attempts)
    assert [e.type for e in d.history][-2:] == ["activity_failed", "workflow_failed"]
    assert [x.error for x in d.dead_letters] == [d.error]
    assert d.history == sorted(d.history, key=lambda e: (e.seq, e.created_at))

    p = engine.describe("c-path", path.workflow_id)
    assert [(s.name, s.consumed) for s in p.signals] == [("later", False)]
    assert [t.type for t in p.tasks] == []  # waiting for "go": "later" queues no replay
    assert why(p).startswith("waiting for signal `go` since")
    assert why(p).endswith("none pending (pending, of other names: `later`; each waits until the workflow asks for it)")
    with pytest.raises(flows.WorkflowNotFound):
        engine.describe("c-path", path.workflow_id, tenant_id=TENANT_A)
    with pytest.raises(flows.WorkflowNotFound):
        engine.describe("c-path", UUID(int=5))


def test_retry_reruns_a_failed_activity_with_fresh_attempts(engine: Engine, worker: Worker,
                                                            switch: dict[str, bool], db: psycopg.Connection[Any]) -> None:
    run = engine.start(app.fragile_workflow, "pay")
    ended(engine, run)
    [letter] = engine.dead_letters()
    assert letter.workflow_id == run.workflow_id and letter.status == "failed" and "service down" in letter.error

    switch["healthy"] = True
    result = engine.retry("c-fragile", run.workflow_id)
    assert result.dropped_step == 2 and result.dropped_events == 4  # scheduled, retrying, failed, the end
    assert engine.result("c-fragile", run.workflow_id, timeout=15) == "before / pay ok (attempt 1)"  # ctx.attempt counts from 1
    d = engine.describe("c-fragile", run.workflow_id)
    assert [(a.name, a.status, a.attempt) for a in d.activities] == [("c-echo", "completed", 0),
                                                                     ("c-fragile", "completed", 0)]
    assert "activity_failed" not in [e.type for e in d.history]
    assert engine.dead_letters() == []
    [kept] = engine.dead_letters(include_retried=True)
    assert kept.retried_at is not None and kept.status == "completed"
    with pytest.raises(flows.WorkflowNotFailed, match="is completed; only a failed workflow can be retried"):
        engine.retry("c-fragile", run.workflow_id)


def test_retry_after_a_workflow_exception_replays_the_recorded_history(engine: Engine, worker: Worker,
                                                                       switch: dict[str, bool]) -> None:
    run = engine.start(app.buggy_workflow, "calc")
    ended(engine, run)
    recorded = [e.data["random_bytes"] for e in engine.describe("c-buggy", run.workflow_id).history
                if e.type == "random_generated"]
    switch["fixed"] = True  # the fix is deployed
    result = engine.retry("c-buggy", run.workflow_id)
    assert result.dropped_step is None and result.dropped_events == 1
    output = engine.result("c-buggy", run.workflow_id, timeout=15)
    assert [output["lucky"]] == recorded  # the random draw was replayed, not drawn again


def test_retry_after_a_nondeterminism_error(engine: Engine, worker: Worker, switch: dict[str, bool]) -> None:
    run = engine.start(app.path_workflow, "x")
    waiting(engine, run, "signal:go")
    switch["other_path"] = True  # a deploy changes step 1 under the running workflow
    engine.send_signal("c-path", run.workflow_id, "go", "now")
    failed = ended(engine, run)
    assert failed.error is not None and failed.error.startswith("NonDeterminismError: step 1")

    engine.retry("c-path", run.workflow_id)  # the code still diverges: it fails again, the same way
    again = ended(engine, run)
    assert again.error == failed.error
    assert [x.retried_at is None for x in engine.dead_letters(include_retried=True)] == [True, False]

    switch["other_path"] = False  # the deploy is rolled back
    engine.retry("c-path", run.workflow_id)
    assert engine.result("c-path", run.workflow_id, timeout=15) == "x now"


def test_retry_refuses_what_is_not_failed_or_not_visible(engine: Engine) -> None:
    run = engine.start(app.wait_workflow, 60, tenant_id=TENANT_A)
    with pytest.raises(flows.WorkflowNotFailed, match="is running"):
        engine.retry("c-wait", run.workflow_id)
    with pytest.raises(flows.WorkflowNotFound):
        engine.retry("c-wait", run.workflow_id, tenant_id=None)  # the default tenant has no such workflow
    with pytest.raises(flows.InvalidInput, match="workflow_id is not a UUID"):
        engine.retry("c-wait", "12")


def test_prune_deletes_old_finished_workflows_whole_and_never_running_ones(
        engine: Engine, worker: Worker, switch: dict[str, bool], db: psycopg.Connection[Any]) -> None:
    switch["fixed"] = True
    done = [engine.start(app.buggy_workflow, f"d{i}") for i in range(3)]
    failed = engine.start(app.fragile_workflow, "f")
    sleeping = engine.start(app.wait_workflow, 60)
    for run in done:
        ended(engine, run, "completed")
    ended(engine, failed)
    waiting(engine, sleeping, "timer")
    old = [done[0].workflow_id, done[1].workflow_id, failed.workflow_id, sleeping.workflow_id]
    age_by(db, timedelta(days=40), old)
    before = {w: rows_of(db, w) for w in old}
    assert before[failed.workflow_id]["dead_letter_queue"] == 1 and before[sleeping.workflow_id]["timers"] == 1

    with pytest.raises(flows.InvalidInput, match="older_than_seconds"):
        engine.prune(-1)
    assert engine.prune(30 * 86400, batch_size=1) == 3  # one a transaction, across shards
    for wid in old[:3]:
        assert rows_of(db, wid) == dict.fromkeys(TABLES, 0)
    assert rows_of(db, sleeping.workflow_id) == before[sleeping.workflow_id]  # running: untouched, however old
    assert engine.query("c-buggy", done[2].workflow_id).status == "completed"  # ended too recently
    assert engine.prune(30 * 86400) == 0


def test_export_replays_without_a_database_and_reports_the_first_divergence(
        engine: Engine, worker: Worker, switch: dict[str, bool]) -> None:
    done = engine.start(app.path_workflow, "x")
    waiting(engine, done, "signal:go")
    engine.send_signal("c-path", done.workflow_id, "go", {"n": 1})
    engine.result("c-path", done.workflow_id, timeout=15)
    parked = engine.start(app.path_workflow, "y")
    waiting(engine, parked, "signal:go")

    exported = json.loads(json.dumps(engine.export("c-path", done.workflow_id)))  # as a file holds it
    assert exported["format"] == "flows-export/1" and exported["workflow"]["status"] == "completed"
    assert [e["event_type"] for e in exported["history"]][:2] == ["workflow_started", "activity_scheduled"]
    assert [s["signal_name"] for s in exported["signals"]] == ["go"]
    report = flows.replay_export(exported)
    assert report.ok and report.replay_status == "completed" and report.notes == [] and report.steps == 2
    assert flows.replay_export(json.loads(json.dumps(engine.export("c-path", parked.workflow_id)))).ok

    switch["other_path"] = True
    report = flows.replay_export(exported)
    assert not report.ok
    assert report.divergence == ("step 1: history recorded activity 'c-echo', the code now asks for activity"
                                 " 'c-fragile'")
    with pytest.raises(flows.InvalidInput, match="not a flows export"):
        flows.replay_export({"workflow": {}})
    with pytest.raises(flows.InvalidInput, match="no workflow 'c-path' is defined here"):
        flows.replay_export(exported, workflows=[app.buggy_workflow])


def test_fleet_and_why_see_a_shard_no_worker_serves(engine: Engine, start_worker: Callable[..., Worker],
                                                    switch: dict[str, bool]) -> None:
    run = engine.start(app.wait_workflow, 0.05)
    time.sleep(0.3)
    d = engine.describe("c-wait", run.workflow_id)
    assert why(d).startswith("a replay step has been due for")
    assert why(d).endswith(f"but no worker serves shard `{run.workflow_name_sharded}` (no live heartbeat names it)")
    fleet = engine.fleet()
    [shard] = [s for s in fleet.shards if s.shard == run.workflow_name_sharded]
    assert shard.tasks == 1 and shard.due == 1 and shard.workers == []
    assert shard.oldest_due_seconds is not None and shard.oldest_due_seconds > 0.2

    worker = start_worker(app.WORKFLOWS, app.ACTIVITIES)
    wait_for(lambda: engine.query("c-wait", run.workflow_id).waiting_for == "signal:go", 15, "the timer to fire")
    fleet = wait_for(lambda: f if (f := engine.fleet()).workers else None, 15, "a heartbeat")
    [me] = fleet.workers
    assert me.owner == worker.owner and fleet.alive(me) and run.workflow_name_sharded in me.shards
    [shard] = [s for s in fleet.shards if s.shard == run.workflow_name_sharded]
    assert shard.workers == [worker.owner] and shard.due == 0 and shard.oldest_due_seconds is None
    d = engine.describe("c-wait", run.workflow_id)
    assert why(d).startswith("waiting for signal `go` since")
    rates = engine.event_rates(60, 5)
    assert sum(n for s, _, n in rates if s == run.workflow_name_sharded) == len(d.history) == 3
    assert engine.fleet(stale_seconds=0).shards[0].workers == []


def test_the_list_walks_indexes_on_a_filled_table(engine: Engine, db: psycopg.Connection[Any]) -> None:
    """EXPLAIN of a page and of a status filter on 30,000 workflows: index
    scans that stop after the page, no sort or scan of the whole table."""
    db.execute(
        "INSERT INTO workflows (name, id, tenant_id, status, created_at)"
        " SELECT 'bulk-shard-' || (i %% 3), gen_random_uuid(), %s,"
        "  CASE WHEN i %% 100 = 0 THEN 'running' ELSE 'completed' END, now() - i * interval '1 second'"
        " FROM generate_series(1, 30000) i", (flows.DEFAULT_TENANT_ID,))
    db.execute("ANALYZE workflows")
    shards = [f"bulk-shard-{k}" for k in range(3)]
    captured: list[str] = []

    class Explaining(psycopg.Cursor[Any]):
        def execute(self, query: Any, params: Any = None, **kw: Any) -> Any:
            from psycopg import sql

            text = query if isinstance(query, sql.Composable) else sql.SQL(query)
            with psycopg.Cursor(self.connection) as plain:
                plan = plain.execute(sql.SQL("EXPLAIN ") + text, params).fetchall()
            captured.append("\n".join(r[0] for r in plan))
            return super().execute(query, params, **kw)

    with psycopg.connect(engine.dsn, autocommit=True, cursor_factory=Explaining) as conn:
        ops_store.list_workflows(conn, shards, limit=1000)
        ops_store.list_workflows(conn, shards, limit=50, status="running")
    assert "workflows_by_created" in captured[0] and "workflows_by_status" in captured[1]
    for plan in captured:
        assert "Seq Scan on workflows" not in plan
    assert len(engine.list_workflows("bulk", limit=1000).workflows) == 1000
    assert engine.count_workflows("bulk") == {"completed": 29700, "running": 300}
    assert engine.count_workflows("bulk", cap=10_000) == {"completed": 10_000, "running": 300}


def age_by(db: psycopg.Connection[Any], age: timedelta, ids: list[Any] | None = None) -> None:
    """Make workflows look ``age`` older, row by row with the new times as
    values (Citus refuses ``created_at - interval ...`` in an UPDATE)."""
    rows = db.execute("SELECT name, id, created_at, completed_at FROM workflows"
                      + (" WHERE id = ANY(%s)" if ids is not None else ""), (ids,) if ids is not None else ()).fetchall()
    for name, wid, created, completed in rows:
        db.execute("UPDATE workflows SET created_at = %s, completed_at = %s WHERE name = %s AND id = %s",
                   (created - age, None if completed is None else completed - age, name, wid))
