"""The client side: start, signal, query, await and cancel workflows.

Callers name a workflow by its base name (or by the sharded name a
WorkflowStatus carries); the engine derives the shard from the id. The
connection pool opens on first use, so an Engine built before ``fork()`` is
safe to use in the child.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from contextlib import contextmanager
from typing import Any, Iterator
from uuid import UUID

import msgspec
import uuid6

from flows import codec, metrics, schedules, sharding, store
from flows.definitions import WorkflowDefinition, find_workflow, workflow_versions
from flows.errors import (
    ConfigurationError,
    DuplicateSignal,
    InvalidInput,
    SignalNotAwaited,
    WorkflowFailed,
    WorkflowNotFound,
    WorkflowNotRunning,
)
from flows.ids import ANY_TENANT, parse_uuid
from flows.ids import DEFAULT_TENANT_ID as DEFAULT_TENANT_ID  # where it was first, for callers
from flows.ids import tenant as _tenant
from flows.ops import detail as detail_ops
from flows.ops import fleet as fleet_ops
from flows.ops import workflows as workflow_ops
from flows.store import client as client_store

log = logging.getLogger("flows.engine")

POOL_TIMEOUT_SECONDS = 30.0  # how long a call waits for a pooled connection before DatabaseError
RESULT_RECHECK_SECONDS = 5.0  # a safety net under the NOTIFY that wakes result()
ENDED = ("completed", "failed", "cancelled")


class Execution(msgspec.Struct, frozen=True):
    """A started workflow: use ``workflow_name`` (the base name) and
    ``workflow_id`` in every later call."""

    workflow_id: UUID
    workflow_name: str
    workflow_name_sharded: str
    tenant_id: UUID
    created: bool = True  # False when start() found the id already started


class ActivityStatus(msgspec.Struct, frozen=True):
    """The activity a running workflow waits for: its attempts so far
    (``failed_attempts`` of ``max_attempts``), when the current or last one
    started, the last error, when the next attempt is due, and its last
    heartbeat (time and details)."""

    id: UUID
    name: str
    status: str
    failed_attempts: int
    max_attempts: int
    started_at: datetime | None
    error: str | None
    next_retry_at: datetime | None
    heartbeat_at: datetime | None
    heartbeat_details: Any


class RejectedSignal(msgspec.Struct, frozen=True):
    """A signal a wait could not take: its payload did not decode into the
    wait's type (``reason`` says how). The workflow went on waiting."""

    id: UUID
    name: str
    reason: str
    sent_at: datetime
    rejected_at: datetime


class WorkflowStatus(msgspec.Struct, frozen=True):
    """Where a workflow stands. ``name`` is the sharded name it is stored
    under (``order-shard-2``), which every Engine call accepts in place of
    the base name. ``waiting_for`` names what blocks it: ``activity:<name>``,
    ``signal:<name>``, ``child:<name>`` or ``timer``, or several of them
    comma-separated when it waits for all (``ctx.gather``). With activities,
    ``activity`` describes the attempts of the latest it waits for and
    ``activities`` those of every one not ended; waiting for a signal,
    ``rejected_signals`` lists the signals it could not take (``query`` only)."""

    id: UUID
    tenant_id: UUID
    name: str
    version: int
    status: str
    error: str | None
    output: Any
    waiting_for: str | None
    input: Any
    sequence_num: int
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    activity: ActivityStatus | None = None
    activities: list[ActivityStatus] = []
    rejected_signals: list[RejectedSignal] = []


def _base_name(workflow: object) -> str:
    name = workflow.name if isinstance(workflow, WorkflowDefinition) else workflow
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"workflow name must be a non-empty string, got {name!r}")
    return name


@dataclass
class _PoolHolder:
    pid: int
    pool: Any
    ours: bool = True  # False: the caller's pool, theirs to close


def settings(shards: int | None, pool_size: int | None) -> tuple[int, int]:
    """An engine's shard count and pool size: the arguments, else FLOWS_SHARDS
    and FLOWS_POOL_SIZE, else 3 and 10."""
    shards = int(os.environ.get("FLOWS_SHARDS", sharding.DEFAULT_SHARDS)) if shards is None else shards
    if not isinstance(shards, int) or shards < 1:
        raise ConfigurationError(f"shards must be a positive integer, got {shards!r}")
    return shards, pool_size or int(os.environ.get("FLOWS_POOL_SIZE", "10"))


