"""The schema built from migrations/: applied once each, safely in parallel,
with the shard key leading every primary key and index."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg

from flows import migrate

TABLES = {"workflows": "name", "activities": "workflow_name", "history_events": "workflow_name",
          "timers": "workflow_name", "signals": "workflow_name", "task_queue": "workflow_name",
          "dead_letter_queue": "workflow_name"}


def test_concurrent_migrations_apply_each_file_exactly_once(blank_url: str) -> None:
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: migrate.migrate(blank_url), range(4)))
    files = [p.name for p in migrate.migration_files()]
    assert sorted(name for applied in results for name in applied) == files
    assert migrate.migrate(blank_url) == []
    with psycopg.connect(blank_url) as conn:
        assert conn.execute("SELECT name, checksum FROM flows_schema_migrations ORDER BY name").fetchall() == [
            (p.name, migrate.checksum(p)) for p in migrate.migration_files()]


def test_every_primary_key_and_index_leads_with_the_shard_key(db: psycopg.Connection[Any]) -> None:
    found = db.execute(
        "SELECT t.relname, i.relname, a.attname FROM pg_index x"
        " JOIN pg_class t ON t.oid = x.indrelid JOIN pg_class i ON i.oid = x.indexrelid"
        " JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = x.indkey[0]"
        " WHERE t.relname = ANY(%s)", (list(TABLES),)).fetchall()
    assert {table for table, _, _ in found} == set(TABLES)
    assert [(table, index) for table, index, first in found if first != TABLES[table]] == []


def test_every_table_carries_the_tenant(db: psycopg.Connection[Any]) -> None:
    have = {t for (t,) in db.execute(
        "SELECT table_name FROM information_schema.columns WHERE column_name = 'tenant_id'"
        " AND table_name = ANY(%s)", (list(TABLES),))}
    assert have == set(TABLES)
