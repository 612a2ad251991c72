"""Every SQL statement the library runs, one named function each, in one
module per job:

- ``connections``: connecting, pools, LISTEN/NOTIFY, the database clock, and
  the one place psycopg's errors are wrapped (``wrapped``);
- ``statements``: how statements run (``Statement``, ``run``, ``arun``, a
  step's ``StepTransaction``);
- ``client``: start, signal, read, cancel (the engines);
- ``steps``: a worker's claims of replays and the record of a step;
- ``carry``: a step's intents carried to other shards (children, parents);
- ``leases``: activity leases, and when each shard's next task falls due;
- ``fleet``: worker heartbeats and dead workers' leases;
- ``schedules``: schedules, and firing them;
- ``ops``: the operator's queries (lists, details, counts, retry, prune).

Every statement on the workflow tables filters by the shard key
(``workflows.name`` or ``workflow_name``), which keeps one workflow's rows
on one node under Citus. Only the engine, the worker and the operator layer
(flows.ops) import the store (docs/layout.md). They import a job's module
(``from flows.store import steps as step_store``); this package itself
re-exports only the plumbing every one of them uses, below.
"""

from flows.store.connections import (
    ACTIVITY_WORK,
    ANY_WORK,
    CONNECT_TIMEOUT_SECONDS,
    REPLAY_WORK,
    TRANSIENT_ERRORS,
    AsyncConn,
    Conn,
    PoolTimeout,
    check_dsn,
    connect,
    connect_async,
    connect_bounded,
    connection_error,
    database_now,
    describe,
    listen,
    listen_async,
    log_error,
    notify,
    open_async_pool,
    open_pool,
    ping,
    refused_by_database,
    wait_notify_async,
    within_callers_transaction,
    wrapped,
)
from flows.store.statements import Statement, StepTransaction, arun, run

__all__ = [
    "ACTIVITY_WORK", "ANY_WORK", "CONNECT_TIMEOUT_SECONDS", "REPLAY_WORK", "TRANSIENT_ERRORS", "AsyncConn", "Conn",
    "PoolTimeout", "Statement", "StepTransaction", "arun", "check_dsn", "connect", "connect_async",
    "connect_bounded", "connection_error", "database_now", "describe", "listen", "listen_async", "log_error",
    "notify", "open_async_pool", "open_pool", "ping", "refused_by_database", "run", "wait_notify_async",
    "within_callers_transaction", "wrapped"
]
