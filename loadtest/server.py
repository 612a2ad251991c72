"""Which PostgreSQL server a run uses.

By default the one of DATABASE_URL, else the shared embedded development
server. ``--own-server`` starts an embedded server of the harness's own
under ``loadtest/results/pgdata`` with pg_stat_statements preloaded (the
per-statement breakdown) and track_commit_timestamp on (exact commit times
for the wake-up figures), settings a shared server cannot take without a
restart. It is stopped at the end of the run if the run started it.
``--nested-statements`` also counts the statements the engine's PL/pgSQL
functions run inside (``pg_stat_statements.track = all``).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import psycopg

from flows import embedded

OWN_DATA_DIR = Path(__file__).resolve().parent / "results" / "pgdata"
OWN_SETTINGS = {"shared_preload_libraries": "pg_stat_statements", "track_commit_timestamp": "on"}


@contextlib.contextmanager
def server_url(own: bool, nested: bool = False) -> Iterator[str]:
    if not own:
        yield embedded.database_url()
        return
    was_running = embedded.is_running(OWN_DATA_DIR)
    url = embedded.start(OWN_DATA_DIR)
    try:
        settings = {**OWN_SETTINGS, "pg_stat_statements.track": "all" if nested else "top"}
        if _configure(url, settings):  # preloading takes a restart
            embedded.stop(OWN_DATA_DIR)
            url = embedded.start(OWN_DATA_DIR)
        yield url
    finally:
        if not was_running:
            embedded.stop(OWN_DATA_DIR)


def _configure(url: str, settings: dict[str, str]) -> bool:
    """ALTER SYSTEM what differs from ``settings``; True if anything changed."""
    changed = False
    with psycopg.connect(url, autocommit=True) as conn:
        for name, value in settings.items():
            row = conn.execute("SELECT current_setting(%s, true)", (name,)).fetchone()  # unset until preloaded
            if row is None or row[0] != value:
                conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")  # fixed names and values of ours
                changed = True
    return changed
