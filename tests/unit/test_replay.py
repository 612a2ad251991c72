"""Replay without a database: history in, commands and status out."""

from datetime import datetime, timezone
from typing import Any
from uuid import UUID

import msgspec
import pytest
import uuid6

import flows
from flows import codec, history
from flows.context import ConsumeSignal, PendingSignal, RecordEvent, ScheduleActivity, StartTimer, replay

NOW = datetime(2024, 1, 15, 10, 30, tzinfo=timezone.utc)
WID = UUID("018c123e-4567-7890-abcd-ef0123456789")


@flows.activity("unit-double")
def double(ctx: flows.ActivityContext, n: int) -> int:
    return n * 2


@flows.workflow("unit-steps")
def steps(ctx: flows.WorkflowContext, n: int) -> dict[str, Any]:
    doubled = ctx.activity(double, n)
    note = ctx.wait_for_signal("note", type=str)
    ctx.sleep(5)
    return {"doubled": doubled, "note": note, "dice": list(ctx.random(4)), "at": ctx.now(), "id": ctx.uuid7()}


def run(definition: Any, events: list[tuple[int, str, bytes]], signals: list[PendingSignal] = (), inp: Any = 3) -> Any:
    return replay(definition, workflow_id=WID, workflow_name=f"{definition.name}-shard-0", tenant_id=WID,
                  input=codec.encode(inp), events=events, signals=list(signals), db_now=NOW)


def ev(seq: int, event: msgspec.Struct) -> tuple[int, str, bytes]:
    return seq, history.event_type(event), codec.encode(event)


def recorded(outcome: Any) -> list[tuple[int, str, bytes]]:
    """Turn an outcome's commands into the events a worker would have written."""
    rows = []
    for cmd in outcome.commands:
        if isinstance(cmd, ScheduleActivity):
            rows.append(ev(cmd.seq, history.ActivityScheduled(cmd.activity.name, cmd.activity_id, msgspec.Raw(cmd.input))))
        elif isinstance(cmd, ConsumeSignal):
            rows.append(ev(cmd.seq, history.SignalReceived(cmd.signal.name, cmd.signal.id, msgspec.Raw(cmd.signal.payload))))
        elif isinstance(cmd, StartTimer):
            rows.append(ev(cmd.seq, history.TimerStarted(cmd.timer_id, cmd.fire_at, cmd.seconds)))
        elif isinstance(cmd, RecordEvent):
            rows.append(ev(cmd.seq, cmd.event))
    return rows


def test_a_fresh_workflow_schedules_its_first_activity_and_suspends() -> None:
    out = run(steps, [])
    assert out.status == "running" and out.waiting_for == "activity:unit-double"
    [cmd] = out.commands
    assert isinstance(cmd, ScheduleActivity) and cmd.seq == 1 and cmd.input == b"3"


def test_a_pending_signal_is_consumed_in_the_same_replay_and_the_timer_starts() -> None:
    events = recorded(run(steps, []))
    events.append(ev(1, history.ActivityCompleted("unit-double", msgspec.Raw(b"6"))))
    sig = PendingSignal(uuid6.uuid7(), "note", b'"hello"')
    out = run(steps, events, [sig])
    assert [type(c) for c in out.commands] == [ConsumeSignal, StartTimer]
    assert out.commands[1].fire_at == datetime(2024, 1, 15, 10, 30, 5, tzinfo=timezone.utc)
    assert out.waiting_for == "timer"


def test_random_time_and_uuid_are_identical_on_every_replay() -> None:
    events = recorded(run(steps, []))
    events.append(ev(1, history.ActivityCompleted("unit-double", msgspec.Raw(b"6"))))
    events += recorded(run(steps, events, [PendingSignal(uuid6.uuid7(), "note", b'"hi"')]))
    events.append(ev(3, history.TimerFired(events[-1][0] and uuid6.uuid7())))
    first = run(steps, events)
    assert first.status == "completed"
    events += recorded(first)
    second, third = run(steps, events), run(steps, events)
    assert second.commands == [] and third.commands == []
    assert first.output == second.output == third.output
    assert msgspec.json.decode(first.output)["doubled"] == 6


