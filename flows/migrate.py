"""Apply ``flows/migrations/*.sql`` once each, in name order, recorded in a table.

The files are package data of ``flows`` (read with ``importlib.resources``),
so a wheel, an sdist and a checkout migrate alike; ``FLOWS_MIGRATIONS_DIR``
points elsewhere.

``flows_schema_migrations`` records each applied file's name and the sha256
of its bytes. A file applied once must never change (the database would not
hold what the file now says): a changed one is refused, by name, before
anything runs. So is a file not applied yet that sorts before one already
applied (a hot-fix numbered into the past): that database would run the two
in another order than a fresh one. A table left by a release that recorded
no checksums gains the column, and its rows take the current files'
checksums.

Safe when several processes migrate at once: a transaction-level advisory
lock serialises them, and the second finds nothing left to do.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import psycopg

from flows import store
from flows.errors import ConfigurationError, MigrationChanged

log = logging.getLogger("flows.migrate")

MIGRATIONS_DIR: Traversable = (
    Path(os.environ["FLOWS_MIGRATIONS_DIR"]) if os.environ.get("FLOWS_MIGRATIONS_DIR")
    else resources.files("flows") / "migrations"
)
_LOCK_KEY = 0x666C6F7773  # "flows"
TABLE = "flows_schema_migrations"


def migration_files(directory: Traversable | None = None) -> list[Traversable]:
    """The migration files in name order; ConfigurationError if there are none."""
    directory = directory or MIGRATIONS_DIR
    files = directory.iterdir() if directory.is_dir() else ()
    found = sorted((p for p in files if p.name.endswith(".sql")), key=lambda p: p.name)
    if not found:
        raise ConfigurationError(f"no migration files (*.sql) in {directory} (FLOWS_MIGRATIONS_DIR)")
    return found


def checksum(path: Traversable) -> str:
    """The sha256 of a file's bytes, as recorded when it is applied."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class Status:
    """How a database's applied migrations compare with the files."""

    pending: list[str]  # files not applied yet, in order
    changed: list[str]  # applied files whose bytes differ from what was applied
    unchecked: list[str]  # applied files with no checksum recorded yet (an older release applied them)
    out_of_order: list[str] = field(default_factory=list)  # pending files that sort before an applied one


def _table_state(conn: psycopg.Connection) -> str:
    """``absent``, ``unchecked`` (a table without the checksum column, as
    releases before checksums left it) or ``current``."""
    row = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL, EXISTS (SELECT 1 FROM pg_attribute"
        " WHERE attrelid = to_regclass(%s) AND attname = 'checksum' AND NOT attisdropped)",
        (TABLE, TABLE),
    ).fetchone()
    assert row is not None
    return "current" if row[1] else "unchecked" if row[0] else "absent"


def _compare(conn: psycopg.Connection, files: dict[str, str]) -> tuple[Status, str, str | None]:
    """The status, the table's state and the applied name that sorts last."""
    state = _table_state(conn)
    recorded: dict[str, str | None] = {}
    if state == "current":
        recorded = dict(conn.execute(f"SELECT name, checksum FROM {TABLE}").fetchall())
    elif state == "unchecked":
        recorded = {name: None for (name,) in conn.execute(f"SELECT name FROM {TABLE}")}
    # Applied names without a file are left alone: a newer release's files,
    # or ones an older release folded into another.
    pending = [name for name in files if name not in recorded]
    last = max(recorded, default=None)
    return Status(
        pending=pending,
        changed=[name for name, digest in recorded.items() if digest is not None and files.get(name, digest) != digest],
        unchecked=[name for name, digest in recorded.items() if digest is None and name in files],
        out_of_order=[name for name in pending if last is not None and name < last],
    ), state, last


