"""The client API for asyncio applications (FastAPI, aiohttp...).

``AsyncEngine`` does what ``Engine`` does, on psycopg's async connections:
the same validation, the same statements (``store.Statement``, run with
``store.arun``), the same answers; only the waiting is awaited.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from uuid import UUID

from flows import metrics, sharding, store
from flows.definitions import WorkflowDefinition
from flows.engine import (
    Execution,
    WorkflowStatus,
    cancelled,
    ended,
    locate,
    result_wait,
    settings,
    signal_request,
    signal_with_start_request,
    signalled_start,
    start_request,
    started,
    workflow_status,
)
from flows.errors import InvalidInput
from flows.ids import tenant as _tenant
from flows.store import client as client_store


class AsyncEngine:
    """``Engine``'s client calls as coroutines, on a psycopg
    ``AsyncConnectionPool`` (opened in the running loop on first use, or
    the caller's own, open one). ``result()`` awaits the workflow's end
    notification without blocking the loop. Use ``async with
    AsyncEngine(dsn) as engine:`` or ``await engine.close()``."""

    def __init__(self, dsn_or_pool: Any, shards: int | None = None, *, pool_size: int | None = None) -> None:
        self.shards, self.pool_size = settings(shards, pool_size)
        metrics.enable()
        self._ours = isinstance(dsn_or_pool, str)
        if isinstance(dsn_or_pool, str):
            self.dsn = dsn_or_pool
            self._pool: Any = None
        else:
            self.dsn = dsn_or_pool.conninfo
            self._pool = dsn_or_pool
        self._opening = asyncio.Lock()

    async def pool(self) -> Any:
        if self._pool is None:
            async with self._opening:
                if self._pool is None:
                    pool = store.open_async_pool(self.dsn, max_size=self.pool_size)
                    with store.wrapped():
                        await pool.open()
                    self._pool = pool
        return self._pool

    async def close(self) -> None:
        """Close the pool this engine opened (a caller's own pool is left open)."""
        if self._ours and self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def __aenter__(self) -> AsyncEngine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _run(self, statement: store.Statement[Any]) -> Any:
        pool = await self.pool()
        with store.wrapped():
            async with pool.connection() as conn:
                return await store.arun(conn, statement)

    def _locate(self, workflow_name: object, workflow_id: object) -> tuple[str, UUID, str]:
        return locate(self.shards, workflow_name, workflow_id)

    async def start(
        self, workflow: WorkflowDefinition[Any, Any], inp: Any = None, *, tenant_id: object = None,
        workflow_id: object = None, timeout: float | None = None,
    ) -> Execution:
        """As ``Engine.start`` (without ``conn``)."""
        statement, execution = start_request(self.shards, workflow, inp, tenant_id, workflow_id, timeout)
        return started(execution, await self._run(statement))

    async def signal_with_start(
        self, workflow: WorkflowDefinition[Any, Any], inp: Any, signal_name: str, payload: Any = None, *,
        workflow_id: object, tenant_id: object = None, timeout: float | None = None,
    ) -> Execution:
        """As ``Engine.signal_with_start``."""
        if workflow_id is None:
            raise InvalidInput("signal_with_start needs a workflow_id", path="workflow_id")
        statement, execution = signal_with_start_request(
            self.shards, workflow, inp, signal_name, payload, tenant_id, workflow_id, timeout)
        return signalled_start(execution, await self._run(statement))

    async def send_signal(
        self, workflow_name: str, workflow_id: object, signal_name: str, payload: Any = None, *,
        tenant_id: object = None, dedup_key: str | None = None, only_if_waiting: bool = False,
    ) -> UUID:
        """As ``Engine.send_signal`` (``dedup_key`` and ``only_if_waiting`` included)."""
        request = signal_request(self, workflow_name, workflow_id, signal_name, payload, tenant_id,
                                 dedup_key=dedup_key, only_if_waiting=only_if_waiting)
        return request.answer(await self._run(request.statement))

    async def query(self, workflow_name: str, workflow_id: object, *, tenant_id: object = None) -> WorkflowStatus:
        """As ``Engine.query``."""
        name, wid, shard = self._locate(workflow_name, workflow_id)
        row = await self._run(client_store.workflow_statement(shard, wid, _tenant(tenant_id)))
        waits = row.waiting_for or "" if row is not None else ""
        activities = await self._run(client_store.pending_activities(shard, wid)) if "activity:" in waits else []
        rejected = await self._run(client_store.rejected_signals(shard, wid)) if "signal:" in waits else []
        return workflow_status(name, wid, row, activities, rejected)

    async def cancel(self, workflow_name: str, workflow_id: object, *, tenant_id: object = None) -> bool:
        """As ``Engine.cancel``."""
        name, wid, shard = self._locate(workflow_name, workflow_id)
        return cancelled(name, wid, await self._run(client_store.cancel_workflow(shard, wid, _tenant(tenant_id))))

    async def result(
        self, workflow_name: str, workflow_id: object, *, timeout: float | None = None, tenant_id: object = None
    ) -> Any:
        """As ``Engine.result``: await the workflow's end (its NOTIFY, on a
        connection of its own) and return its output, or raise
        WorkflowFailed, or TimeoutError after ``timeout`` s."""
        name, wid, shard = self._locate(workflow_name, workflow_id)
        tenant = _tenant(tenant_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        with store.wrapped():
            listen = await store.connect_async(self.dsn)
            try:
                await store.listen_async(listen, [sharding.channel(shard, "flows-done")])
                await store.arun(listen, client_store.result_waiter_statement(shard, wid, tenant, +1))
                try:
                    while True:
                        row = await store.arun(listen, client_store.workflow_statement(shard, wid, tenant))
                        done, value = ended(name, wid, row)
                        if done:
                            return value
                        await store.wait_notify_async(listen, result_wait(name, wid, row, deadline, timeout))
                finally:
                    if not listen.closed:
                        await store.arun(listen, client_store.result_waiter_statement(shard, wid, tenant, -1))
            finally:
                await listen.close()