def test_a_different_step_at_a_recorded_sequence_number_is_non_determinism() -> None:
    @flows.workflow("unit-changed")
    def changed(ctx: flows.WorkflowContext, n: int) -> None:
        ctx.wait_for_signal("note")  # history says step 1 was the activity

    events = recorded(run(steps, []))
    out = run(changed, events)
    assert out.status == "failed"
    assert out.error.startswith("NonDeterminismError: step 1: history recorded activity 'unit-double'")


def test_non_determinism_fails_the_workflow_even_if_the_code_catches_it() -> None:
    @flows.workflow("unit-swallow")
    def swallow(ctx: flows.WorkflowContext, n: int) -> str:
        try:
            ctx.sleep(1)
        except Exception:
            return "carried on"
        return "slept"

    out = run(swallow, recorded(run(steps, [])))
    assert out.status == "failed" and "NonDeterminismError" in out.error


def test_returning_before_recorded_steps_is_non_determinism() -> None:
    @flows.workflow("unit-shorter")
    def shorter(ctx: flows.WorkflowContext, n: int) -> int:
        return n

    out = run(shorter, recorded(run(steps, [])))
    assert out.status == "failed" and "history records step 1" in out.error


def test_an_exception_in_workflow_code_fails_it_with_the_message() -> None:
    @flows.workflow("unit-boom")
    def boom(ctx: flows.WorkflowContext, n: int) -> int:
        raise ValueError("no loans on Sundays")

    out = run(boom, [])
    assert out.status == "failed" and out.error == "ValueError: no loans on Sundays"


def test_swallowing_suspension_does_not_complete_the_workflow() -> None:
    @flows.workflow("unit-greedy")
    def greedy(ctx: flows.WorkflowContext, n: int) -> str:
        try:
            ctx.activity(double, n)
        except BaseException:
            pass
        return "done?"

    out = run(greedy, [])
    assert out.status == "running" and out.waiting_for == "activity:unit-double"


def test_a_failed_activity_is_raised_inside_the_workflow_and_can_be_handled() -> None:
    @flows.workflow("unit-handles")
    def handles(ctx: flows.WorkflowContext, n: int) -> str:
        try:
            ctx.activity(double, n)
        except flows.ActivityFailed as exc:
            return f"handled {exc.error} after {exc.attempts}"
        return "no"

    events = recorded(run(handles, []))
    events.append(ev(1, history.ActivityFailed("unit-double", "RuntimeError: down", 3)))
    out = run(handles, events)
    assert out.status == "completed" and msgspec.json.decode(out.output) == "handled RuntimeError: down after 3"


def test_signals_are_consumed_oldest_first_and_each_only_once() -> None:
    @flows.workflow("unit-two-docs")
    def two(ctx: flows.WorkflowContext, n: int) -> list[str]:
        return [ctx.wait_for_signal("doc", type=str), ctx.wait_for_signal("doc", type=str)]

    a, b = PendingSignal(uuid6.uuid7(), "doc", b'"a"'), PendingSignal(uuid6.uuid7(), "doc", b'"b"')
    out = run(two, [], [a, b])
    assert [c.signal.id for c in out.commands] == [a.id, b.id]
    assert msgspec.json.decode(out.output) == ["a", "b"]


@pytest.mark.parametrize("call", [lambda c: c.sleep(-1), lambda c: c.random(0), lambda c: c.activity(print, 1)])
def test_bad_arguments_raise_invalid_input_inside_the_workflow(call: Any) -> None:
    @flows.workflow(f"unit-bad-{id(call)}")
    def bad(ctx: flows.WorkflowContext, n: int) -> None:
        call(ctx)

    out = run(bad, [])
    assert out.status == "failed" and out.error.startswith("InvalidInput")