class Engine:
    """Entry point of the client API, backed by a psycopg pool.

    ``dsn_or_pool`` is a connection string or an open psycopg ``ConnectionPool``.
    ``pool_timeout``: seconds a call waits for a connection of the engine's
    own pool (all busy, or the database unreachable) before it raises
    DatabaseError; a web app keeps it short so that an outage is answered
    quickly instead of holding a request thread."""

    def __init__(
        self, dsn_or_pool: Any, shards: int | None = None, *, pool_size: int | None = None,
        pool_timeout: float = POOL_TIMEOUT_SECONDS,
    ) -> None:
        self.shards, self.pool_size = settings(shards, pool_size)
        metrics.enable()  # on in a process with a metrics directory (a gunicorn worker), else a no-op
        if not pool_timeout > 0:
            raise ConfigurationError(f"pool_timeout must be above 0 seconds, got {pool_timeout!r}")
        self.pool_timeout = float(pool_timeout)
        self._lock = threading.Lock()
        if isinstance(dsn_or_pool, str):
            store.check_dsn(dsn_or_pool)  # a placeholder or malformed string fails here, not at first use
            self.dsn = dsn_or_pool
            self._holder: _PoolHolder | None = None
        else:
            self.dsn = dsn_or_pool.conninfo
            self._holder = _PoolHolder(os.getpid(), dsn_or_pool, ours=False)

    # -- plumbing -----------------------------------------------------------

    @property
    def pool(self) -> Any:
        holder = self._holder
        if holder is None or holder.pid != os.getpid():  # never use a pool across fork()
            with self._lock:
                if self._holder is None or self._holder.pid != os.getpid():
                    # One connection first, so that a server that cannot be
                    # reached fails at once with its reason, instead of the
                    # pool retrying in the background until a caller times out.
                    store.connect(self.dsn, timeout_seconds=store.CONNECT_TIMEOUT_SECONDS).close()
                    self._holder = _PoolHolder(os.getpid(), store.open_pool(
                        self.dsn, max_size=self.pool_size, check=True, timeout=self.pool_timeout))
                holder = self._holder
        return holder.pool

    @contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[Any]:
        """A connection of the pool for the block (committed at its end, rolled
        back on an exception); DatabaseError if none can be had."""
        pool = self.pool
        try:
            conn = pool.getconn(timeout=timeout)
        except store.PoolTimeout as exc:
            raise store.connection_error(self.dsn, exc) from exc
        try:
            with conn:  # a pool's connection stays open at the end of the block
                yield conn
        finally:
            pool.putconn(conn)

    def close(self) -> None:
        """Close the pool this engine opened (a caller's own pool is left open)."""
        if self._holder is not None and self._holder.pid == os.getpid() and self._holder.ours:
            self._holder.pool.close()
        self._holder = None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def migrate(self) -> list[str]:
        """Apply pending migrations (all or none); safe to run from several
        processes at once. Raises MigrationChanged, naming the files and
        applying nothing, when a file changed after it was applied."""
        from flows import migrate

        with store.wrapped():
            return migrate.migrate(self.dsn)

    def shard_of(self, workflow_name: str, workflow_id: UUID) -> str:
        """The sharded name (``order-shard-2``) a workflow of this name and id is stored under."""
        return sharding.sharded_name(sharding.split_sharded(workflow_name)[0], workflow_id, self.shards)

    def _locate(self, workflow_name: object, workflow_id: object) -> tuple[str, UUID, str]:
        """The base name, id and shard of a workflow named by its base name
        (``order``) or by the sharded name a WorkflowStatus carries (``order-shard-2``)."""
        return locate(self.shards, workflow_name, workflow_id)

    def shard_names(self, workflow_name: str) -> list[str]:
        return sharding.all_shard_names(workflow_name, self.shards)

    # -- the API ------------------------------------------------------------

    def start(
        self,
        workflow: WorkflowDefinition[Any, Any],
        inp: Any = None,
        *,
        tenant_id: object = None,
        workflow_id: object = None,
        conn: Any = None,
        timeout: float | None = None,
    ) -> Execution:
        """Start ``workflow`` with ``inp``.

        With ``conn`` (an open psycopg connection of the caller's) the start
        joins the caller's transaction, whatever ran on it before, and is
        committed or rolled back with the caller's own writes: start never
        commits or rolls back the caller's work. It writes in a savepoint,
        so a refused start (an exception) leaves the caller's transaction
        usable. On an autocommit connection outside ``conn.transaction()``
        it commits at once, in a transaction of its own. Without ``conn``
        it uses the engine's pool and commits at once.

        With ``workflow_id`` the start is idempotent: starting an id that
        exists returns that execution (``created=False``). With ``timeout``
        (seconds, by the database clock) a workflow still running that long
        after its start ends ``failed`` with "timed out", its pending work
        dropped (and its children cancelled, per their policy)."""
        statement, execution = start_request(self.shards, workflow, inp, tenant_id, workflow_id, timeout)
        with store.wrapped():
            if conn is not None:
                with store.within_callers_transaction(conn):
                    answer = store.run(conn, statement)
            else:
                with self.connection() as c:
                    answer = store.run(c, statement)
        return started(execution, answer)

    def signal_with_start(
        self,
        workflow: WorkflowDefinition[Any, Any],
        inp: Any,
        signal_name: str,
        payload: Any = None,
        *,
        workflow_id: object,
        tenant_id: object = None,
        timeout: float | None = None,
    ) -> Execution:
        """Start ``workflow`` under ``workflow_id`` unless it exists, and
        deliver signal ``signal_name`` to it, in one transaction: callers
        racing on one id make one workflow, and each signal is delivered.
        ``created`` says whether this call started it. Raises
        WorkflowNotRunning if the workflow exists and has ended (the signal
        is not stored), InvalidInput if the id is another tenant's."""
        if workflow_id is None:
            raise InvalidInput("signal_with_start needs a workflow_id", path="workflow_id")
        statement, execution = signal_with_start_request(
            self.shards, workflow, inp, signal_name, payload, tenant_id, workflow_id, timeout)
        with store.wrapped(), self.connection() as c:
            answer = store.run(c, statement)
        return signalled_start(execution, answer)

    def send_signal(
        self, workflow_name: str, workflow_id: object, signal_name: str, payload: Any = None, *,
        tenant_id: object = None, dedup_key: str | None = None, only_if_waiting: bool = False,
    ) -> UUID:
        """Deliver signal ``signal_name`` to a running workflow and return its
        id; it is kept until the workflow waits for it. Raises
        WorkflowNotFound, or WorkflowNotRunning once the workflow has ended.

        Two conditions, each decided in the statement that stores the
        signal, so concurrent senders cannot both pass:

        - ``dedup_key``: at most one signal per workflow id (across its
          runs) is ever stored under a key. A send whose key is taken stores
          nothing and raises DuplicateSignal carrying the stored signal's id
          and payload.
        - ``only_if_waiting``: store the signal only if the workflow waits
          for it now: its replay stopped at ``wait_for_signal(signal_name)``
          and no stored, unconsumed signal of that name already answers the
          wait. Otherwise nothing is stored and SignalNotAwaited is raised.
          Of concurrent senders, one per wait succeeds."""
        request = signal_request(self, workflow_name, workflow_id, signal_name, payload, tenant_id,
                                 dedup_key=dedup_key, only_if_waiting=only_if_waiting)
        with store.wrapped(), self.connection() as c:
            sent = store.run(c, request.statement)
        return request.answer(sent)

    def query(self, workflow_name: str, workflow_id: object, *, tenant_id: object = None) -> WorkflowStatus:
        """The workflow's current status (``WorkflowNotFound`` if this tenant has no such workflow)."""
        name, wid, shard = self._locate(workflow_name, workflow_id)
        with store.wrapped(), self.connection() as c:
            row = store.run(c, client_store.workflow_statement(shard, wid, _tenant(tenant_id)))
            waits = row.waiting_for or "" if row is not None else ""
            activities = store.run(c, client_store.pending_activities(shard, wid)) if "activity:" in waits else []
            rejected = store.run(c, client_store.rejected_signals(shard, wid)) if "signal:" in waits else []
        return workflow_status(name, wid, row, activities, rejected)

    def _status(self, name: str, row: client_store.WorkflowRow) -> WorkflowStatus:
        return _status(name, row)

    def ping(self, timeout: float = 2.0) -> None:
        """Check the database answers within ``timeout`` seconds; raise DatabaseError if not."""
        with store.wrapped(), self.connection(timeout=timeout) as conn:
            store.ping(conn)

    def result(
        self, workflow_name: str, workflow_id: object, *, timeout: float | None = None, tenant_id: object = None
    ) -> Any:
        """Block until the workflow ends; return its output, or raise
        WorkflowFailed (failed or cancelled), or TimeoutError after ``timeout`` s."""
        name, wid, shard = self._locate(workflow_name, workflow_id)
        tenant = _tenant(tenant_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        with store.wrapped(), store.connect(self.dsn, autocommit=True) as listen:
            store.listen(listen, [sharding.channel(shard, "flows-done")])
            # Only once a waiter is counted is the end announced.
            store.run(listen, client_store.result_waiter_statement(shard, wid, tenant, +1))
            try:
                while True:
                    row = store.run(listen, client_store.workflow_statement(shard, wid, tenant))
                    done, value = ended(name, wid, row)
                    if done:
                        return value
                    wait = result_wait(name, wid, row, deadline, timeout)
                    for _ in listen.notifies(timeout=wait, stop_after=1):
                        pass
            finally:
                if not listen.closed:
                    store.run(listen, client_store.result_waiter_statement(shard, wid, tenant, -1))

    def cancel(self, workflow_name: str, workflow_id: object, *, tenant_id: object = None) -> bool:
        """Cancel a running workflow: it ends as ``cancelled`` and its pending
        work is dropped (an activity attempt in flight finishes unrecorded);
        its child workflows with the ``"cancel"`` parent-close policy (the
        default) are cancelled in turn. False if it had already ended."""
        name, wid, shard = self._locate(workflow_name, workflow_id)
        with store.wrapped(), self.connection() as c:
            before = store.run(c, client_store.cancel_workflow(shard, wid, _tenant(tenant_id)))
        return cancelled(name, wid, before)

    # -- operating a running system (the console and the CLI) -----------------
    #
    # Reads take ``tenant_id=ANY_TENANT`` (every tenant: an operator's view),
    # a tenant's id, or None (the default tenant, as elsewhere).

    def workflow_names(self) -> list[str]:
        """The base names of every workflow in the database."""
        return workflow_ops.names(self)

    def list_workflows(
        self, name: str | None = None, *, status: str | None = None, tenant_id: object = ANY_TENANT,
        waiting_for: str | None = None, created_from: object = None, created_to: object = None,
        after: str | None = None, limit: int = 50,
    ) -> workflow_ops.WorkflowPage:
        """Workflows newest first (by ``created_at``), ``limit`` (<= 1,000) a
        page; ``after`` is the previous page's ``next_cursor``. Filters: base
        ``name``, ``status``, tenant, ``waiting_for`` (``signal`` for any
        signal, ``signal:document-income`` for one, ``activity``, ``timer``)
        and ``created_from <= created_at < created_to``."""
        return workflow_ops.list_page(self, name, status=status, tenant_id=tenant_id, waiting_for=waiting_for,
                                      created_from=created_from, created_to=created_to, after=after, limit=limit)

    def count_workflows(
        self, name: str | None = None, *, tenant_id: object = ANY_TENANT, waiting_for: str | None = None,
        created_from: object = None, created_to: object = None, cap: int | None = None,
    ) -> dict[str, int]:
        """How many workflows are in each status, under the list's filters.
        With ``cap`` a count stops there (a status at ``cap`` has at least
        that many): counting 10,000 costs what counting 10 million would not."""
        return workflow_ops.count(self, name, tenant_id=tenant_id, waiting_for=waiting_for,
                                  created_from=created_from, created_to=created_to, cap=cap)

    def describe(
        self, workflow_name: str, workflow_id: object, *, tenant_id: object = ANY_TENANT
    ) -> detail_ops.WorkflowDetail:
        """Everything recorded about one workflow (history with times,
        activities and their attempts, signals, timers, pending tasks, dead
        letters, the workers of its shard), read in one statement."""
        return detail_ops.describe(self, workflow_name, workflow_id, tenant_id)

    def dead_letters(
        self, name: str | None = None, *, tenant_id: object = ANY_TENANT, after: object = None,
        limit: int = 50, include_retried: bool = False,
    ) -> list[workflow_ops.DeadLetter]:
        """Failed workflows' dead letters, newest first; ``after`` is the last
        ``id`` of the previous page. Retried ones only with ``include_retried``."""
        return workflow_ops.dead_letters(self, name, tenant_id=tenant_id, after=after, limit=limit,
                                         include_retried=include_retried)

    def fleet(self, stale_seconds: float | None = None) -> fleet_ops.Fleet:
        """The workers (from their heartbeats: shards, last beat, leases held)
        and each shard's queue: tasks, due, leased, the oldest due task's age
        and the live workers serving it. A worker whose last beat is older
        than ``stale_seconds`` (FLOWS_STALE_SECONDS, 30) is not live."""
        return fleet_ops.fleet(self, fleet_ops.stale_seconds() if stale_seconds is None else stale_seconds)

    def event_rates(self, window_seconds: int = 600, bucket_seconds: int = 10) -> list[tuple[str, float, int]]:
        """History events recorded per shard per ``bucket_seconds`` over the
        last ``window_seconds``: (shard, bucket start in epoch seconds, count)."""
        return workflow_ops.event_rates(self, window_seconds, bucket_seconds)

    def retry(
        self, workflow_name: str, workflow_id: object, *, tenant_id: object = ANY_TENANT
    ) -> workflow_ops.RetryResult:
        """Run a failed workflow again from its last good step, in one
        transaction: its end is dropped from the history (and, when an
        activity that ran out of attempts failed it, that activity's step
        too, to run again with fresh attempts), it is running again, its
        dead letters are marked retried, and a replay is queued. Raises
        WorkflowNotFailed unless it failed."""
        return workflow_ops.retry(self, workflow_name, workflow_id, tenant_id)

    def prune(self, older_than_seconds: float, *, name: str | None = None, batch_size: int = 500) -> int:
        """Delete workflows that ended (completed, failed, cancelled) more
        than ``older_than_seconds`` ago, with all their rows, ``batch_size``
        a transaction; running workflows are never touched. Returns how many."""
        return workflow_ops.prune(self, older_than_seconds, name, batch_size)

    def export(self, workflow_name: str, workflow_id: object, *, tenant_id: object = ANY_TENANT) -> dict[str, Any]:
        """A run as a JSON-ready document (its workflow row, history,
        activities, signals and timers) for ``flows replay`` / ``replay_export``."""
        return detail_ops.export(self, workflow_name, workflow_id, tenant_id)

    @staticmethod
    def replay_export(document: dict[str, Any], workflows: Any = None) -> Any:
        """Replay an exported run against the code at hand, with no database
        (see ``flows.replayer.replay_export``); returns a ReplayReport."""
        from flows.replayer import replay_export

        return replay_export(document, workflows)

    # -- schedules ----------------------------------------------------------

    def schedule(
        self,
        workflow: WorkflowDefinition[Any, Any],
        cron: str,
        inp: Any = None,
        *,
        schedule_id: str,
        timezone: str = "UTC",
        overlap: str = "skip",
        catch_up: str | float = "latest",
        tenant_id: object = None,
    ) -> schedules.ScheduleInfo:
        """Create (or replace) the schedule ``schedule_id``: start
        ``workflow`` with ``inp`` at each tick of ``cron`` in ``timezone``.
        See ``flows.schedules`` for the cron syntax and the policies:
        ``overlap`` ("skip", "buffer_one", "allow") when the last run still
        runs at a tick, ``catch_up`` ("all", "latest", or a window in
        seconds) for ticks missed while no worker ran. Workers fire
        schedules; each tick starts one run, whose id is derived from the
        schedule and the tick, however many fleets share the database."""
        spec = schedules.spec(workflow, cron, inp, schedule_id=schedule_id, timezone=timezone, overlap=overlap,
                              catch_up=catch_up, tenant_id=_tenant(tenant_id))
        with store.wrapped(), self.connection() as c:
            return schedules.save(c, spec)

    def list_schedules(self) -> list[schedules.ScheduleInfo]:
        """Every schedule, by id."""
        with store.wrapped(), self.connection() as c:
            return schedules.list_all(c)

    def pause_schedule(self, schedule_id: str) -> schedules.ScheduleInfo:
        """Stop firing ``schedule_id`` until ``resume_schedule``."""
        with store.wrapped(), self.connection() as c:
            return schedules.set_paused(c, schedule_id, True)

    def resume_schedule(self, schedule_id: str) -> schedules.ScheduleInfo:
        """Fire ``schedule_id`` again from its next tick after now (ticks
        missed while paused are skipped)."""
        with store.wrapped(), self.connection() as c:
            return schedules.set_paused(c, schedule_id, False)

    def delete_schedule(self, schedule_id: str) -> bool:
        """Delete ``schedule_id`` (runs it started go on); False if there was none."""
        with store.wrapped(), self.connection() as c:
            return schedules.delete(c, schedule_id)

    def trigger_schedule(self, schedule_id: str) -> Execution:
        """Start a run of ``schedule_id`` now, whatever its cron and overlap
        policy (its id is derived from the schedule and the database's time)."""
        with store.wrapped(), self.connection() as c:
            row, wid, created = schedules.trigger(c, schedule_id, self.shards)
        return Execution(wid, row.workflow_name, self.shard_of(row.workflow_name, wid), row.tenant_id, created)


# -- requests shared by Engine and AsyncEngine: validation, SQL, answers --------


def locate(shards: int, workflow_name: object, workflow_id: object) -> tuple[str, UUID, str]:
    """See ``Engine._locate``."""
    name = _base_name(workflow_name)
    wid = parse_uuid(workflow_id)
    base, index = sharding.split_sharded(name)
    shard = sharding.sharded_name(base, wid, shards)
    if index is not None and shard != name:
        raise WorkflowNotFound(f"no workflow {name}/{wid}: with {shards} shards, that id belongs on {shard}")
    return base, wid, shard


@dataclass(frozen=True)
class _Start:
    execution: Execution
    version: int
    input: bytes
    timeout: float | None


def _start_parts(
    shards: int, workflow: WorkflowDefinition[Any, Any], inp: Any, tenant_id: object, workflow_id: object,
    timeout: float | None,
) -> _Start:
    if not isinstance(workflow, WorkflowDefinition):
        raise InvalidInput(f"start() takes a @flows.workflow, not {workflow!r}")
    data = codec.encode(inp, "input")
    codec.decode(data, workflow.input_type)  # refuse input the workflow could not read
    wid = uuid6.uuid7() if workflow_id is None else parse_uuid(workflow_id)
    tenant = _tenant(tenant_id)
    _check_timeout(timeout)
    shard = sharding.sharded_name(workflow.name, wid, shards)
    return _Start(Execution(wid, workflow.name, shard, tenant, True), workflow.version, data,
                  None if timeout is None else float(timeout))


def start_request(
    shards: int, workflow: WorkflowDefinition[Any, Any], inp: Any, tenant_id: object, workflow_id: object,
    timeout: float | None,
) -> tuple[store.Statement[str], Execution]:
    parts = _start_parts(shards, workflow, inp, tenant_id, workflow_id, timeout)
    ex = parts.execution
    statement = client_store.start_workflow(shard=ex.workflow_name_sharded, workflow_id=ex.workflow_id,
                                     tenant_id=ex.tenant_id, version=parts.version, input=parts.input,
                                     timeout=parts.timeout)
    return statement, ex


def _check_timeout(timeout: object) -> None:
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not timeout > 0):
        raise InvalidInput(f"timeout must be a number of seconds > 0, got {timeout!r}", path="timeout")


