"""The flows engine as a Flask extension: one ``flows.Engine`` per app,
built on first use from the app's config.

Nothing connects at import or in ``create_app()``: the engine is made on the
first request and opens its pool in the process that uses it, so the app is
safe to build before gunicorn forks its workers.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, Mapping
from uuid import UUID

from flask import Flask, current_app

import flows
from flows import embedded

log = logging.getLogger("webapp")

EXTENSION_KEY = "flows"
HEALTH_PROBE_NAME, HEALTH_PROBE_ID = "flows-healthz", UUID(int=0)  # no such workflow exists


MIN_API_KEY_CHARS = 16


class _Unset:
    def __repr__(self) -> str:
        return "API_KEYS_UNSET"


API_KEYS_UNSET: Any = _Unset()  # the API_KEYS default: authentication off


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def parse_api_keys(value: Any) -> list[tuple[bytes, UUID]]:
    """FLOWS_API_KEYS as [(sha256 of the key, tenant)].

    ``"key1:tenant-uuid,key2:tenant-uuid"`` or a mapping {key: tenant}.
    ``API_KEYS_UNSET`` means no authentication (every request runs as the
    default tenant): the only way to turn it off. Anything else that yields
    no usable key (null, [], {}, 0, false, "", " , "), a key shorter than
    MIN_API_KEY_CHARS or holding spaces or non-ASCII characters, a tenant
    that is not a UUID, or a key listed twice raises ConfigurationError.
    Its message names entries by position and never quotes a key."""
    if value is API_KEYS_UNSET:
        return []
    if isinstance(value, Mapping):
        pairs = [(k, t) for k, t in value.items()]
    elif isinstance(value, str):
        pairs = []
        for n, entry in enumerate(value.split(","), 1):
            key, colon, tenant = entry.strip().rpartition(":")
            if not entry.strip():
                raise flows.ConfigurationError(f"FLOWS_API_KEYS: entry {n} is empty (expected key:tenant-uuid,...)")
            if not colon:
                raise flows.ConfigurationError(f"FLOWS_API_KEYS: entry {n} has no ':tenant-uuid' part")
            pairs.append((key, tenant))
    else:
        raise flows.ConfigurationError(
            f"FLOWS_API_KEYS is set to a {type(value).__name__}; expected 'key:tenant-uuid,...' or a JSON object"
            " of keys to tenant UUIDs (leave it unset to run without authentication)"
        )
    if not pairs:
        raise flows.ConfigurationError(
            "FLOWS_API_KEYS is set but lists no keys (leave it unset to run without authentication)"
        )
    keys: list[tuple[bytes, UUID]] = []
    for n, (key, tenant) in enumerate(pairs, 1):
        if not isinstance(key, str) or len(key.strip()) < MIN_API_KEY_CHARS:
            raise flows.ConfigurationError(
                f"FLOWS_API_KEYS: the key of entry {n} is shorter than {MIN_API_KEY_CHARS} characters"
            )
        key = key.strip()
        if not all("!" <= ch <= "~" for ch in key):
            raise flows.ConfigurationError(
                f"FLOWS_API_KEYS: the key of entry {n} holds a space or a character outside printable ASCII"
            )
        try:
            tenant_id = tenant if isinstance(tenant, UUID) else UUID(str(tenant).strip())
        except ValueError:
            raise flows.ConfigurationError(
                f"FLOWS_API_KEYS: the tenant of entry {n} is not a UUID (expected key:tenant-uuid;"
                " is the entry the wrong way round?)"
            ) from None
        digest = _digest(key)
        if any(hmac.compare_digest(digest, d) for d, _ in keys):
            raise flows.ConfigurationError(f"FLOWS_API_KEYS: entry {n} repeats the key of an earlier entry")
        keys.append((digest, tenant_id))
    return keys


@dataclass
class _State:
    database_url: str | None
    shards: int | None
    pool_size: int | None
    pool_timeout_seconds: float
    api_keys: list[tuple[bytes, UUID]]
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
            pool_timeout_seconds=_seconds(cfg.get("POOL_TIMEOUT", 2.0), "FLOWS_POOL_TIMEOUT"),
            api_keys=parse_api_keys(cfg.get("API_KEYS", API_KEYS_UNSET)),
            health_timeout_seconds=_seconds(cfg.get("HEALTH_TIMEOUT", 2.0), "FLOWS_HEALTH_TIMEOUT"),
        )
        if not app.extensions[EXTENSION_KEY].api_keys:
            log.warning("auth-disabled: FLOWS_API_KEYS is unset; every request acts as the default tenant")

    def close(self, app: Flask) -> None:
        """Close the app's engine pool (tests, and a gunicorn worker as it exits)."""
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
                    state.engine = flows.Engine(dsn, shards=state.shards, pool_size=state.pool_size,
                                                pool_timeout=state.pool_timeout_seconds)
        return state.engine

    def tenant_for(self, api_key: str) -> UUID | None:
        """The tenant of ``api_key``, or None. The digests of the presented
        key and of every configured one are compared, each in constant time
        and all of them every time: the answer's timing tells nothing of how
        much of a key matched, nor which."""
        presented = _digest(api_key)
        found = None
        for digest, tenant in self._state().api_keys:
            if hmac.compare_digest(presented, digest):
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
            log.warning("healthz-error error=%s", exc)
            return f"database error: {type(exc.__cause__ or exc).__name__} (details in the server log)"
        return None


def _seconds(value: Any, name: str) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise flows.ConfigurationError(f"{name} must be a number of seconds, got {value!r}") from None
    if not seconds > 0:
        raise flows.ConfigurationError(f"{name} must be above 0 seconds, got {value!r}")
    return seconds


def _probe(engine: flows.Engine) -> None:
    # A read of the workflows table through the public API: WorkflowNotFound
    # proves the database answers and is migrated.
    try:
        engine.query(HEALTH_PROBE_NAME, HEALTH_PROBE_ID)
    except flows.WorkflowNotFound:
        return


client = FlowsClient()
