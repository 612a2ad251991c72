"""``flows``: migrate, run a worker, inspect and poke workflows.

The database is ``DATABASE_URL``, or the embedded server when it is unset.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from typing import Any

from flows import codec, embedded, store
from flows.engine import Engine
from flows.errors import FlowsError

LOG_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"


def _default_logging() -> None:
    """Log INFO and up (``FLOWS_LOG_LEVEL``) to stderr in LOG_FORMAT, unless
    logging is configured already (by the app module ``flows worker`` imports)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=os.environ.get("FLOWS_LOG_LEVEL", "INFO"), format=LOG_FORMAT, stream=sys.stderr)


def _engine(args: argparse.Namespace) -> Engine:
    return Engine(embedded.database_url(), shards=args.shards)


def _print(value: Any) -> None:
    print(json.dumps(codec.to_builtins(value), indent=2, default=str))


def cmd_migrate(args: argparse.Namespace) -> int:
    with _engine(args) as engine:
        applied = engine.migrate()
    print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from flows.worker import Worker

    importlib.import_module(args.app)
    _default_logging()  # after the app, which may configure logging its own way
    shards = [int(k) for k in args.shard_indices.split(",")] if args.shard_indices else None
    with _engine(args) as engine:
        # An unreachable database fails here, named, instead of being retried for ever.
        store.connect(engine.dsn, timeout_seconds=store.CONNECT_TIMEOUT_SECONDS).close()
        Worker(engine, shards=shards, concurrency=args.concurrency).run()
    return 0


def cmd_supervise(args: argparse.Namespace) -> int:
    supervisor = importlib.import_module("supervisor.__main__")
    return int(supervisor.main(args.rest) or 0)


def cmd_status(args: argparse.Namespace) -> int:
    with _engine(args) as engine, engine.connection() as conn:
        _print({"workflows": store.count_workflows(conn), "tasks": store.count_tasks(conn)})
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with _engine(args) as engine:
        status = engine.query(args.name, args.id, tenant_id=args.tenant)
        with engine.connection() as conn:
            state = store.replay_state(conn, status.name, status.id)
    events = (state.events if state is not None else None) or []
    _print({"workflow": status, "history": [{"seq": s, "type": t, "data": codec.decode(d)} for s, t, d in events]})
    return 0


def cmd_signal(args: argparse.Namespace) -> int:
    payload = json.loads(args.payload) if args.payload else None
    with _engine(args) as engine:
        signal_id = engine.send_signal(args.name, args.id, args.signal, payload, tenant_id=args.tenant)
    print(signal_id)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with _engine(args) as engine:
        print("cancelled" if engine.cancel(args.name, args.id, tenant_id=args.tenant) else "already ended")
    return 0


def cmd_devdb(args: argparse.Namespace) -> int:
    if args.action == "start":
        print(embedded.start())
    elif args.action == "status":
        running = embedded.is_running()
        print("running" if running else "stopped")
        return 0 if running else 1
    else:
        embedded.stop()
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flows", description=__doc__)
    p.add_argument("--shards", type=int, default=None, help="shard count (default FLOWS_SHARDS or 3)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="apply pending migrations").set_defaults(fn=cmd_migrate)
    w = sub.add_parser("worker", help="run one worker process in the foreground")
    w.add_argument("--app", default=os.environ.get("FLOWS_APP"), required="FLOWS_APP" not in os.environ,
                   help="module that defines the workflows and activities")
    w.add_argument("--shard-indices", default=None, help="comma-separated shard indices (default: all)")
    w.add_argument("--concurrency", type=int, default=int(os.environ.get("FLOWS_ACTIVITY_CONCURRENCY", "8")))
    w.set_defaults(fn=cmd_worker)
    s = sub.add_parser("supervise", help="run the worker fleet (python -m supervisor)", add_help=False)
    s.add_argument("rest", nargs=argparse.REMAINDER)
    s.set_defaults(fn=cmd_supervise)
    sub.add_parser("status", help="workflow and task counts per shard").set_defaults(fn=cmd_status)
    for name, fn, extra in (("show", cmd_show, ()), ("signal", cmd_signal, ("signal", "payload")),
                            ("cancel", cmd_cancel, ())):
        c = sub.add_parser(name)
        c.add_argument("name", help="base workflow name")
        c.add_argument("id", help="workflow id")
        for arg in extra:
            c.add_argument(arg, nargs="?" if arg == "payload" else None)
        c.add_argument("--tenant", default=None)
        c.set_defaults(fn=fn)
    d = sub.add_parser("devdb", help="start, stop or check the embedded PostgreSQL (under FLOWS_PGDATA or ./.pgdata)")
    d.add_argument("action", choices=["start", "stop", "status"])
    d.set_defaults(fn=cmd_devdb)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, unknown = parser().parse_known_args(argv)
    if args.command not in ("worker", "supervise"):  # those set up logging once the app is imported
        _default_logging()
    if args.command == "supervise":  # everything after the word is the supervisor's (REMAINDER drops options)
        args.rest = argv[argv.index("supervise") + 1:]
        if args.shards is not None:
            args.rest = ["--shards", str(args.shards), *args.rest]
    elif unknown:
        parser().error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return int(args.fn(args))
    except FlowsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
