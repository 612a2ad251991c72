"""The workflows the load tests run (``--app loadtest.app``)."""

from __future__ import annotations

import flows

NO_RETRY_WAIT = flows.RetryPolicy(initial_interval=0.1, max_attempts=3)


@flows.activity("lt-step", retry=NO_RETRY_WAIT)
def step(ctx: flows.ActivityContext, n: int) -> int:
    return n + 1


@flows.workflow("lt-three-steps")
def three_steps(ctx: flows.WorkflowContext, n: int) -> int:
    for _ in range(3):
        n = ctx.activity(step, n)
    return n


@flows.workflow("lt-wait-signal")
def wait_signal(ctx: flows.WorkflowContext, n: int) -> int:
    ctx.wait_for_signal("go")
    return ctx.activity(step, n)


@flows.workflow("lt-sleep")
def sleep(ctx: flows.WorkflowContext, seconds: float) -> str:
    ctx.sleep(seconds)
    return "woke"