def started(execution: Execution, answer: str) -> Execution:
    if answer == "taken":
        raise InvalidInput(f"workflow_id {execution.workflow_id} is already used", path="workflow_id")
    if answer == "created":
        metrics.workflow_started(execution.workflow_name)
        return execution
    return msgspec.structs.replace(execution, created=False)


def _check_signal_name(signal_name: object) -> str:
    if not isinstance(signal_name, str) or not signal_name or len(signal_name) > 200 or "\0" in signal_name:
        raise InvalidInput(f"signal_name must be a non-empty string of <= 200 chars without NUL, got {signal_name!r}",
                           path="signal_name")
    return signal_name


def check_signal_payload(definitions: list[WorkflowDefinition[Any, Any]], signal_name: str, data: bytes) -> None:
    """Refuse a payload that no version of the workflow known here could
    decode for ``signal_name`` (versions declaring no type for it accept
    anything; a workflow this process does not know is not checked)."""
    declared = [t for t in (d.signal_type(signal_name) for d in definitions) if t is not None]
    if not declared or len(declared) < len(definitions):
        return
    errors: list[str] = []
    for payload_type in declared:
        try:
            codec.decode(data, payload_type)
            return
        except InvalidInput as exc:
            errors.append(str(exc))
    raise InvalidInput(f"signal {signal_name!r}: the payload does not fit the type the workflow declares"
                       f" ({getattr(declared[0], '__name__', declared[0])}): {errors[0]}", path="payload")


