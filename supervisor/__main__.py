"""``python -m supervisor --app MODULE [--workers N]``, also ``flows supervise``.

Every option falls back to an environment variable, then a default:

    --app               FLOWS_APP                   (required) module defining the workflows and activities
    --workers           FLOWS_WORKERS               the CPU count, never more than the shards
    --shards            FLOWS_SHARDS                3
    --concurrency       FLOWS_ACTIVITY_CONCURRENCY  8 activities at once per worker
    --graceful-timeout  FLOWS_GRACEFUL_TIMEOUT      30 s for activities in flight at shutdown
    --stale-seconds     FLOWS_STALE_SECONDS         30 s without a heartbeat = a dead worker

The database is DATABASE_URL, else the embedded development server.
"""

from __future__ import annotations

import argparse
import os
import sys

from flows import embedded, sharding
from supervisor import logs
from supervisor.arbiter import Arbiter, FleetConfig


def _env(name: str, default: object) -> str:
    return os.environ.get(name) or str(default)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m supervisor", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--app", default=os.environ.get("FLOWS_APP"), help="module that defines the workflows and activities")
    p.add_argument("--workers", type=int, default=int(_env("FLOWS_WORKERS", os.cpu_count() or 1)))
    p.add_argument("--shards", type=int, default=int(_env("FLOWS_SHARDS", sharding.DEFAULT_SHARDS)))
    p.add_argument("--concurrency", type=int, default=int(_env("FLOWS_ACTIVITY_CONCURRENCY", 8)))
    p.add_argument("--graceful-timeout", type=float, default=float(_env("FLOWS_GRACEFUL_TIMEOUT", 30)))
    p.add_argument("--stale-seconds", type=float, default=float(_env("FLOWS_STALE_SECONDS", 30)))
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
    logs.setup()
    if os.getcwd() not in sys.path:  # find the app from the current folder, as `python -m` would
        sys.path.insert(0, os.getcwd())
    config = FleetConfig(
        app=args.app,
        dsn=os.environ.get("DATABASE_URL") or embedded.database_url(),
        workers=min(args.workers, args.shards),
        shards=args.shards,
        concurrency=args.concurrency,
        graceful_timeout=args.graceful_timeout,
        stale_seconds=args.stale_seconds,
    )
    return Arbiter(config).run()


if __name__ == "__main__":
    sys.exit(main())
