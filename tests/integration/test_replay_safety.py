"""Replays: never twice at once, never re-running what is recorded, and
loud when the code no longer matches the history."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import pytest

import flows
from flows import Engine, Worker
from tests.engine_app import Job, record, three_steps

# Every test here runs with workflows replayed, and with them parked in memory.
pytestmark = pytest.mark.usefixtures("replay_mode")

_active: Counter[Any] = Counter()
_overlaps: list[Any] = []
_replays: Counter[Any] = Counter()
_guard = threading.Lock()


@contextmanager
def running(ctx: flows.WorkflowContext) -> Iterator[None]:
    """Notes any moment two workers run code of one workflow at once (the
    code between two waits: replayed from the top, or resumed in memory)."""
    with _guard:
        _active[ctx.workflow_id] += 1
        _replays[ctx.workflow_id] += 1
        if _active[ctx.workflow_id] > 1:
            _overlaps.append(ctx.workflow_id)
    try:
        time.sleep(0.002)  # widen the window a second replay would need
        yield
    finally:
        with _guard:
            _active[ctx.workflow_id] -= 1


@flows.workflow("t-exclusive")
def exclusive(ctx: flows.WorkflowContext, rounds: int) -> int:
    total = 0
    for i in range(rounds):
        with running(ctx):
            pass
        ctx.activity(record, f"round-{i}")
        with running(ctx):
            pass
        total += ctx.wait_for_signal("tick", type=int)
    return total


def test_two_workers_on_the_same_shards_never_replay_one_workflow_at_once(
    engine: Engine, start_worker: Callable[..., Worker], ledger: Any
) -> None:
    for _ in range(2):
        start_worker([exclusive], [record], concurrency=4)
    runs = [engine.start(exclusive, 6) for _ in range(6)]
    # Redundant wake-ups (due tasks with no timer behind them) invite both
    # workers to replay the same workflow at the same moment.
    ledger.execute(
        "INSERT INTO task_queue (workflow_name, id, workflow_id, tenant_id, task_type)"
        " SELECT name, gen_random_uuid(), id, tenant_id, 'timer' FROM workflows, generate_series(1, 15)"
    )

    def feed(run: flows.Execution) -> None:
        for i in range(6):
            engine.send_signal(run.workflow_name, run.workflow_id, "tick", i)

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(feed, runs))
    for run in runs:
        assert engine.result(run.workflow_name, run.workflow_id, timeout=30) == 15
    assert sum(_replays[r.workflow_id] for r in runs) >= 6 * 7  # there was contention to be had
    assert _overlaps == []


_path = {"variant": "original"}


@flows.workflow("t-evolving")
def evolving(ctx: flows.WorkflowContext, inp: None) -> str:
    if _path["variant"] == "original":
        ctx.activity(record, "first")
    else:
        ctx.sleep(1)  # a deploy changed the code under a running workflow
    ctx.wait_for_signal("go")
    return "done"


def test_code_changed_under_a_running_workflow_fails_it_with_non_determinism(
    engine: Engine, start_worker: Callable[..., Worker], ledger: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = start_worker([evolving], [record])
    run = engine.start(evolving, None)
    deadline = time.monotonic() + 10
    while engine.query(run.workflow_name, run.workflow_id).waiting_for != "signal:go":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    old.stop()  # a deploy: new worker processes with the changed code
    monkeypatch.setitem(_path, "variant", "changed")
    start_worker([evolving], [record])
    engine.send_signal(run.workflow_name, run.workflow_id, "go", None)
    with pytest.raises(flows.WorkflowFailed, match="NonDeterminismError: step 1: history recorded activity 't-record', the code now asks for timer"):
        engine.result(run.workflow_name, run.workflow_id, timeout=10)
    assert ledger.execute("SELECT count(*) FROM dead_letter_queue WHERE workflow_id = %s",
                          (run.workflow_id,)).fetchone() == (1,)
    assert ledger.execute("SELECT count(*) FROM timers").fetchone() == (0,)  # the new path wrote nothing


def test_replays_never_run_a_completed_activity_again(engine: Engine, worker: Any, ledger: Any) -> None:
    runs = [engine.start(three_steps, Job(f"r{i}", sleep_seconds=0.05)) for i in range(5)]
    for run in runs:
        engine.send_signal(run.workflow_name, run.workflow_id, "go", {})
    for run in runs:
        engine.result(run.workflow_name, run.workflow_id, timeout=15)
    executions = Counter(step for (step,) in ledger.execute("SELECT step FROM ledger"))
    assert sorted(executions) == sorted(f"{r.workflow_id}:{seq}" for r in runs for seq in (1, 5))
    assert set(executions.values()) == {1}
