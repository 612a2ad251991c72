"""On a Citus cluster (FLOWS_TEST_CITUS): migrations distribute the
workflow tables by their shard key, colocated, and leave the fleet's
metadata on the coordinator; a database migrated before it had the
extension is distributed afterwards with its rows."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from flows import migrate
from loadtest import citus
from tests.conftest import ADMIN_URL_ENV, CITUS_HOWTO, RUN_ENV, _citus_workers, create_database, drop_database, on_citus

pytestmark = pytest.mark.skipif(not on_citus(), reason=CITUS_HOWTO)

SHARD_KEYS = {"workflows": "name", "activities": "workflow_name", "history_events": "workflow_name",
              "timers": "workflow_name", "signals": "workflow_name", "task_queue": "workflow_name",
              "dead_letter_queue": "workflow_name", "children": "workflow_name"}
CITUS_MIGRATION = "050_citus.sql"
CITUS_MIGRATIONS = ("050_citus.sql", "051_citus_steps.sql")  # what distributes the tables, run again by hand


def distributed(conn: psycopg.Connection[Any]) -> dict[str, tuple[str, str, int]]:
    """table -> (type, distribution column, colocation id) of Citus' tables."""
    rows = conn.execute(
        "SELECT table_name::text, citus_table_type, distribution_column, colocation_id FROM citus_tables").fetchall()
    return {name: (kind, column, colocation) for name, kind, column, colocation in rows}


def assert_distributed(conn: psycopg.Connection[Any]) -> None:
    tables = distributed(conn)
    assert {name: (kind, column) for name, (kind, column, _) in tables.items()} == {
        name: ("distributed", column) for name, column in SHARD_KEYS.items()}
    assert len({colocation for _, _, colocation in tables.values()}) == 1  # all with workflows


def test_the_workflow_tables_are_distributed_by_shard_key_and_colocated(db: psycopg.Connection[Any]) -> None:
    assert_distributed(db)
    # Colocated: one shard value's rows of every table sit in one shard group.
    nodes = db.execute(
        "SELECT DISTINCT nodename, nodeport FROM citus_shards WHERE shardid IN"
        " (SELECT get_shard_id_for_distribution_column(t, 'loan-shard-1') FROM unnest(%s::regclass[]) t)",
        (list(SHARD_KEYS),)).fetchall()
    assert len(nodes) == 1


def test_fleet_metadata_stays_on_the_coordinator(db: psycopg.Connection[Any]) -> None:
    found = db.execute(
        "SELECT logicalrelid::text FROM pg_dist_partition"
        " WHERE logicalrelid IN ('worker_heartbeats'::regclass, 'flows_schema_migrations'::regclass)").fetchall()
    assert found == []


@pytest.fixture
def database(worker_id: str) -> Iterator[str]:
    name = f"flows_citus_{os.environ[RUN_ENV]}_{worker_id}"
    drop_database(name)
    yield name
    drop_database(name)


def insert_rows(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO workflows (name, id, tenant_id, status) SELECT 'loan-shard-' || g % 3, gen_random_uuid(),"
            " gen_random_uuid(), 'running' FROM generate_series(1, 300) g")
        conn.execute(
            "INSERT INTO task_queue (workflow_name, id, workflow_id, tenant_id, task_type)"
            " SELECT name, gen_random_uuid(), id, tenant_id, 'workflow' FROM workflows")


def assert_rows_kept(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        assert_distributed(conn)
        assert conn.execute("SELECT count(*) FROM workflows").fetchone() == (300,)
        assert conn.execute("SELECT count(*) FROM task_queue JOIN workflows w"
                            " ON w.name = workflow_name AND w.id = workflow_id").fetchone() == (300,)
        # The copies the coordinator kept while distributing are emptied.
        sizes = conn.execute("SELECT sum(pg_relation_size(t)) FROM unnest(%s::regclass[]) t",
                             (list(SHARD_KEYS),)).fetchone()
        assert sizes == (0,)


def test_migrating_a_database_with_rows_distributes_them(database: str, tmp_path: Path) -> None:
    url = create_database(database)
    earlier = tmp_path / "migrations"
    earlier.mkdir()
    for path in migrate.migration_files():
        if path.name < CITUS_MIGRATION:
            shutil.copy(path, earlier)
    migrate.migrate(url, earlier)
    insert_rows(url)
    assert CITUS_MIGRATION in migrate.migrate(url)
    assert_rows_kept(url)


def test_a_database_migrated_before_it_had_citus_is_distributed_by_running_the_migration_again(
    database: str,
) -> None:
    admin = os.environ[ADMIN_URL_ENV]
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    url = make_conninfo(admin, dbname=database)
    assert CITUS_MIGRATION in migrate.migrate(url)  # nothing to do without the extension
    insert_rows(url)
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'citus'").fetchone() == (0,)
    citus.create_database(admin, _citus_workers(), database)  # the extension on every node, nodes registered
    with psycopg.connect(url, autocommit=True) as conn:  # what `psql -f migrations/05*_citus*.sql` does
        conn.execute("SET citus.multi_shard_modify_mode TO 'sequential'")  # psql sends statements one by one
        for name in CITUS_MIGRATIONS:
            conn.execute((migrate.MIGRATIONS_DIR / name).read_bytes())
    assert_rows_kept(url)
