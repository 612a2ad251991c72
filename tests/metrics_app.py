"""Workflows the metrics tests run in real worker processes
(``flows worker --app tests.metrics_app``): an order that waits for a
signal, runs an activity, sleeps on a timer and runs a flaky activity
(which fails its first attempt); and one whose activity always fails, so
the workflow fails and writes a dead letter."""

from __future__ import annotations

import flows

QUICK = flows.RetryPolicy(initial_interval=0.05, backoff=1.0, max_interval=0.05, max_attempts=2, jitter=0.0)


@flows.activity("m-work", retry=QUICK)
def work(ctx: flows.ActivityContext, n: int) -> int:
    return n + 1


@flows.activity("m-flaky", retry=QUICK)
def flaky(ctx: flows.ActivityContext, n: int) -> int:
    if ctx.attempt == 1:
        raise RuntimeError("first attempts fail")
    return n * 2


@flows.activity("m-broken", retry=QUICK)
def broken(ctx: flows.ActivityContext, n: int) -> int:
    raise RuntimeError("always fails")


@flows.workflow("m-order")
def order(ctx: flows.WorkflowContext, n: int) -> int:
    ctx.wait_for_signal("go")
    n = ctx.activity(work, n)
    ctx.sleep(0.2)
    return ctx.activity(flaky, n)


@flows.workflow("m-doomed")
def doomed(ctx: flows.WorkflowContext, n: int) -> int:
    return ctx.activity(broken, n)


@flows.workflow("m-nap")
def nap(ctx: flows.WorkflowContext, seconds: float) -> str:
    ctx.sleep(seconds)
    return "rested"


WORKFLOWS = [order, doomed, nap]
