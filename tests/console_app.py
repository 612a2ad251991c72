"""Workflows the console, CLI and operations tests run in-process: their
behaviour is switched by module globals (``SWITCH``) between runs, as a
deploy would change code under a failed or running workflow."""

from __future__ import annotations

import os
from typing import Any

import flows

# CONSOLE_APP_SWITCH=other_path,... sets switches in a subprocess (flows replay --app tests.console_app).
SWITCH: dict[str, bool] = {k: k in os.environ.get("CONSOLE_APP_SWITCH", "").split(",")
                           for k in ("healthy", "fixed", "other_path")}
QUICK = flows.RetryPolicy(initial_interval=0.05, backoff=1.0, max_interval=0.05, max_attempts=2, jitter=0.0)


@flows.activity("c-fragile", retry=QUICK, timeout=5.0)
def fragile(ctx: flows.ActivityContext, what: str) -> str:
    if not SWITCH["healthy"]:
        raise ConnectionError(f"{what}: service down")
    return f"{what} ok (attempt {ctx.attempt})"


@flows.activity("c-echo", timeout=5.0)
def echo(ctx: flows.ActivityContext, what: str) -> str:
    return what


@flows.workflow("c-fragile")
def fragile_workflow(ctx: flows.WorkflowContext, what: str) -> str:
    first = ctx.activity(echo, "before")
    return first + " / " + ctx.activity(fragile, what)


@flows.workflow("c-buggy")
def buggy_workflow(ctx: flows.WorkflowContext, what: str) -> dict[str, Any]:
    lucky = ctx.random(2)
    if not SWITCH["fixed"]:
        raise ValueError(f"bug in {what}")
    return {"what": what, "lucky": list(lucky)}


@flows.workflow("c-path")
def path_workflow(ctx: flows.WorkflowContext, what: str) -> str:
    """Replays differently (step 1) while SWITCH['other_path'] is set."""
    first = ctx.activity(fragile if SWITCH["other_path"] else echo, what)
    go = ctx.wait_for_signal("go")
    return f"{first} {go}"


@flows.workflow("c-wait")
def wait_workflow(ctx: flows.WorkflowContext, seconds: float) -> str:
    ctx.sleep(seconds)
    return str(ctx.wait_for_signal("go"))


WORKFLOWS = [fragile_workflow, buggy_workflow, path_workflow, wait_workflow]
ACTIVITIES = [fragile, echo]
