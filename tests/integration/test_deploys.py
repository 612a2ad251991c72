"""Deploys that change workflows and activities never fail work in flight:
workers claim only the versions and activities they have code for, and
ctx.patched() changes code under running workflows."""

from __future__ import annotations

import time
from typing import Any, Callable

import psycopg
import pytest

import flows
from flows import Engine, Worker
from tests.acceptance.fleet_harness import wait_until

# Every test here runs with workflows replayed, and with them parked in memory.
pytestmark = pytest.mark.usefixtures("replay_mode")


@flows.activity("deploy-quote")
def quote(ctx: flows.ActivityContext, n: int) -> int:
    return n * 10


@flows.workflow("deploy-order", version=1)
def order_v1(ctx: flows.WorkflowContext, n: int) -> dict[str, Any]:
    price = ctx.activity(quote, n)
    if n % 2:
        ctx.wait_for_signal("go")
    else:
        ctx.sleep(1.5)
    return {"code": "v1", "price": price}


@flows.workflow("deploy-order", version=2)
def order_v2(ctx: flows.WorkflowContext, n: int) -> dict[str, Any]:
    ctx.sleep(0.1)  # a different first step: v2 code cannot replay a v1 history
    price = ctx.activity(quote, n)
    return {"code": "v2", "price": price + 1}


def dead_letters(db: psycopg.Connection[Any]) -> list[Any]:
    return db.execute("SELECT workflow_id, error FROM dead_letter_queue").fetchall()


def test_a_rolling_deploy_finishes_v1_runs_on_v1_code_and_new_runs_on_v2(
    engine: Engine, db: psycopg.Connection[Any], start_worker: Callable[..., Worker]
) -> None:
    v1_fleet = [start_worker([order_v1], [quote]) for _ in range(2)]
    old_runs = [engine.start(order_v1, n) for n in range(6)]  # odd: parked at a signal, even: at a timer
    wait_until(lambda: all(engine.query(r.workflow_name, r.workflow_id).waiting_for in ("signal:go", "timer")
                           for r in old_runs), what="the v1 runs to park")

    # The web tier is deployed first: it starts v2 runs no v1 worker may take.
    early_v2 = engine.start(order_v2, 100)
    time.sleep(0.5)
    early = engine.query(early_v2.workflow_name, early_v2.workflow_id)
    assert (early.status, early.version, early.sequence_num) == ("running", 2, 0)  # untouched, not failed

    v2_fleet = [start_worker([order_v1, order_v2], [quote]) for _ in range(2)]  # the new code knows both
    for worker in v1_fleet:
        worker.stop()
    new_runs = [engine.start(order_v2, n) for n in range(3)]
    for run in old_runs:
        if engine.query(run.workflow_name, run.workflow_id).waiting_for == "signal:go":
            engine.send_signal(run.workflow_name, run.workflow_id, "go")

    for n, run in enumerate(old_runs):
        assert engine.result(run.workflow_name, run.workflow_id, timeout=15) == {"code": "v1", "price": n * 10}
    for n, run in zip([100, 0, 1, 2], [early_v2, *new_runs]):
        assert engine.result(run.workflow_name, run.workflow_id, timeout=15) == {"code": "v2", "price": n * 10 + 1}
    assert dead_letters(db) == []
    assert len(v2_fleet) == 2


@flows.activity("deploy-new-check")
def new_check(ctx: flows.ActivityContext, n: int) -> str:
    return f"checked {n}"


@flows.workflow("deploy-checked")
def checked(ctx: flows.WorkflowContext, n: int) -> str:
    price = ctx.activity(quote, n)
    return f"{price} {ctx.activity(new_check, n)}"


