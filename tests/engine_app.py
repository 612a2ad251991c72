"""Workflows and activities the engine tests run, in-process or in worker
subprocesses (``flows worker --app tests.engine_app``).

Activities that must be counted write to a ``ledger`` table of the test's
database (``LEDGER_DSN``, from DATABASE_URL in a subprocess)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import msgspec
import psycopg

import flows

LEDGER_DSN = os.environ.get("DATABASE_URL", "")
FAST_RETRY = flows.RetryPolicy(initial_interval=0.2, backoff=2.0, max_interval=5.0, max_attempts=3, jitter=0.0)
LEDGER_SQL = (
    "CREATE TABLE ledger (step text NOT NULL, attempt int NOT NULL, note text,"
    " at timestamptz NOT NULL DEFAULT clock_timestamp())"
)


def ledger(step: str, attempt: int, note: str = "") -> None:
    with psycopg.connect(LEDGER_DSN, autocommit=True) as conn:
        conn.execute("INSERT INTO ledger (step, attempt, note) VALUES (%s, %s, %s)", (step, attempt, note))


class Job(msgspec.Struct):
    name: str
    sleep_seconds: float = 0.3
    hold_seconds: float = 0.0  # how long the slow activity takes


def hang_if(phase: str, marker: str = "") -> None:
    """Block for a minute when this process was told to hang at ``phase`` (to be killed there)."""
    if os.environ.get("ENGINE_APP_HANG") == phase:
        if marker:
            Path(marker).touch()
        time.sleep(60)


@flows.activity("t-record", retry=FAST_RETRY, timeout=3.0)
def record(ctx: flows.ActivityContext, what: str) -> str:
    ledger(ctx.idempotency_key, ctx.attempt, what)
    return f"{what} done"


@flows.activity("t-flaky", retry=FAST_RETRY)
def flaky(ctx: flows.ActivityContext, what: str) -> str:
    ledger(ctx.idempotency_key, ctx.attempt, "flaky")
    if ctx.attempt < 3:
        raise ConnectionError(f"attempt {ctx.attempt} of {what} failed")
    return f"{what} finally"


@flows.activity("t-broken", retry=flows.RetryPolicy(initial_interval=0.05, max_attempts=2, jitter=0.0))
def broken(ctx: flows.ActivityContext, what: str) -> str:
    raise RuntimeError(f"{what} is down")


@flows.activity("t-slow", retry=FAST_RETRY, timeout=3.0)
def slow(ctx: flows.ActivityContext, seconds: float) -> str:
    ledger(ctx.idempotency_key, ctx.attempt, f"started pid={os.getpid()}")
    hang_if("activity")
    time.sleep(seconds)
    return "slow done"


@flows.activity("t-fatal", retry=flows.RetryPolicy(initial_interval=0.05, max_attempts=2, jitter=0.0), timeout=30)
def fatal(ctx: flows.ActivityContext, n: int) -> str:
    """Kills the process running it, as an out-of-memory kill would."""
    ledger(ctx.idempotency_key, ctx.attempt, f"dying pid={os.getpid()}")
    os.kill(os.getpid(), signal.SIGKILL)
    return "unreachable"


@flows.workflow("t-fatal")
def fatal_workflow(ctx: flows.WorkflowContext, n: int) -> str:
    try:
        return ctx.activity(fatal, n)
    except flows.ActivityFailed as exc:
        return f"gave up after {exc.attempts} attempts: {exc.error}"


@flows.workflow("t-three-steps")
def three_steps(ctx: flows.WorkflowContext, job: Job) -> dict[str, Any]:
    first = ctx.activity(record, f"{job.name}-1")
    go = ctx.wait_for_signal("go", type=dict)
    ctx.sleep(job.sleep_seconds)
    dice = ctx.random(8)
    second = ctx.activity(record, f"{job.name}-2")
    slow_result = ctx.activity(slow, job.hold_seconds) if job.hold_seconds else "skipped"
    return {"first": first, "go": go, "second": second, "slow": slow_result, "dice": list(dice),
            "at": ctx.now().isoformat(), "uuid": str(ctx.uuid7())}


@flows.workflow("t-flaky")
def flaky_workflow(ctx: flows.WorkflowContext, what: str) -> str:
    return ctx.activity(flaky, what)


@flows.workflow("t-broken")
def broken_workflow(ctx: flows.WorkflowContext, catch: bool) -> str:
    if not catch:
        return ctx.activity(broken, "the bureau")
    try:
        return ctx.activity(broken, "the bureau")
    except flows.ActivityFailed as exc:
        return f"fallback after {exc.attempts} attempts: {exc.error}"


@flows.workflow("t-sleeper")
def sleeper(ctx: flows.WorkflowContext, seconds: float) -> str:
    ctx.sleep(seconds)
    return ctx.now().isoformat()


@flows.workflow("t-hold")
def hold(ctx: flows.WorkflowContext, seconds: float) -> str:
    return ctx.activity(slow, seconds)


@flows.workflow("t-documents")
def documents(ctx: flows.WorkflowContext, kinds: list[str]) -> list[Any]:
    return [ctx.wait_for_signal(f"doc-{kind}") for kind in kinds]


@flows.workflow("t-slow-replay")
def slow_replay(ctx: flows.WorkflowContext, marker: str) -> str:
    """Hangs inside a replay when told to: in the first workflow task
    (``start``) or in the transaction recording an activity (``replay``)."""
    hang_if("start", marker)
    first = ctx.activity(record, "before")
    hang_if("replay", marker)
    return first + " then finished"


@flows.activity("t-long", timeout=300.0)  # a lease far longer than any test waits
def long_running(ctx: flows.ActivityContext, seconds: float) -> str:
    ledger(ctx.idempotency_key, ctx.attempt, f"started pid={os.getpid()}")
    hang_if("long")
    time.sleep(seconds)
    return f"ran {seconds}s in pid {os.getpid()}"


@flows.workflow("t-long")
def long_workflow(ctx: flows.WorkflowContext, seconds: float) -> str:
    return ctx.activity(long_running, seconds)


ALL_WORKFLOWS = [three_steps, flaky_workflow, broken_workflow, sleeper, hold, documents, slow_replay, long_workflow]
ALL_ACTIVITIES = [record, flaky, broken, slow, long_running]
