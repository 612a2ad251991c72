"""A signal whose payload does not decode into what its wait expects is
rejected, visibly, and the workflow goes on waiting (in both replay modes)."""

from __future__ import annotations

from typing import Any

import msgspec
import psycopg

import flows
from flows import Engine, explain
from tests.acceptance.fleet_harness import wait_until


class Approval(msgspec.Struct, frozen=True):
    by: str
    amount: int


@flows.workflow("rejecting-waits")
def rejecting_waits(ctx: flows.WorkflowContext, timeout: float) -> dict[str, Any]:
    approval = ctx.wait_for_signal("approval", type=Approval)  # no declaration: sends are not checked
    try:
        late = ctx.wait_for_signal("late", type=int, timeout=timeout)
    except flows.Timeout:
        late = None
    return {"by": approval.by, "amount": approval.amount, "late": late}


def test_a_misfit_signal_is_rejected_and_the_workflow_keeps_waiting(
    engine: Engine, start_worker: Any, db: psycopg.Connection[Any], replay_mode: str
) -> None:
    start_worker([rejecting_waits], [])
    run = engine.start(rejecting_waits, 600.0)
    name, wid = run.workflow_name, run.workflow_id
    wait_until(lambda: engine.query(name, wid).waiting_for == "signal:approval")
    engine.send_signal(name, wid, "approval", {"by": "ann"})  # no amount
    engine.send_signal(name, wid, "approval", "yes")

    status = wait_until(lambda: (s := engine.query(name, wid)).rejected_signals and len(s.rejected_signals) == 2
                        and s, what="both signals rejected")
    assert status.status == "running" and status.waiting_for == "signal:approval"
    first, second = status.rejected_signals
    assert first.name == "approval" and "does not decode as Approval" in first.reason and "amount" in first.reason
    assert "Expected `object`" in second.reason
    assert db.execute("SELECT count(*) FROM signals WHERE rejected IS NOT NULL AND consumed"
                      " AND consumed_seq IS NULL").fetchone() == (2,)
    detail = engine.describe(name, wid)  # what the console and `flows show` read
    assert [s.rejected is not None for s in detail.signals] == [True, True]
    sentence = explain.why(detail)
    assert sentence.startswith("waiting for signal `approval`") and "2 rejected" in sentence, sentence

    engine.send_signal(name, wid, "approval", {"by": "bob", "amount": 5})
    wait_until(lambda: engine.query(name, wid).waiting_for == "signal:late")
    engine.send_signal(name, wid, "late", "not a number")
    engine.send_signal(name, wid, "late", 7)
    assert engine.result(name, wid, timeout=20) == {"by": "bob", "amount": 5, "late": 7}
    assert [r[0] for r in db.execute("SELECT signal_name FROM signals WHERE rejected IS NOT NULL"
                                     " ORDER BY created_at")] == ["approval", "approval", "late"]
    history = [e for (e,) in db.execute("SELECT event_type FROM history_events WHERE workflow_id = %s"
                                         " ORDER BY sequence_num", (wid,))]
    assert history.count("signal_received") == 2  # the rejected ones are no part of the history


def test_a_wait_with_a_timeout_still_times_out_when_only_misfits_arrived(
    engine: Engine, start_worker: Any, replay_mode: str
) -> None:
    start_worker([rejecting_waits], [])
    run = engine.start(rejecting_waits, 1.0)
    name, wid = run.workflow_name, run.workflow_id
    engine.send_signal(name, wid, "late", "not a number")  # there before the wait begins
    engine.send_signal(name, wid, "approval", {"by": "cy", "amount": 1})
    assert engine.result(name, wid, timeout=20) == {"by": "cy", "amount": 1, "late": None}
