"""A value PostgreSQL would refuse fails the one workflow or attempt that
carries it, with a clear error, and never blocks its shard."""

from __future__ import annotations

import logging
import re
import time
from typing import Any, Callable

import psycopg
import pytest
import uuid6

import flows
from flows import Engine, Worker, codec
from tests.acceptance.fleet_harness import wait_until

QUICK = flows.RetryPolicy(initial_interval=0.05, backoff=1.0, max_attempts=2, jitter=0.0)


@flows.workflow("bad-output")
def bad_output(ctx: flows.WorkflowContext, text: str) -> str:
    return text.replace("~", "\x00")  # "a~b" -> "a\x00b"


@flows.activity("bad-result", retry=QUICK)
def bad_result(ctx: flows.ActivityContext, text: str) -> dict[str, str]:
    return {"note": text.replace("~", "\x00")}


@flows.workflow("bad-activity")
def bad_activity(ctx: flows.WorkflowContext, text: str) -> Any:
    try:
        return ctx.activity(bad_result, text)
    except flows.ActivityFailed as exc:
        return {"failed": exc.error, "attempts": exc.attempts}


@flows.workflow("bad-replay")
def endless_replay(ctx: flows.WorkflowContext, spin: bool) -> str:
    while spin:  # a bug in workflow code: it never returns
        pass
    return "done"


def ids_on(engine: Engine, name: str, shard: str, n: int) -> list[Any]:
    """``n`` fresh workflow ids of ``name`` that land on ``shard``."""
    found: list[Any] = []
    while len(found) < n:
        wid = uuid6.uuid7()
        if engine.shard_of(name, wid) == shard:
            found.append(wid)
    return found


def dead_letters(db: psycopg.Connection[Any]) -> list[Any]:
    return db.execute("SELECT workflow_id, error FROM dead_letter_queue").fetchall()


def test_a_nul_in_a_workflow_output_fails_that_workflow_and_its_shard_goes_on(
    engine: Engine, db: psycopg.Connection[Any], start_worker: Callable[..., Worker]
) -> None:
    shard = engine.shard_of(bad_output.name, uuid6.uuid7())
    bad_id, *good_ids = ids_on(engine, bad_output.name, shard, 6)
    bad = engine.start(bad_output, "a~b", workflow_id=bad_id)
    good = [engine.start(bad_output, f"fine {n}", workflow_id=wid) for n, wid in enumerate(good_ids)]
    started = time.monotonic()
    start_worker([bad_output], [])
    with pytest.raises(flows.WorkflowFailed) as failed:
        engine.result(bad.workflow_name, bad.workflow_id, timeout=5)
    assert time.monotonic() - started < 5
    assert failed.value.error == (
        "InvalidInput: workflow output contains a NUL character (\\u0000), which PostgreSQL cannot store")
    for n, run in enumerate(good):
        assert engine.result(run.workflow_name, run.workflow_id, timeout=5) == f"fine {n}"
    assert dead_letters(db) == [(bad.workflow_id, failed.value.error)]


def test_a_nul_in_an_activity_result_is_a_failed_attempt_retried_per_policy(
    engine: Engine, db: psycopg.Connection[Any], start_worker: Callable[..., Worker]
) -> None:
    start_worker([bad_activity], [bad_result])
    run = engine.start(bad_activity, "x~y")
    out = engine.result(run.workflow_name, run.workflow_id, timeout=10)
    assert out == {"attempts": 2, "failed": (
        "InvalidInput: activity result.note contains a NUL character (\\u0000), which PostgreSQL cannot store")}
    assert db.execute("SELECT status, attempt FROM activities WHERE workflow_id = %s",
                      (run.workflow_id,)).fetchall() == [("failed", 1)]


def test_start_and_signal_refuse_a_nul_naming_where_it_is_and_write_nothing(
    engine: Engine, db: psycopg.Connection[Any]
) -> None:
    with pytest.raises(flows.InvalidInput) as refused:
        engine.start(bad_output, {"customer": {"names": ["ok", "Jo\x00e"]}})  # type: ignore[arg-type]
    assert refused.value.path == "input.customer.names[1]"
    assert "NUL" in str(refused.value)
    assert db.execute("SELECT count(*) FROM workflows").fetchone() == (0,)

    run = engine.start(bad_output, "fine")
    with pytest.raises(flows.InvalidInput) as refused:
        engine.send_signal(run.workflow_name, run.workflow_id, "note", {"comments": "bad\x00"})
    assert refused.value.path == "payload.comments"
    with pytest.raises(flows.InvalidInput):
        engine.send_signal(run.workflow_name, run.workflow_id, "no\x00te", {})
    assert db.execute("SELECT count(*) FROM signals").fetchone() == (0,)


def test_a_value_over_the_size_limit_is_refused(engine: Engine, db: psycopg.Connection[Any]) -> None:
    with pytest.raises(flows.InvalidInput, match=re.escape(f"over the limit of {codec.MAX_PAYLOAD_BYTES}")):
        engine.start(bad_output, "x" * codec.MAX_PAYLOAD_BYTES)
    assert db.execute("SELECT count(*) FROM workflows").fetchone() == (0,)