def signal_with_start_request(
    shards: int, workflow: WorkflowDefinition[Any, Any], inp: Any, signal_name: str, payload: Any,
    tenant_id: object, workflow_id: object, timeout: float | None,
) -> tuple[store.Statement[tuple[str, str | None]], Execution]:
    parts = _start_parts(shards, workflow, inp, tenant_id, workflow_id, timeout)
    name = _check_signal_name(signal_name)
    data = codec.encode(payload, "payload")
    check_signal_payload([workflow], name, data)
    ex = parts.execution
    statement = client_store.signal_with_start(
        shard=ex.workflow_name_sharded, workflow_id=ex.workflow_id, tenant_id=ex.tenant_id, version=parts.version,
        input=parts.input, timeout=parts.timeout, signal_id=uuid6.uuid7(), name=name, payload=data)
    return statement, ex


def signalled_start(execution: Execution, answer: tuple[str, str | None]) -> Execution:
    start, status = answer
    execution = started(execution, start)
    if status in ENDED:
        raise WorkflowNotRunning(f"workflow {execution.workflow_name}/{execution.workflow_id} is {status};"
                                 " it takes no more signals")
    return execution


@dataclass(frozen=True)
class SignalRequest:
    statement: store.Statement[client_store.SignalSent | None]
    name: str
    workflow_id: UUID
    signal_id: UUID
    signal_name: str
    dedup_key: str | None

    def answer(self, sent: client_store.SignalSent | None) -> UUID:
        where = f"{self.name}/{self.workflow_id}"
        if sent is None:
            raise WorkflowNotFound(f"no workflow {where}")
        if sent.outcome is None:
            raise WorkflowNotRunning(f"workflow {where} is {sent.status}; it takes no more signals")
        if sent.outcome == "duplicate":
            assert self.dedup_key is not None and sent.signal_id is not None
            raise DuplicateSignal(
                f"workflow {where} already has signal {sent.signal_id} with dedup_key {self.dedup_key!r}",
                dedup_key=self.dedup_key, signal_id=sent.signal_id, payload=codec.decode(sent.payload),
            )
        if sent.outcome == "answered":
            raise SignalNotAwaited(
                f"workflow {where} already has an unconsumed {self.signal_name!r} signal ({sent.signal_id})",
                waiting_for=sent.waiting_for, pending_signal_id=sent.signal_id,
            )
        if sent.outcome == "not-waiting":
            raise SignalNotAwaited(
                f"workflow {where} is not waiting for {self.signal_name!r} (waiting for: {sent.waiting_for or 'nothing'})",
                waiting_for=sent.waiting_for,
            )
        return self.signal_id