def test_an_activity_no_running_worker_has_waits_for_one_that_has_it(
    engine: Engine, db: psycopg.Connection[Any], start_worker: Callable[..., Worker]
) -> None:
    start_worker([checked], [quote])  # deployed before the activity existed in its code
    run = engine.start(checked, 4)
    wait_until(lambda: engine.query(run.workflow_name, run.workflow_id).waiting_for == "activity:deploy-new-check",
               what="the new activity to be scheduled")
    time.sleep(0.5)
    assert db.execute("SELECT status, attempt, error FROM activities WHERE name = 'deploy-new-check'").fetchall() == [
        ("scheduled", 0, None)]  # not claimed, no attempt burnt
    start_worker([checked], [quote, new_check])
    assert engine.result(run.workflow_name, run.workflow_id, timeout=10) == "40 checked 4"
    assert dead_letters(db) == []


@flows.activity("deploy-sms")
def send_sms(ctx: flows.ActivityContext, n: int) -> str:
    return f"sms to {n}"


@flows.workflow("deploy-notify")
def notify_before(ctx: flows.WorkflowContext, n: int) -> dict[str, Any]:
    price = ctx.activity(quote, n)
    ctx.wait_for_signal("paid")
    return {"price": price, "sms": None}


def notify_patched(ctx: flows.WorkflowContext, n: int) -> dict[str, Any]:
    """The same workflow after the change: a text message once paid."""
    price = ctx.activity(quote, n)
    ctx.wait_for_signal("paid")
    sms = ctx.activity(send_sms, n) if ctx.patched("send-sms") else None
    return {"price": price, "sms": sms}


def notify_changed_again(ctx: flows.WorkflowContext, n: int) -> dict[str, Any]:
    """A second change, patched before the first step this time."""
    receipt = ctx.activity(send_sms, -n) if ctx.patched("sms-receipt") else None
    price = ctx.activity(quote, n)
    ctx.wait_for_signal("paid")
    sms = ctx.activity(send_sms, n) if ctx.patched("send-sms") else None
    return {"price": price, "sms": sms, "receipt": receipt}


def redeployed(fn: Callable[[flows.WorkflowContext, int], dict[str, Any]]) -> flows.WorkflowDefinition[int, Any]:
    """deploy-notify, same name and version, with new code (as a new
    process importing the changed module would define it)."""
    return flows.WorkflowDefinition(notify_before.name, fn, notify_before.version, int, dict[str, Any])


def test_patched_changes_code_under_running_workflows(
    engine: Engine, db: psycopg.Connection[Any], start_worker: Callable[..., Worker]
) -> None:
    first = start_worker([notify_before], [quote, send_sms])
    runs = [engine.start(notify_before, n) for n in (1, 2)]
    wait_until(lambda: all(engine.query(r.workflow_name, r.workflow_id).waiting_for == "signal:paid" for r in runs),
               what="both runs waiting to be paid")
    first.stop()

    second = start_worker([redeployed(notify_patched)], [quote, send_sms])
    for run in runs:
        engine.send_signal(run.workflow_name, run.workflow_id, "paid")
    fresh = engine.start(notify_before, 3)
    engine.send_signal(fresh.workflow_name, fresh.workflow_id, "paid")
    # Parked before the patch point: both take the new path; so does a fresh run.
    for n, run in ((1, runs[0]), (2, runs[1]), (3, fresh)):
        assert engine.result(run.workflow_name, run.workflow_id, timeout=10) == {"price": n * 10, "sms": f"sms to {n}"}

    second.stop()
    start_worker([redeployed(notify_changed_again)], [quote, send_sms])
    late = engine.start(notify_before, 4)
    wait_until(lambda: engine.query(late.workflow_name, late.workflow_id).waiting_for == "signal:paid",
               what="the newest run waiting")
    engine.send_signal(late.workflow_name, late.workflow_id, "paid")
    assert engine.result(late.workflow_name, late.workflow_id, timeout=10) == {
        "price": 40, "sms": "sms to 4", "receipt": "sms to -4"}
    markers = db.execute(
        "SELECT workflow_id, event_data->>'patch_id' FROM history_events WHERE event_type = 'patched'"
        " ORDER BY sequence_num").fetchall()
    assert sorted(m for _, m in markers) == ["send-sms", "send-sms", "send-sms", "send-sms", "sms-receipt"]
    assert dead_letters(db) == []