def test_a_step_the_database_refuses_fails_that_workflow_alone(
    engine: Engine, db: psycopg.Connection[Any], start_worker: Callable[..., Worker],
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """Should a value get past the codec, PostgreSQL's refusal (SQLSTATE 22)
    fails the workflow in a transaction of its own instead of the step being
    retried in place for ever while the shard's other tasks wait; the logs
    name the error's class, never the value."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setattr(codec, "_NUL_ESCAPE", re.compile(b"(?!x)x"))  # the codec's check, gone
    shard = engine.shard_of(bad_output.name, uuid6.uuid7())
    bad_id, *good_ids = ids_on(engine, bad_output.name, shard, 6)
    bad = engine.start(bad_output, "Zebulon Secretname~b", workflow_id=bad_id)
    good = [engine.start(bad_output, f"fine {n}", workflow_id=wid) for n, wid in enumerate(good_ids)]
    start_worker([bad_output], [])
    with pytest.raises(flows.WorkflowFailed) as failed:
        engine.result(bad.workflow_name, bad.workflow_id, timeout=5)
    assert re.fullmatch(r"the database refused this step: \w+ \(22\w{3}\): .+", failed.value.error or ""), failed
    for n, run in enumerate(good):
        assert engine.result(run.workflow_name, run.workflow_id, timeout=5) == f"fine {n}"
    assert [wid for wid, _ in dead_letters(db)] == [bad.workflow_id]
    assert db.execute("SELECT count(*) FROM task_queue").fetchone() == (0,)
    logged = "\n".join(caplog.text.splitlines() + [r.getMessage() for r in caplog.records])
    assert "step-failed" in logged and "Zebulon" not in logged


def test_a_replay_past_its_budget_is_abandoned_and_fails_when_it_repeats(
    engine: Engine, db: psycopg.Connection[Any], start_worker: Callable[..., Worker],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(flows.worker, "REPLAY_BUDGET_SECONDS", 0.3)
    shard = engine.shard_of(endless_replay.name, uuid6.uuid7())
    stuck_id, *good_ids = ids_on(engine, endless_replay.name, shard, 4)
    stuck = engine.start(endless_replay, True, workflow_id=stuck_id)
    good = [engine.start(endless_replay, False, workflow_id=wid) for wid in good_ids]
    start_worker([endless_replay], [])
    with pytest.raises(flows.WorkflowFailed) as failed:
        engine.result(stuck.workflow_name, stuck.workflow_id, timeout=10)
    assert failed.value.error == "the replay ran past its budget of 0.3s (FLOWS_REPLAY_BUDGET_SECONDS)"
    for run in good:
        assert engine.result(run.workflow_name, run.workflow_id, timeout=5) == "done"
    wait_until(lambda: dead_letters(db), what="the dead letter")


def test_a_backlog_is_claimed_in_batches_and_a_refused_step_still_fails_alone(
    engine: Engine, db: psycopg.Connection[Any], start_worker: Callable[..., Worker],
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """A worker finding a backlog in a shard claims and commits several
    tasks together; when the database refuses one step of such a batch,
    the batch rolls back, the shard goes one task at a time, and only that
    workflow fails."""
    caplog.set_level(logging.DEBUG, "flows.worker")
    monkeypatch.setattr(codec, "_NUL_ESCAPE", re.compile(b"(?!x)x"))  # let the NUL reach the database
    shard = engine.shard_of(bad_output.name, uuid6.uuid7())
    ids = ids_on(engine, bad_output.name, shard, 16)
    runs = [engine.start(bad_output, "a~b" if n == 12 else f"fine {n}", workflow_id=wid) for n, wid in enumerate(ids)]
    start_worker([bad_output], [])
    for n, run in enumerate(runs):
        if n == 12:
            with pytest.raises(flows.WorkflowFailed, match=r"the database refused this step"):
                engine.result(run.workflow_name, run.workflow_id, timeout=10)
        else:
            assert engine.result(run.workflow_name, run.workflow_id, timeout=10) == f"fine {n}"
    batches = [int(m.group(1)) for r in caplog.records if (m := re.search(r"claimed-batch .* tasks=(\d+)", r.getMessage()))]
    assert batches and max(batches) > 1
    assert any("claim-batch-failed" in r.getMessage() for r in caplog.records)
    assert [wid for wid, _ in dead_letters(db)] == [runs[12].workflow_id]


@flows.workflow("bad-raises")
def raises_with_data(ctx: flows.WorkflowContext, name: str) -> str:
    raise ValueError(f"customer {name} is not allowed")


def test_logs_name_the_failure_and_the_ids_never_the_data(
    engine: Engine, start_worker: Callable[..., Worker], caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    start_worker([raises_with_data], [])
    run = engine.start(raises_with_data, "Zebulon Secretname")
    with pytest.raises(flows.WorkflowFailed, match="customer Zebulon Secretname is not allowed"):  # kept for the user
        engine.result(run.workflow_name, run.workflow_id, timeout=10)
    failed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("workflow-failed")]
    assert failed == [f"workflow-failed shard={run.workflow_name_sharded} id={run.workflow_id} error=ValueError"]
    assert "Zebulon" not in caplog.text