def _refuse(changed: list[str], directory: Traversable) -> MigrationChanged:
    names = ", ".join(str(directory / name) for name in changed)
    return MigrationChanged(
        f"applied migration file(s) changed since they were applied to this database: {names}."
        " A migration file must never change once applied: restore it as it was released"
        " (e.g. `git checkout <release> -- migrations/<file>`) and put the change in a new file",
        files=changed,
    )


def _refusal(found: Status, last: str | None, directory: Traversable) -> MigrationChanged | None:
    """Why the files cannot be applied to this database, if they cannot."""
    if found.changed:
        return _refuse(found.changed, directory)
    if found.out_of_order:
        names = ", ".join(str(directory / name) for name in found.out_of_order)
        return MigrationChanged(
            f"migration file(s) not applied yet sort before {last}, which this database has applied: {names}."
            f" Files apply once each in name order, so this database would run them after {last} and a fresh"
            " one before it: give a new file a name that sorts after every released one (the next free number)",
            files=found.out_of_order,
        )
    return None


def status(conn: psycopg.Connection, directory: Traversable | None = None) -> Status:
    """Compare the database with the files, writing nothing (for a check at start-up)."""
    directory = directory or MIGRATIONS_DIR
    return _compare(conn, {p.name: checksum(p) for p in migration_files(directory)})[0]


def check(conn: psycopg.Connection, directory: Traversable | None = None) -> list[str]:
    """Raise MigrationChanged naming every applied file that changed, or
    every pending file that sorts before an applied one; return the files
    still pending (an empty list: the database is up to date)."""
    directory = directory or MIGRATIONS_DIR
    found, _, last = _compare(conn, {p.name: checksum(p) for p in migration_files(directory)})
    refusal = _refusal(found, last, directory)
    if refusal is not None:
        raise refusal
    return found.pending


def apply(conn: psycopg.Connection, directory: Traversable | None = None) -> list[str]:
    """Apply what is pending on ``conn`` (not in a transaction), all or
    nothing; return the names applied. Raises MigrationChanged, having run
    nothing, when an applied file changed or a pending one sorts before an
    applied one."""
    directory = directory or MIGRATIONS_DIR
    texts = {p.name: p.read_bytes() for p in migration_files(directory)}
    files = {name: hashlib.sha256(text).hexdigest() for name, text in texts.items()}
    applied: list[str] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        # On Citus, one connection per node for the whole transaction: DDL
        # and function propagation after a parallel multi-shard operation (a
        # table's rows copied into its shards) are refused otherwise.
        conn.execute(
            "SELECT set_config('citus.multi_shard_modify_mode', 'sequential', true)"
            " FROM pg_extension WHERE extname = 'citus'"
        )
        found, state, last = _compare(conn, files)
        refusal = _refusal(found, last, directory)
        if refusal is not None:
            raise refusal
        if state == "absent":
            conn.execute(
                f"CREATE TABLE {TABLE} (name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now(),"
                " checksum text)"  # sha256 hex of the file's bytes; NULL only for a row no file matches
            )
        elif state == "unchecked":
            conn.execute(f"ALTER TABLE {TABLE} ADD COLUMN checksum text")
            log.info("migrations-table-upgraded table=%s", TABLE)
        for name in found.unchecked:  # applied before checksums existed: trust today's file
            conn.execute(f"UPDATE {TABLE} SET checksum = %s WHERE name = %s", (files[name], name))
        for name in found.pending:
            conn.execute(texts[name])  # trusted files of ours, many statements
            conn.execute(f"INSERT INTO {TABLE} (name, checksum) VALUES (%s, %s)", (name, files[name]))
            log.info("migrated name=%s", name)
            applied.append(name)
    return applied


def migrate(dsn: str, directory: Traversable | None = None) -> list[str]:
    """Apply what is pending on the database at ``dsn``; DatabaseError naming
    the host if it cannot be reached."""
    with store.connect(dsn, autocommit=True, timeout_seconds=store.CONNECT_TIMEOUT_SECONDS) as conn:
        return apply(conn, directory)
