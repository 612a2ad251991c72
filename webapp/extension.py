"""The flows engine as a Flask extension: one ``flows.Engine`` per app,
built on first use from the app's config.

Nothing connects at import or in ``create_app()``: the engine is made on the
first request and opens its pool in the process that uses it, so the app is
safe to build before gunicorn forks its workers.
"""

from __future__ import annotations

import hmac
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from flask import Flask, current_app

import flows
from flows import embedded

EXTENSION_KEY = "flows"
HEALTH_PROBE_NAME, HEALTH_PROBE_ID = "flows-healthz", UUID(int=0)  # no such workflow exists


def parse_api_keys(value: Any) -> dict[str, UUID]:
    """``"key1:tenant-uuid,key2:tenant-uuid"`` (or a mapping) as {key: tenant}.

    Empty means no authentication: every request runs as the default tenant."""
    if not value:
        return {}
    pairs = value.items() if isinstance(value, dict) else (
        item.split(":", 1) if ":" in item else (item, "") for item in str(value).split(",") if item.strip()
    )
    keys: dict[str, UUID] = {}
    for key, tenant in pairs:
        key = str(key).strip()
        try:
            tenant_id = UUID(str(tenant).strip())
        except ValueError:
            raise flows.ConfigurationError(
                f"FLOWS_API_KEYS: {tenant!r} is not a tenant UUID (expected key:tenant-uuid,...)"
            ) from None
        if not key:
            raise flows.ConfigurationError("FLOWS_API_KEYS: empty API key")
        if key in keys:
            raise flows.ConfigurationError("FLOWS_API_KEYS: an API key is listed twice")
        keys[key] = tenant_id
    return keys


@dataclass
class _State:
    database_url: str | None
    shards: int | None
    pool_size: int | None
    api_keys: dict[str, UUID]
    health_timeout_seconds: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    engine: flows.Engine | None = None
    probe_pid: int = 0
    probe_executor: ThreadPoolExecutor | None = None
    probe: Future[None] | None = None


class FlowsClient:
    """``client.engine`` is the current app's ``flows.Engine``."""

    def __init__(self, app: Flask | None = None) -> None:
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        cfg = app.config
        app.extensions[EXTENSION_KEY] = _State(
            database_url=cfg.get("DATABASE_URL") or None,
            shards=cfg.get("SHARDS"),
            pool_size=cfg.get("POOL_SIZE"),
            api_keys=parse_api_keys(cfg.get("API_KEYS")),
            health_timeout_seconds=float(cfg.get("HEALTH_TIMEOUT", 2.0)),
        )

    def close(self, app: Flask) -> None:
        """Close the app's engine pool (tests; a server just exits)."""
        state = self._state(app)
        with state.lock:
            if state.engine is not None:
                state.engine.close()
            if state.probe_executor is not None and state.probe_pid == os.getpid():
                state.probe_executor.shutdown(wait=False, cancel_futures=True)
            state.engine, state.probe_executor, state.probe = None, None, None

    @staticmethod
    def _state(app: Flask | None = None) -> _State:
        return (app or current_app).extensions[EXTENSION_KEY]  # type: ignore[no-any-return]

    @property
    def engine(self) -> flows.Engine:
        state = self._state()
        if state.engine is None:
            with state.lock:
                if state.engine is None:
                    dsn = state.database_url or embedded.database_url()
                    state.engine = flows.Engine(dsn, shards=state.shards, pool_size=state.pool_size)
        return state.engine

    def tenant_for(self, api_key: str | None) -> UUID | None:
        """The tenant of ``api_key`` (compared in constant time), or None."""
        found = None
        for key, tenant in self._state().api_keys.items():
            if api_key is not None and hmac.compare_digest(key.encode(), api_key.encode()):
                found = tenant
        return found

    @property
    def auth_required(self) -> bool:
        return bool(self._state().api_keys)

    def check_database(self) -> str | None:
        """None if the database answers within the health timeout, else why not.

        The probe runs on one background thread, so a hung database costs a
        probe at a time, not a request thread per call."""
        state = self._state()
        engine = self.engine
        with state.lock:
            if state.probe_pid != os.getpid() or state.probe_executor is None:
                state.probe_executor = ThreadPoolExecutor(1, thread_name_prefix="flows-health")
                state.probe_pid = os.getpid()
                state.probe = None
            if state.probe is None or state.probe.done():
                state.probe = state.probe_executor.submit(_probe, engine)
            probe = state.probe
        try:
            probe.result(timeout=state.health_timeout_seconds)
        except FutureTimeout:
            return f"no answer within {state.health_timeout_seconds:g}s"
        except flows.FlowsError as exc:
            # The class only (UndefinedTable, OperationalError...): the message
            # can name hosts, and /healthz answers anyone. The log has it all.
            current_app.logger.warning("healthz-error error=%s", exc)
            kind = type(exc.__cause__ or exc).__name__  # the database's own error, when it has one
            return f"database error: {kind} (details in the server log)"
        return None


def _probe(engine: flows.Engine) -> None:
    # A read of the workflows table through the public API: WorkflowNotFound
    # proves the database answers and is migrated.
    try:
        engine.query(HEALTH_PROBE_NAME, HEALTH_PROBE_ID)
    except flows.WorkflowNotFound:
        return


client = FlowsClient()
