"""ctx.patched(): changing code under running workflows without a new
version, checked by replaying histories without a database."""

from __future__ import annotations

from typing import Any

import flows
from flows import history
from flows.context import PendingSignal, RecordEvent, ScheduleActivity
from tests.unit.test_replay import double, ev, recorded, run


@flows.activity("unit-send-sms")
def send_sms(ctx: flows.ActivityContext, n: int) -> str:
    return f"sms {n}"


@flows.workflow("unit-notify-old")
def before_patch(ctx: flows.WorkflowContext, n: int) -> dict[str, Any]:
    doubled = ctx.activity(double, n)
    note = ctx.wait_for_signal("note", type=str)
    return {"doubled": doubled, "note": note}


@flows.workflow("unit-notify-patched")
def with_patch(ctx: flows.WorkflowContext, n: int) -> dict[str, Any]:
    doubled = ctx.activity(double, n)
    sms = ctx.activity(send_sms, n) if ctx.patched("send-sms") else None
    note = ctx.wait_for_signal("note", type=str)
    return {"doubled": doubled, "note": note, "sms": sms}


@flows.workflow("unit-notify-retired")
def patch_retired(ctx: flows.WorkflowContext, n: int) -> dict[str, Any]:
    doubled = ctx.activity(double, n)
    sms = ctx.activity(send_sms, n)
    note = ctx.wait_for_signal("note", type=str)
    return {"doubled": doubled, "note": note, "sms": sms}


def completed(seq: int, name: str, output: bytes) -> tuple[int, str, bytes]:
    import msgspec

    return ev(seq, history.ActivityCompleted(name, msgspec.Raw(output)))


def old_history_waiting_for_the_note() -> list[tuple[int, str, bytes]]:
    """A run recorded by the old code: doubled, then waiting for the note."""
    events = recorded(run(before_patch, [], inp=3))
    events.append(completed(1, "unit-double", b"6"))
    assert run(before_patch, events, inp=3).waiting_for == "signal:note"
    return events


def test_a_run_recorded_past_the_patch_point_keeps_the_old_path_on_every_replay() -> None:
    events = old_history_waiting_for_the_note()
    events += recorded(run(before_patch, events, [PendingSignal(flows.engine.DEFAULT_TENANT_ID, "note", b'"hi"')]))
    for _ in range(2):  # replayed twice: the same answer
        out = run(with_patch, events, inp=3)
        assert out.status == "completed", out.error
        assert out.output == b'{"doubled":6,"note":"hi","sms":null}'
        assert not any(isinstance(c, RecordEvent) and isinstance(c.event, history.Patched) for c in out.commands)


def test_a_run_reaching_the_patch_for_the_first_time_takes_the_new_path_and_records_it() -> None:
    events = recorded(run(with_patch, [], inp=3))
    events.append(completed(1, "unit-double", b"6"))
    out = run(with_patch, events, inp=3)
    assert out.status == "running" and out.waiting_for == "activity:unit-send-sms"
    markers = [c for c in out.commands if isinstance(c, RecordEvent)]
    assert [m.event for m in markers] == [history.Patched("send-sms")]
    assert [c.activity.name for c in out.commands if isinstance(c, ScheduleActivity)] == ["unit-send-sms"]
    events += recorded(out)
    events.append(completed(2, "unit-send-sms", b'"sms 3"'))
    for _ in range(2):  # replays find the marker: the new path again, nothing recorded twice
        again = run(with_patch, events, [PendingSignal(flows.engine.DEFAULT_TENANT_ID, "note", b'"hi"')], inp=3)
        assert again.status == "completed", again.error
        assert again.output == b'{"doubled":6,"note":"hi","sms":"sms 3"}'
        assert not any(isinstance(c, RecordEvent) for c in again.commands)


def test_an_old_run_parked_just_before_the_patch_takes_the_new_path() -> None:
    """Nothing was recorded after the patch point yet: the new path is safe."""
    events = recorded(run(before_patch, [], inp=3))  # scheduled doubled, not done
    events.append(completed(1, "unit-double", b"6"))
    out = run(with_patch, events, inp=3)  # the old run woke after its activity, before waiting
    assert out.waiting_for == "activity:unit-send-sms"


def test_a_retired_patch_replays_runs_that_recorded_it() -> None:
    events = recorded(run(with_patch, [], inp=3))
    events.append(completed(1, "unit-double", b"6"))
    events += recorded(run(with_patch, events, inp=3))
    events.append(completed(2, "unit-send-sms", b'"sms 3"'))
    out = run(patch_retired, events, [PendingSignal(flows.engine.DEFAULT_TENANT_ID, "note", b'"hi"')], inp=3)
    assert out.status == "completed", out.error
    assert out.output == b'{"doubled":6,"note":"hi","sms":"sms 3"}'


def test_a_step_resolved_before_its_opener_in_the_history_still_resolves() -> None:
    """During a rolling deploy a worker of the previous release numbered
    events by step, so its activity_completed may sort before the
    activity_scheduled this release wrote."""
    scheduled = recorded(run(before_patch, [], inp=3))
    out = run(before_patch, [completed(1, "unit-double", b"6"), *scheduled], inp=3)
    assert out.status == "running" and out.waiting_for == "signal:note"


def test_event_types_of_a_newer_release_are_skipped() -> None:
    events = [*recorded(run(before_patch, [], inp=3)), (1, "some_future_event", b'{"x":1}'),
              completed(1, "unit-double", b"6")]
    assert run(before_patch, events, inp=3).waiting_for == "signal:note"
