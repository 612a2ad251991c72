"""Apply ``migrations/*.sql`` once each, in name order, recorded in a table.

Safe when several processes migrate at once: a transaction-level advisory
lock serialises them, and the second finds nothing left to do.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import psycopg

log = logging.getLogger("flows.migrate")

MIGRATIONS_DIR = Path(os.environ.get("FLOWS_MIGRATIONS_DIR") or Path(__file__).resolve().parent.parent / "migrations")
_LOCK_KEY = 0x666C6F7773  # "flows"


def migration_files(directory: Path = MIGRATIONS_DIR) -> list[Path]:
    return sorted(directory.glob("*.sql"))


def apply(conn: psycopg.Connection, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply what is pending on ``conn`` (not in a transaction); return the names applied."""
    applied: list[str] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS flows_schema_migrations ("
            " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute("SELECT name FROM flows_schema_migrations")}
        for path in migration_files(directory):
            if path.name in done:
                continue
            conn.execute(path.read_text().encode())  # trusted files of ours, many statements
            conn.execute("INSERT INTO flows_schema_migrations (name) VALUES (%s)", (path.name,))
            log.info("migrated name=%s", path.name)
            applied.append(path.name)
    return applied


def migrate(dsn: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return apply(conn, directory)
