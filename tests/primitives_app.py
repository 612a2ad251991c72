"""Workflows and activities of the primitives' tests (parallel activities,
children, timeouts, signal-with-start, schedules, async activities), run
in-process or in worker subprocesses (``flows worker --app
tests.primitives_app``). Activities that must be counted write to the
``ledger`` table of tests.engine_app."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import flows
from tests.engine_app import FAST_RETRY, ledger


@flows.activity("p-sleep", retry=FAST_RETRY, timeout=5.0)
def nap(ctx: flows.ActivityContext, job: list[Any]) -> str:
    """[name, seconds]: sleeps, and hangs in a process told to hang on ``name``."""
    name, seconds = job
    ledger(f"{ctx.idempotency_key}:{name}", ctx.attempt, f"pid={os.getpid()}")
    if os.environ.get("PRIM_HANG_ON") == name:
        time.sleep(60)
    time.sleep(seconds)
    return f"{name} done"


@flows.activity("p-fail", retry=flows.RetryPolicy(initial_interval=0.05, max_attempts=1, jitter=0.0))
def fail(ctx: flows.ActivityContext, job: list[Any]) -> str:
    name, seconds = job
    time.sleep(seconds)
    raise RuntimeError(f"{name} is down")


@flows.workflow("p-fan-out")
def fan_out(ctx: flows.WorkflowContext, jobs: list[list[Any]]) -> list[str]:
    handles = [ctx.start_activity(nap, job) for job in jobs]
    return ctx.gather(*handles)


@flows.workflow("p-fan-out-failing")
def fan_out_failing(ctx: flows.WorkflowContext, fail_fast: bool) -> str:
    handles = [ctx.start_activity(fail, ["late", 1.0]), ctx.start_activity(fail, ["early", 0.0]),
               ctx.start_activity(nap, ["ok", 0.0])]
    try:
        ctx.gather(*handles, fail_fast=fail_fast)
    except flows.ActivityFailed as exc:
        return exc.error
    return "no failure"


@flows.workflow("p-child")
def child(ctx: flows.WorkflowContext, job: list[Any]) -> str:
    """[name, how]: how = "ok", "fail", or "wait" (for signal "go")."""
    name, how = job
    if how == "wait":
        ctx.wait_for_signal("go")
    if how == "fail":
        raise ValueError(f"child {name} refuses")
    return f"{name} by child"


@flows.workflow("p-parent")
def parent(ctx: flows.WorkflowContext, hows: list[str]) -> list[str]:
    handles = [ctx.start_child(child, [f"c{i}", how]) for i, how in enumerate(hows)]
    out = []
    for h in handles:
        try:
            out.append(h.result())
        except flows.ChildWorkflowFailed as exc:
            out.append(f"failed: {exc.error}")
    return out


@flows.workflow("p-parent-waits")
def parent_waits(ctx: flows.WorkflowContext, policy: str) -> str:
    """Starts a child that waits for a signal, then waits for signal "end" itself."""
    ctx.start_child(child, ["waiter", "wait"], parent_close=policy)
    ctx.wait_for_signal("end")
    return "parent ended"


@flows.workflow("p-approval")
def approval(ctx: flows.WorkflowContext, seconds: float) -> str:
    try:
        who = ctx.wait_for_signal("approve", type=str, timeout=seconds)
    except flows.Timeout:
        return "timed out"
    return f"approved by {who}"


@flows.workflow("p-forever")
def forever(ctx: flows.WorkflowContext, _: Any) -> str:
    ctx.start_activity(nap, ["pending", 3.0])
    ctx.wait_for_signal("never")
    return "unreachable"


@flows.workflow("p-inbox")
def inbox(ctx: flows.WorkflowContext, expected: int) -> list[Any]:
    return [ctx.wait_for_signal("item") for _ in range(expected)]


@flows.workflow("p-history-length")
def history_length(ctx: flows.WorkflowContext, _: Any) -> list[int]:
    """How many events the replay has (the worker's memory of the workflow
    must not count any twice)."""
    seen = [ctx.history_length]
    ctx.activity(nap, ["h", 0.0])
    seen.append(ctx.history_length)
    ctx.wait_for_signal("go")
    seen.append(ctx.history_length)
    return seen


@flows.workflow("p-tick")
def tick(ctx: flows.WorkflowContext, label: str) -> str:
    return label


@flows.workflow("p-slow-tick")
def slow_tick(ctx: flows.WorkflowContext, seconds: float) -> str:
    ctx.sleep(seconds)
    return "slept"


@flows.activity("p-async-nap", retry=FAST_RETRY, timeout=5.0)
async def async_nap(ctx: flows.ActivityContext, job: list[Any]) -> str:
    name, seconds = job
    await asyncio.sleep(seconds)
    ctx.heartbeat({"name": name})
    return f"{name} awaited on {ctx.attempt}"


@flows.activity("p-async-stuck", retry=flows.RetryPolicy(initial_interval=0.05, max_attempts=2, jitter=0.0),
                timeout=0.5)
async def async_stuck(ctx: flows.ActivityContext, name: str) -> str:
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        ledger(f"{ctx.idempotency_key}:cancelled", ctx.attempt, name)
        raise
    return "unreachable"


@flows.workflow("p-async-fan-out")
def async_fan_out(ctx: flows.WorkflowContext, n: int) -> list[str]:
    return ctx.gather(*[ctx.start_activity(async_nap, [f"a{i}", 1.0]) for i in range(n)])


@flows.workflow("p-async-stuck")
def async_stuck_workflow(ctx: flows.WorkflowContext, _: Any) -> str:
    try:
        return ctx.activity(async_stuck, "stuck")
    except flows.ActivityFailed as exc:
        return f"{exc.attempts}: {exc.error}"


ALL_WORKFLOWS = [fan_out, fan_out_failing, child, parent, parent_waits, approval, forever, inbox, history_length,
                 tick, slow_tick,
                 async_fan_out, async_stuck_workflow]
ALL_ACTIVITIES = [nap, fail, async_nap, async_stuck]
