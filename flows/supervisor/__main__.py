"""``flows supervise --app MODULE [--workers N]``, also ``python -m flows.supervisor``.

Every option falls back to an environment variable, then a default:

    --app               FLOWS_APP                   (required) module defining the workflows and activities
    --workers           FLOWS_WORKERS               the CPU count, never more than the shards
    --shards            FLOWS_SHARDS                3
    --concurrency       FLOWS_ACTIVITY_CONCURRENCY  8 activities at once per worker
    --graceful-timeout  FLOWS_GRACEFUL_TIMEOUT      30 s for activities in flight at shutdown
    --stale-seconds     FLOWS_STALE_SECONDS         30 s without a heartbeat = a dead worker
    --metrics-port      FLOWS_METRICS_PORT          off: serve Prometheus metrics on /metrics at this port

The database is DATABASE_URL, else the embedded development server.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from flows import embedded, extras, metrics, sharding
from flows.errors import MissingExtra
from flows.supervisor import logs
from flows.supervisor.arbiter import Arbiter, FleetConfig

log = logging.getLogger("supervisor")


def _env(name: str, default: object) -> str:
    return os.environ.get(name) or str(default)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flows supervise", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--app", default=os.environ.get("FLOWS_APP"), help="module that defines the workflows and activities")
    p.add_argument("--workers", type=int, default=int(_env("FLOWS_WORKERS", os.cpu_count() or 1)))
    p.add_argument("--shards", type=int, default=int(_env("FLOWS_SHARDS", sharding.DEFAULT_SHARDS)))
    p.add_argument("--concurrency", type=int, default=int(_env("FLOWS_ACTIVITY_CONCURRENCY", 8)))
    p.add_argument("--graceful-timeout", type=float, default=float(_env("FLOWS_GRACEFUL_TIMEOUT", 30)))
    p.add_argument("--stale-seconds", type=float, default=float(_env("FLOWS_STALE_SECONDS", 30)))
    p.add_argument("--metrics-port", type=int, default=int(_env("FLOWS_METRICS_PORT", 0)),
                   help="serve the fleet's Prometheus metrics on http://0.0.0.0:PORT/metrics (0: off)")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if not args.app:
        p.error("--app (or FLOWS_APP) is required")
    for name in ("workers", "shards", "concurrency"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    if args.graceful_timeout < 0 or args.stale_seconds <= 0:
        p.error("--graceful-timeout must be >= 0 and --stale-seconds > 0")
    if not 0 <= args.metrics_port <= 65535:
        p.error("--metrics-port (FLOWS_METRICS_PORT) must be a TCP port, 1..65535 (0: off)")
    try:
        if args.metrics_port:
            # Not imported yet: it must first see the fleet's metrics directory (below).
            extras.check("prometheus_client", "metrics", "--metrics-port (FLOWS_METRICS_PORT)")
        dsn = os.environ.get("DATABASE_URL") or embedded.database_url()
    except MissingExtra as exc:
        p.error(str(exc))
    logs.setup()
    if os.getcwd() not in sys.path:  # find the app from the current folder, as `python -m` would
        sys.path.insert(0, os.getcwd())
    config = FleetConfig(
        app=args.app,
        dsn=dsn,
        workers=min(args.workers, args.shards),
        shards=args.shards,
        concurrency=args.concurrency,
        graceful_timeout=args.graceful_timeout,
        stale_seconds=args.stale_seconds,
    )
    if not args.metrics_port:
        return Arbiter(config).run()
    # Before the first worker forks: each writes its metrics in this fleet's own, fresh directory.
    directory = metrics.fresh_directory("fleet")
    try:
        metrics.enable()
        try:
            server = metrics.serve(args.metrics_port, config.dsn)
        except OSError as exc:
            p.error(f"--metrics-port (FLOWS_METRICS_PORT) {args.metrics_port}: {exc.strerror or exc}")
        log.info("metrics-serving url=http://0.0.0.0:%s/metrics directory=%s", args.metrics_port, directory)
        try:
            return Arbiter(config).run()
        finally:
            server.shutdown()
    finally:
        metrics.remove_directory(directory)


if __name__ == "__main__":
    sys.exit(main())
