"""The workflows the load tests run (``--app loadtest.app``)."""

from __future__ import annotations

import flows

NO_RETRY_WAIT = flows.RetryPolicy(initial_interval=0.1, max_attempts=3)
GO_SIGNAL = "go"


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
    ctx.wait_for_signal(GO_SIGNAL)
    return ctx.activity(step, n)


@flows.workflow("lt-wakeup")
def wakeup(ctx: flows.WorkflowContext, n: int) -> int:
    """Consumes the signal and completes in one transaction, whose commit
    announces itself on the shard's ``flows-done`` channel: the wake-up
    scenario times signal commit to that commit from the client side."""
    ctx.wait_for_signal(GO_SIGNAL)
    return n


@flows.workflow("lt-sleep")
def sleep(ctx: flows.WorkflowContext, seconds: float) -> str:
    ctx.sleep(seconds)
    return "woke"


@flows.workflow("lt-long")
def long_loop(ctx: flows.WorkflowContext, steps: int) -> int:
    """One activity after another, ``steps`` times: a long history."""
    n = 0
    for _ in range(steps):
        n = ctx.activity(step, n)
    return n


@flows.workflow("lt-one-step")
def one_step(ctx: flows.WorkflowContext, n: int) -> int:
    """One activity: the fairness scenario's workflow, for every tenant."""
    return ctx.activity(step, n)
