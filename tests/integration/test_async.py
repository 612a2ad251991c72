"""async def activities on the worker's event loop, and flows.AsyncEngine."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import pytest
import uuid6

import flows
from flows import Engine, Worker
from tests import primitives_app
from tests.integration.test_crashes import wait_until
from tests.primitives_app import async_fan_out, async_stuck_workflow, inbox


@pytest.fixture
def workers(start_worker: Callable[..., Worker], ledger: Any) -> Worker:
    return start_worker(primitives_app.ALL_WORKFLOWS, primitives_app.ALL_ACTIVITIES, concurrency=8)


def test_async_activities_run_at_once_on_the_event_loop(engine: Engine, workers: Worker, db: Any) -> None:
    run = engine.start(async_fan_out, 5)
    assert engine.result(run.workflow_name, run.workflow_id, timeout=30) == [f"a{i} awaited on 1" for i in range(5)]
    rows = db.execute("SELECT started_at, completed_at, heartbeat_details->>'name' FROM activities"
                      " WHERE workflow_id = %s ORDER BY sequence_num", (run.workflow_id,)).fetchall()
    assert max(s for s, _, _ in rows) < min(e for _, e, _ in rows)  # all five were running at once
    assert [name for _, _, name in rows] == [f"a{i}" for i in range(5)]  # heartbeats reached the database


def test_an_async_attempt_past_its_timeout_is_cancelled_and_retried(
    engine: Engine, workers: Worker, ledger: Any
) -> None:
    run = engine.start(async_stuck_workflow, None)
    out = engine.result(run.workflow_name, run.workflow_id, timeout=30)
    assert out == "2: TimeoutError: attempt 2 ran past its timeout of 0.5s"
    # each attempt's task was cancelled at its timeout (the last one's handler may still be running)
    wait_until(lambda: ledger.execute("SELECT array_agg(attempt ORDER BY attempt) FROM ledger"
                                      " WHERE step LIKE '%:cancelled'").fetchone() == ([1, 2],))


def test_the_async_engine_does_what_the_engine_does_without_blocking_the_loop(
    db_url: str, workers: Worker
) -> None:
    async def main() -> None:
        async with flows.AsyncEngine(db_url, shards=3) as engine:
            wid = uuid6.uuid7()
            first = await engine.signal_with_start(inbox, 2, "item", "x", workflow_id=wid)
            assert first.created
            status = await engine.query(inbox.name, wid)
            assert status.status == "running" and status.input == 2
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.05)
                    ticks += 1

            beating = asyncio.create_task(ticker())
            waiting = asyncio.create_task(engine.result(inbox.name, wid, timeout=30))
            await asyncio.sleep(0.5)
            assert not waiting.done() and ticks >= 5  # result() waits while the loop runs on
            await engine.send_signal(inbox.name, wid, "item", "y")
            assert await waiting == ["x", "y"]
            beating.cancel()
            with pytest.raises(flows.WorkflowNotRunning):
                await engine.send_signal(inbox.name, wid, "item", "z")
            other = await engine.start(inbox, 1)
            assert await engine.cancel(other.workflow_name, other.workflow_id)
            with pytest.raises(flows.WorkflowFailed, match="cancelled"):
                await engine.result(other.workflow_name, other.workflow_id, timeout=10)
            with pytest.raises(flows.WorkflowNotFound):
                await engine.query(inbox.name, uuid6.uuid7())
            with pytest.raises(TimeoutError):
                late = await engine.start(inbox, 1)
                await engine.result(late.workflow_name, late.workflow_id, timeout=0.3)

    asyncio.run(main())
