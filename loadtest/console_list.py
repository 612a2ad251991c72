"""``python -m loadtest.console_list``: how long the console's workflow
list takes to render a page of 1,000 rows out of 100,000 workflows.

Fills a fresh database (a bulk SQL insert: rows only, no history), then
requests the page through the Flask test client (the whole request: the
console's view, the engine, the database, the template), a number of times
per variant, and prints the median, p90 and fastest. The database is
DATABASE_URL's server, else the embedded one; the database is dropped at
the end.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import time

from loadtest import db
from flows import embedded


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.console_list", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workflows", type=int, default=100_000, help="rows to fill (default %(default)s)")
    p.add_argument("--repeat", type=int, default=20, help="requests per variant (default %(default)s)")
    args = p.parse_args(argv)

    from webapp import create_app
    from webapp.extension import client

    server_url = os.environ.get("DATABASE_URL") or embedded.database_url()
    server = db.Server(server_url)
    name = f"lt_console_{os.getpid()}"
    server.conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
    server.conn.execute(f'CREATE DATABASE "{name}"')
    dsn = db.dsn_for(server_url, name)
    try:
        from flows import migrate

        migrate.migrate(dsn)
        started = time.perf_counter()
        db.fill_workflows(dsn, args.workflows)
        print(f"filled {args.workflows:,} workflows in {time.perf_counter() - started:.1f} s")
        app = create_app({"DATABASE_URL": dsn, "SHARDS": 3})  # FLOWS_API_KEYS unset: no authentication
        http = app.test_client()
        first = http.get("/console/?limit=1000")
        cursor = re.search(r'after=([^"&]+)', first.get_data(as_text=True))
        variants = {
            "first page, 1,000 rows": "/console/?limit=1000",
            "second page (keyset), 1,000 rows": f"/console/?limit=1000&after={cursor.group(1) if cursor else ''}",
            "running only, 1,000 rows": "/console/?limit=1000&status=running",
            "waiting for a signal, 1,000 rows": "/console/?limit=1000&waiting_for=signal",
            "first page, 50 rows": "/console/",
        }
        print(f"{'variant':36} {'median ms':>10} {'p90 ms':>8} {'min ms':>8} {'rows':>5}")
        for label, url in variants.items():
            times = []
            rows = 0
            for i in range(args.repeat + 2):
                t0 = time.perf_counter()
                response = http.get(url)
                elapsed = (time.perf_counter() - t0) * 1000
                assert response.status_code == 200, response.status_code
                if i >= 2:  # two warm-ups: pool, template compilation, plan cache
                    times.append(elapsed)
                rows = response.get_data(as_text=True).count('class="mono">')
            times.sort()
            p90 = times[min(len(times) - 1, int(len(times) * 0.9))]
            print(f"{label:36} {statistics.median(times):10.1f} {p90:8.1f} {times[0]:8.1f} {rows:5}")
        client.close(app)
    finally:
        server.conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        server.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