def signal_request(
    engine: Any, workflow_name: str, workflow_id: object, signal_name: str, payload: Any, tenant_id: object, *,
    dedup_key: str | None = None, only_if_waiting: bool = False,
) -> SignalRequest:
    name, wid, shard = engine._locate(workflow_name, workflow_id)
    tenant = _tenant(tenant_id)
    _check_signal_name(signal_name)
    if dedup_key is not None and (
        not isinstance(dedup_key, str) or not dedup_key or len(dedup_key) > 200 or "\0" in dedup_key
    ):
        raise InvalidInput("dedup_key must be a non-empty string of <= 200 chars without NUL", path="dedup_key")
    data = codec.encode(payload, "payload")
    check_signal_payload(workflow_versions(name), signal_name, data)
    signal_id = uuid6.uuid7()
    statement = client_store.send_signal_statement(
        shard=shard, workflow_id=wid, tenant_id=tenant, signal_id=signal_id, name=signal_name, payload=data,
        task_id=uuid6.uuid7(), dedup_key=dedup_key, only_if_waiting=bool(only_if_waiting))
    return SignalRequest(statement, name, wid, signal_id, signal_name, dedup_key)


def _status(name: str, row: client_store.WorkflowRow) -> WorkflowStatus:
    definition = find_workflow(name, row.version)

    def typed(data: str | None, target: Any) -> Any:
        try:
            return codec.decode(data, target if definition is not None else Any)
        except InvalidInput:  # the code changed shape since: give the raw JSON
            return codec.decode(data)

    return WorkflowStatus(
        row.id, row.tenant_id, row.name, row.version, row.status, row.error,
        typed(row.output, definition and definition.output_type), row.waiting_for,
        typed(row.input, definition and definition.input_type),
        row.sequence_num, row.created_at, row.updated_at, row.completed_at,
    )


