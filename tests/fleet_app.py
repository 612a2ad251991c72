"""Workflows and activities the supervisor tests run in real worker
processes (``python -m supervisor --app tests.fleet_app``).

The ``effect`` activity stands for a call to an external system: it writes
one row per ``ctx.idempotency_key`` to ``fleet_ledger`` (a second run of the
same step finds the key taken), and counts every attempt in
``fleet_attempts``. Both tables live in the test's database (DATABASE_URL).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import msgspec
import psycopg

import flows

# Start-up failures on demand, for the supervisor's tests: exit with a code
# while importing (before the worker reports ready), or fail to import at all
# while a marker file exists (a broken deploy).
if os.environ.get("FLEET_APP_EXIT_AT_IMPORT"):
    os._exit(int(os.environ["FLEET_APP_EXIT_AT_IMPORT"]))
_broken_marker = os.environ.get("FLEET_APP_BROKEN_IF")
if _broken_marker and os.path.exists(_broken_marker):
    raise ImportError("tests.fleet_app is broken (marker file present)")
# Which "release" of the code this process imported (SIGHUP must load the new one).
_release_file = os.environ.get("FLEET_APP_RELEASE_FILE")
RELEASE = open(_release_file).read().strip() if _release_file else "none"

LEDGER_SQL = (
    "CREATE TABLE fleet_ledger (key text PRIMARY KEY, n int NOT NULL, step text NOT NULL, pid int NOT NULL,"
    " at timestamptz NOT NULL DEFAULT clock_timestamp());"
    " CREATE TABLE fleet_attempts (key text NOT NULL, pid int NOT NULL,"
    " at timestamptz NOT NULL DEFAULT clock_timestamp())"
)
QUICK_RETRY = flows.RetryPolicy(initial_interval=0.05, backoff=2.0, max_interval=0.5, max_attempts=3, jitter=0.0)
PATIENT_RETRY = flows.RetryPolicy(initial_interval=0.1, backoff=2.0, max_interval=1.0, max_attempts=8, jitter=0.0)

_local = threading.local()


def _conn() -> psycopg.Connection[Any]:
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed or getattr(_local, "pid", None) != os.getpid():
        conn = _local.conn = psycopg.connect(os.environ["DATABASE_URL"], autocommit=True)
        _local.pid = os.getpid()
    return conn


def _execute(query: str, params: tuple[Any, ...]) -> None:
    try:
        _conn().execute(query, params)  # type: ignore[arg-type]
    except psycopg.OperationalError:  # an idle connection the server closed (restarted): once more, afresh
        _local.conn = None
        _conn().execute(query, params)  # type: ignore[arg-type]


class Order(msgspec.Struct, frozen=True):
    n: int
    work_seconds: float = 0.05  # how long each effect takes
    sleep_seconds: float = 0.1  # the durable sleep between steps
    signal: bool = True  # wait for a "go" signal after the first step


class Step(msgspec.Struct, frozen=True):
    n: int
    step: str
    work_seconds: float


@flows.activity("fleet-effect", retry=PATIENT_RETRY, timeout=10.0)
def effect(ctx: flows.ActivityContext, step: Step) -> str:
    key = ctx.idempotency_key
    _execute("INSERT INTO fleet_attempts (key, pid) VALUES (%s, %s)", (key, os.getpid()))
    time.sleep(step.work_seconds)
    _execute(
        "INSERT INTO fleet_ledger (key, n, step, pid) VALUES (%s, %s, %s, %s) ON CONFLICT (key) DO NOTHING",
        (key, step.n, step.step, os.getpid()),
    )
    return f"{step.step}-{step.n}"


@flows.workflow("fleet-order")
def order(ctx: flows.WorkflowContext, o: Order) -> dict[str, Any]:
    reserved = ctx.activity(effect, Step(o.n, "reserve", o.work_seconds))
    go = ctx.wait_for_signal("go") if o.signal else None
    ctx.sleep(o.sleep_seconds)
    charged = ctx.activity(effect, Step(o.n, "charge", o.work_seconds))
    shipped = ctx.activity(effect, Step(o.n, "ship", o.work_seconds))
    return {"n": o.n, "steps": [reserved, charged, shipped], "go": go}


def expected_output(o: Order, go: Any = None) -> dict[str, Any]:
    return {"n": o.n, "steps": [f"reserve-{o.n}", f"charge-{o.n}", f"ship-{o.n}"], "go": go}


@flows.workflow("fleet-crash")
def crash(ctx: flows.WorkflowContext, n: int) -> str:
    ctx.sleep(0.05)
    raise RuntimeError(f"bug in workflow code {n}")


@flows.activity("fleet-always-fails", retry=QUICK_RETRY)
def always_fails(ctx: flows.ActivityContext, n: int) -> str:
    raise ConnectionError(f"downstream {n} is down")


@flows.workflow("fleet-poison")
def poison(ctx: flows.WorkflowContext, n: int) -> str:
    return ctx.activity(always_fails, n)


@flows.activity("fleet-release")
def release_activity(ctx: flows.ActivityContext, _: None) -> str:
    return RELEASE


@flows.workflow("fleet-release")
def release_workflow(ctx: flows.WorkflowContext, _: None) -> str:
    return ctx.activity(release_activity, None)


@flows.activity("fleet-hold", timeout=300.0)  # a lease far longer than any test waits
def hold(ctx: flows.ActivityContext, seconds: float) -> str:
    _execute("INSERT INTO fleet_attempts (key, pid) VALUES (%s, %s)", (ctx.idempotency_key, os.getpid()))
    time.sleep(seconds)
    return f"held {seconds}s"


@flows.workflow("fleet-hold")
def hold_workflow(ctx: flows.WorkflowContext, seconds: float) -> str:
    return ctx.activity(hold, seconds)
