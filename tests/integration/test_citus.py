"""On a Citus cluster (FLOWS_TEST_CITUS): migrations distribute the
workflow tables by their shard key, colocated, and leave the fleet's
metadata on the coordinator; a database migrated before it had the
extension is distributed afterwards with its rows; a shard moved to another
node keeps its workflows running."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from flows import Engine, Worker, migrate
from loadtest import citus
from tests import engine_app
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


def nodes_holding(conn: psycopg.Connection[Any], shard_value: str) -> list[tuple[str, int]]:
    """The nodes holding the shards of ``shard_value`` of every workflow table."""
    rows = conn.execute(
        "SELECT DISTINCT nodename, nodeport FROM citus_shards WHERE shardid IN"
        " (SELECT get_shard_id_for_distribution_column(t, %s::text) FROM unnest(%s::regclass[]) t)",
        (shard_value, list(SHARD_KEYS))).fetchall()
    return [(str(name), int(port)) for name, port in rows]


def test_the_workflow_tables_are_distributed_by_shard_key_and_colocated(db: psycopg.Connection[Any]) -> None:
    assert_distributed(db)
    # Colocated: one shard value's rows of every table sit in one shard group.
    assert len(nodes_holding(db, "loan-shard-1")) == 1


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


def _placement(conn: psycopg.Connection[Any], shard_value: str) -> tuple[int, str, int]:
    row = conn.execute(
        "SELECT shardid, nodename, nodeport FROM citus_shards WHERE table_name = 'workflows'::regclass"
        " AND shardid = get_shard_id_for_distribution_column('workflows', %s::text)", (shard_value,)).fetchone()
    assert row is not None
    return int(row[0]), str(row[1]), int(row[2])


@pytest.mark.parametrize("transfer_mode", ["block_writes", "force_logical"])
def test_a_shard_moved_to_another_node_keeps_its_waiting_workflow(
    db: psycopg.Connection[Any], engine: Engine, start_worker: Callable[..., Worker], transfer_mode: str,
) -> None:
    """Rebalancing (docs/citus.md): a shard group moved under a running fleet
    takes its parked workflow along; the workflow goes on on its new node."""
    start_worker(engine_app.ALL_WORKFLOWS, engine_app.ALL_ACTIVITIES)
    run = engine.start(engine_app.documents, ["identity", "income"])
    engine.send_signal(run.workflow_name, run.workflow_id, "doc-identity", {"id": "DL-1"})
    shard_value = run.workflow_name_sharded
    shard, host, port = _placement(db, shard_value)
    target = db.execute("SELECT nodename, nodeport FROM pg_dist_node WHERE groupid > 0 AND noderole = 'primary'"
                        " AND (nodename, nodeport) <> (%s::text, %s::int) LIMIT 1", (host, port)).fetchone()
    assert target is not None, "the cluster needs two worker nodes"
    db.execute("SELECT citus_move_shard_placement(%s::bigint, %s::text, %s::int, %s::text, %s::int,"
               " shard_transfer_mode => %s::citus.shard_transfer_mode)",
               (shard, host, port, target[0], target[1], transfer_mode))
    assert _placement(db, shard_value)[1:] == (target[0], target[1])
    engine.send_signal(run.workflow_name, run.workflow_id, "doc-income", {"id": "W2-2"})
    assert engine.result(run.workflow_name, run.workflow_id, timeout=30) == [{"id": "DL-1"}, {"id": "W2-2"}]
    # Every colocated table's shard of that value moved with it.
    assert nodes_holding(db, shard_value) == [(target[0], target[1])]