def workflow_status(
    name: str, wid: UUID, row: client_store.WorkflowRow | None, activities: list[client_store.ActivityRow],
    rejected: list[client_store.RejectedSignalRow] | None = None,
) -> WorkflowStatus:
    if row is None:
        raise WorkflowNotFound(f"no workflow {name}/{wid}")
    status = _status(name, row)
    if rejected:
        status = msgspec.structs.replace(status, rejected_signals=[
            RejectedSignal(r.id, r.name, r.reason, r.created_at, r.rejected_at) for r in rejected])
    if not activities:
        return status
    described = [ActivityStatus(
        a.id, a.name, a.status, a.attempt, a.max_attempts, a.started_at, a.error, a.next_retry_at, a.heartbeat_at,
        codec.decode(a.heartbeat_details),
    ) for a in activities]
    return msgspec.structs.replace(status, activity=described[-1], activities=described)


def ended(name: str, wid: UUID, row: client_store.WorkflowRow | None) -> tuple[bool, Any]:
    """For result(): (True, output) once completed; raises once failed or
    cancelled; (False, None) while it runs."""
    if row is None:
        raise WorkflowNotFound(f"no workflow {name}/{wid}")
    if row.status not in ENDED:
        return False, None
    if row.status == "completed":
        return True, _status(name, row).output
    raise WorkflowFailed(wid, row.status, row.error)


def result_wait(name: str, wid: UUID, row: client_store.WorkflowRow | None, deadline: float | None,
                timeout: float | None) -> float:
    """How long result() waits for the next notification; TimeoutError past its deadline."""
    wait = RESULT_RECHECK_SECONDS
    if deadline is not None:
        wait = min(wait, deadline - time.monotonic())
        if wait <= 0:
            raise TimeoutError(f"workflow {name}/{wid} still {row.status if row else 'running'} after {timeout}s")
    return wait


def cancelled(name: str, wid: UUID, before: str | None) -> bool:
    if before is None:
        raise WorkflowNotFound(f"no workflow {name}/{wid}")
    if before == "running":
        metrics.workflow_cancelled(name)
    return before == "running"
