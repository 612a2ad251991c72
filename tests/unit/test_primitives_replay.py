"""Replay of the primitives without a database: parallel activities, child
workflows and signal timeouts decide the same whatever order things ended
in, and the same on every replay."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import msgspec
import pytest
import uuid6

import flows
from flows import history
from flows.context import AwaitSignal, CancelTimer, ConsumeSignal, PendingSignal, ScheduleActivity, StartChild
from tests.unit.test_replay import NOW, ev, run


@flows.activity("unit-p-echo")
def echo(ctx: flows.ActivityContext, s: str) -> str:
    return s


@flows.workflow("unit-p-fan")
def fan(ctx: flows.WorkflowContext, fail_fast: bool) -> Any:
    handles = [ctx.start_activity(echo, name) for name in ("a", "b", "c")]
    try:
        return ctx.gather(*handles, fail_fast=fail_fast)
    except flows.ActivityFailed as exc:
        return f"failed: {exc.error}"


@flows.workflow("unit-p-kid")
def kid(ctx: flows.WorkflowContext, n: int) -> int:
    return n + 1


@flows.workflow("unit-p-parent")
def parent(ctx: flows.WorkflowContext, n: int) -> Any:
    try:
        return ctx.child(kid, n)
    except flows.ChildWorkflowFailed as exc:
        return f"{exc.status}: {exc.error}"


@flows.workflow("unit-p-wait")
def wait(ctx: flows.WorkflowContext, seconds: float) -> str:
    try:
        return "got " + ctx.wait_for_signal("ok", type=str, timeout=seconds)
    except flows.Timeout as exc:
        return f"timeout after {exc.seconds:g}"


def scheduled() -> list[tuple[int, str, bytes]]:
    out = run(fan, [], inp=False)
    assert [type(c) for c in out.commands] == [ScheduleActivity] * 3
    assert out.waiting_for == "activity:unit-p-echo,activity:unit-p-echo,activity:unit-p-echo"
    return [ev(c.seq, history.ActivityScheduled("unit-p-echo", c.activity_id, msgspec.Raw(c.input)))
            for c in out.commands]


def done(seq: int, value: str) -> tuple[int, str, bytes]:
    return ev(seq, history.ActivityCompleted("unit-p-echo", msgspec.Raw(msgspec.json.encode(value))))


def failed(seq: int, error: str) -> tuple[int, str, bytes]:
    return ev(seq, history.ActivityFailed("unit-p-echo", error))


def test_three_activities_are_scheduled_in_one_step_and_waited_for_together() -> None:
    events = scheduled() + [done(2, "b")]
    out = run(fan, events, inp=False)
    assert out.status == "running" and out.commands == []
    assert out.waiting_for == "activity:unit-p-echo,activity:unit-p-echo"  # the two still pending


@pytest.mark.parametrize("order", [(1, 2, 3), (3, 1, 2), (2, 3, 1)])
def test_gather_returns_in_call_order_whatever_order_they_finished_in(order: tuple[int, int, int]) -> None:
    events = scheduled() + [done(seq, "abc"[seq - 1]) for seq in order]
    out = run(fan, events, inp=False)
    assert out.status == "completed" and msgspec.json.decode(out.output) == ["a", "b", "c"]


@pytest.mark.parametrize("fail_fast", [False, True])
def test_gather_raises_the_failure_recorded_first_on_every_replay(fail_fast: bool) -> None:
    events = scheduled() + [failed(3, "c first"), failed(1, "a second")]
    if not fail_fast:  # waits for all: still pending
        assert run(fan, events, inp=fail_fast).status == "running"
    events.append(done(2, "b"))
    outs = [run(fan, events, inp=fail_fast) for _ in range(2)]
    assert [msgspec.json.decode(o.output) for o in outs] == ["failed: c first"] * 2


def test_fail_fast_raises_as_soon_as_one_failed() -> None:
    events = scheduled() + [failed(2, "b broke")]
    out = run(fan, events, inp=True)
    assert out.status == "completed" and msgspec.json.decode(out.output) == "failed: b broke"


def test_a_child_gets_an_id_derived_from_the_parent_and_step() -> None:
    out = run(parent, [], inp=4)
    [cmd] = out.commands
    assert isinstance(cmd, StartChild) and cmd.workflow is kid and cmd.input == b"4"
    assert cmd.workflow_id == run(parent, [], inp=4).commands[0].workflow_id  # the same on every replay
    assert out.waiting_for == "child:unit-p-kid"
    opened = ev(1, history.ChildScheduled("unit-p-kid", cmd.workflow_id, msgspec.Raw(b"4")))
    ok = run(parent, [opened, ev(1, history.ChildCompleted(cmd.workflow_id, msgspec.Raw(b"5")))], inp=4)
    assert msgspec.json.decode(ok.output) == 5
    bad = run(parent, [opened, ev(1, history.ChildFailed(cmd.workflow_id, "cancelled", "cancelled"))], inp=4)
    assert msgspec.json.decode(bad.output) == "cancelled: cancelled"


def awaited() -> tuple[list[tuple[int, str, bytes]], AwaitSignal]:
    out = run(wait, [], inp=60)
    [cmd] = out.commands
    assert isinstance(cmd, AwaitSignal) and cmd.fire_at == NOW + timedelta(seconds=60)
    assert out.waiting_for == "signal:ok"
    return [ev(1, history.SignalAwaited("ok", cmd.timer_id, cmd.fire_at, 60.0))], cmd


def test_a_signal_that_comes_first_wins_and_cancels_the_timer() -> None:
    events, cmd = awaited()
    signal = PendingSignal(uuid6.uuid7(), "ok", b'"yes"')
    out = run(wait, events, [signal], inp=60)
    assert [type(c) for c in out.commands] == [ConsumeSignal, CancelTimer]
    assert out.commands[1].timer_id == cmd.timer_id
    assert msgspec.json.decode(out.output) == "got yes"


def test_the_first_recorded_of_signal_and_timer_wins_on_every_replay() -> None:
    events, cmd = awaited()
    fired = ev(1, history.TimerFired(cmd.timer_id))
    received = ev(1, history.SignalReceived("ok", uuid6.uuid7(), msgspec.Raw(b'"late"')))
    timed_out = [run(wait, events + [fired, received], inp=60) for _ in range(2)]
    assert [msgspec.json.decode(o.output) for o in timed_out] == ["timeout after 60"] * 2
    signalled = [run(wait, events + [received, fired], inp=60) for _ in range(2)]
    assert [msgspec.json.decode(o.output) for o in signalled] == ["got late"] * 2


def test_a_signal_already_there_is_taken_without_a_timer() -> None:
    out = run(wait, [], [PendingSignal(uuid6.uuid7(), "ok", b'"early"')], inp=60)
    assert [type(c) for c in out.commands] == [ConsumeSignal]


def test_async_workflows_are_refused_at_decoration_and_async_activities_accepted() -> None:
    with pytest.raises(flows.ConfigurationError, match="must be a plain function, not async def"):
        @flows.workflow("unit-p-async")
        async def nope(ctx: flows.WorkflowContext, n: int) -> int:
            return n

    @flows.activity("unit-p-async-act")
    async def fine(ctx: flows.ActivityContext, n: int) -> int:
        return n

    assert fine.is_async and fine.output_type is int
    with pytest.raises(flows.ConfigurationError, match="generator functions are not supported"):
        @flows.activity("unit-p-gen-act")
        def gen(ctx: flows.ActivityContext, n: int) -> Any:
            yield n


def test_bad_arguments_are_refused_with_the_field_named() -> None:
    @flows.workflow("unit-p-bad-timeout")
    def bad(ctx: flows.WorkflowContext, what: str) -> Any:
        if what == "timeout":
            return ctx.wait_for_signal("x", timeout=-1)
        if what == "policy":
            return ctx.start_child(kid, 1, parent_close="linger")
        return ctx.gather(object())  # type: ignore[arg-type]

    errors = [run(bad, [], inp=w).error for w in ("timeout", "policy", "gather")]
    assert "timeout needs a number of seconds >= 0" in errors[0]
    assert "parent_close must be one of" in errors[1]
    assert "gather() takes handles" in errors[2]
