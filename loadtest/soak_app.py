"""The soak's workflow (``--app loadtest.soak_app``): a steady mix of what
the engine does, for hours.

Each ``lt-soak`` workflow runs an activity, sleeps on a short durable timer,
waits for the signal ``go`` with a timeout (the harness sends it to a share
of the workflows, the rest time out), then runs a second activity, which
fails its first attempt for a share of them (a retry), and a third, which
fails every attempt for another share (the workflow then fails, with a
dead letter).

Every attempt of an activity writes a row to ``lt_soak_effects`` in the
fleet's database (DATABASE_URL): its idempotency key, its attempt and
whether it succeeded. A key with two successful rows is an effect done
twice. The activities' timeout (start to close of one attempt) is
LT_SOAK_ACTIVITY_TIMEOUT seconds, read at import (the fleet's environment
sets it; default 3600).
"""

from __future__ import annotations

import os
import threading
from typing import Any

import msgspec
import psycopg

import flows

ACTIVITY_TIMEOUT_ENV = "LT_SOAK_ACTIVITY_TIMEOUT"
DEFAULT_ACTIVITY_TIMEOUT_SECONDS = 3600.0
ACTIVITY_TIMEOUT_SECONDS = float(os.environ.get(ACTIVITY_TIMEOUT_ENV, DEFAULT_ACTIVITY_TIMEOUT_SECONDS))
GO_SIGNAL = "go"
RETRY = flows.RetryPolicy(initial_interval=0.1, backoff=2.0, max_interval=1.0, max_attempts=3)
EVERY_ATTEMPT = RETRY.max_attempts  # Step.failures that fails them all

LEDGER_TABLE = "lt_soak_effects"
LEDGER_SQL = (
    "CREATE TABLE lt_soak_effects (key text NOT NULL, attempt int NOT NULL, ok boolean NOT NULL,"
    " pid int NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())"
)


class Order(msgspec.Struct, frozen=True):
    n: int
    timer_seconds: float
    signal_timeout: float
    flaky: bool = False  # the second activity fails its first attempt
    doomed: bool = False  # the third fails every attempt: the workflow fails


class Step(msgspec.Struct, frozen=True):
    n: int
    failures: int = 0  # attempts that fail before one succeeds


class PlannedFailure(Exception):
    """An attempt the soak fails on purpose."""


# The ledger's connections, a few per worker process (one per activity
# running at once at most), reused: attempts run on threads of their own.
_lock = threading.Lock()
_idle: list[psycopg.Connection[Any]] = []
_owner = os.getpid()


def _record(key: str, attempt: int, ok: bool) -> None:
    global _owner
    with _lock:
        if _owner != os.getpid():  # forked: the parent's connections are not ours
            _idle.clear()
            _owner = os.getpid()
        conn = _idle.pop() if _idle else None
    if conn is None or conn.closed:
        conn = psycopg.connect(os.environ["DATABASE_URL"], autocommit=True)
    try:
        conn.execute("INSERT INTO lt_soak_effects (key, attempt, ok, pid) VALUES (%s, %s, %s, %s)",
                     (key, attempt, ok, os.getpid()))
    except BaseException:
        conn.close()  # the attempt fails and its retry records afresh
        raise
    with _lock:
        _idle.append(conn)


@flows.activity("lt-soak-effect", retry=RETRY, timeout=ACTIVITY_TIMEOUT_SECONDS)
def effect(ctx: flows.ActivityContext, step: Step) -> int:
    ok = ctx.attempt > step.failures
    _record(ctx.idempotency_key, ctx.attempt, ok)
    if not ok:
        raise PlannedFailure(f"step {step.n}: attempt {ctx.attempt} fails on purpose")
    return step.n + 1


@flows.workflow("lt-soak")
def soak(ctx: flows.WorkflowContext, order: Order) -> dict[str, Any]:
    n = ctx.activity(effect, Step(order.n))
    ctx.sleep(order.timer_seconds)
    try:
        ctx.wait_for_signal(GO_SIGNAL, timeout=order.signal_timeout)
        signalled = True
    except flows.Timeout:
        signalled = False
    n = ctx.activity(effect, Step(n, 1 if order.flaky else 0))
    n = ctx.activity(effect, Step(n, EVERY_ATTEMPT if order.doomed else 0))
    return {"n": n, "signalled": signalled}


def create_ledger(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(LEDGER_SQL)


def ledger_counts(dsn: str) -> dict[str, int]:
    """What the ledger holds: successful effects, failed attempts, and keys
    whose effect succeeded more than once (duplicates)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE ok), count(*) FILTER (WHERE NOT ok),"
            " (SELECT count(*) FROM (SELECT key FROM lt_soak_effects WHERE ok GROUP BY key HAVING count(*) > 1) d)"
            " FROM lt_soak_effects"
        ).fetchone()
    assert row is not None
    return {"effects": int(row[0]), "failed_attempts": int(row[1]), "duplicated": int(row[2])}
