"""flows/schema/current.sql, the schema as one readable file, is what the
migrations build: loaded into an empty database, it gives the same
catalogue as a fresh ``flows migrate`` and as an upgrade of the oldest
release fixture (tables, columns, defaults, constraints, indexes,
functions with their bodies, triggers, sequences, types), compared as a
normalized dump whose diff is the failure message."""

from __future__ import annotations

import difflib
import os
from importlib import resources
from typing import Any, Iterator

import psycopg
import pytest

from flows import migrate
from tests.conftest import RUN_ENV, create_database, drop_database
from tests.integration.test_upgrade import FIXTURE, frozen_files

SCHEMA_FILE = resources.files("flows") / "schema" / "current.sql"
IGNORED_TABLES = (migrate.TABLE,)  # the runner's own record, not part of the schema

# One line per fact (a function's definition: one line per line of it), in
# a stable order. Left out: the ignored tables, and what an extension owns
# (citus, or pg_stat_statements installed into public; Citus' own triggers
# on distributed tables).
OURS = """
    SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = 'public' AND NOT (c.relname = ANY (%(ignored)s))
    AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                    AND d.deptype = 'e')"""
NOT_EXTENSION = """NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = '{catalog}'::regclass AND d.objid = {oid}
                                  AND d.deptype = 'e')"""
CATALOGUE = {
    "relation": f"""
        SELECT c.relname || ' kind=' || c.relkind::text || ' persistence=' || c.relpersistence::text
               || coalesce(' options=' || array_to_string(c.reloptions, ','), '')
               || CASE WHEN c.relkind IN ('v', 'm') THEN ' AS ' || pg_get_viewdef(c.oid) ELSE '' END
        FROM pg_class c WHERE c.oid IN ({OURS}) AND c.relkind NOT IN ('i', 'I', 't')
        ORDER BY 1""",
    "column": f"""
        SELECT c.relname || ' #' || row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum) || ' ' || a.attname
               || ' ' || format_type(a.atttypid, a.atttypmod)
               || CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END
               || coalesce(' DEFAULT ' || pg_get_expr(d.adbin, d.adrelid), '')
               || CASE WHEN a.attidentity <> '' THEN ' IDENTITY ' || a.attidentity::text ELSE '' END
               || CASE WHEN a.attgenerated <> '' THEN ' GENERATED ' || a.attgenerated::text ELSE '' END
               || coalesce(' COLLATE ' || nullif(co.collname, 'default'), '')
        FROM pg_class c
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
        LEFT JOIN pg_collation co ON co.oid = a.attcollation
        WHERE c.oid IN ({OURS}) AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'c')
        ORDER BY c.relname, a.attnum""",
    "constraint": f"""
        SELECT c.relname || ' ' || k.conname || ': ' || pg_get_constraintdef(k.oid)
               || CASE WHEN k.convalidated THEN '' ELSE ' (not validated)' END
        FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
        WHERE c.oid IN ({OURS})
        AND k.contype <> 'n'  -- NOT NULL (PostgreSQL 18 lists them): in the columns' lines
        ORDER BY c.relname, k.conname""",
    "index": f"""
        SELECT pg_get_indexdef(x.indexrelid) FROM pg_index x JOIN pg_class c ON c.oid = x.indrelid
        JOIN pg_class i ON i.oid = x.indexrelid
        WHERE c.oid IN ({OURS})
        ORDER BY c.relname, i.relname""",
    "trigger": f"""
        SELECT pg_get_triggerdef(t.oid) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        WHERE c.oid IN ({OURS}) AND NOT t.tgisinternal
        AND {NOT_EXTENSION.format(catalog='pg_proc', oid='t.tgfoid')}
        ORDER BY c.relname, t.tgname""",
    "sequence": f"""
        SELECT s.sequencename || ' ' || s.data_type || ' start ' || s.start_value || ' increment '
               || s.increment_by || ' min ' || s.min_value || ' max ' || s.max_value || ' cycle ' || s.cycle
               || ' cache ' || s.cache_size
        FROM pg_sequences s WHERE s.schemaname = 'public' AND to_regclass(quote_ident(s.sequencename)) IN ({OURS})
        ORDER BY 1""",
    "type": f"""
        SELECT t.typname || ' ' || t.typtype::text || coalesce(' ' || (
                   SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder) FROM pg_enum e
                   WHERE e.enumtypid = t.oid), '')
               || coalesce(' ' || format_type(t.typbasetype, t.typtypmod), '')
        FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE n.nspname = 'public' AND t.typtype IN ('e', 'd', 'r', 'm')
        AND {NOT_EXTENSION.format(catalog='pg_type', oid='t.oid')}
        ORDER BY 1""",
    "function": f"""
        SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid)
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'public' AND p.prokind IN ('f', 'p')
        AND {NOT_EXTENSION.format(catalog='pg_proc', oid='p.oid')}
        ORDER BY 1""",
}


def catalogue(url: str) -> list[str]:
    """The database's schema as sorted lines, ``<kind> <fact>``."""
    lines: list[str] = []
    with psycopg.connect(url, autocommit=True) as conn:
        for kind, query in CATALOGUE.items():
            for row in conn.execute(query, {"ignored": list(IGNORED_TABLES)}):
                if kind == "function":
                    name, definition = row
                    lines += [f"function {name} | {line.rstrip()}" for line in definition.strip().splitlines()]
                else:
                    lines.append(f"{kind} {row[0]}")
    return lines


def differences(migrated: list[str], schema_file: list[str], migrated_label: str) -> str:
    """A unified diff of two catalogues ('' when equal), for a failure message."""
    return "\n".join(difflib.unified_diff(migrated, schema_file, migrated_label, "flows/schema/current.sql",
                                          n=2, lineterm=""))


def load_schema_file(url: str, text: str | None = None) -> None:
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        conn.execute(text if text is not None else SCHEMA_FILE.read_text())


@pytest.fixture(scope="module")
def schema_file_catalogue(worker_id: str) -> Iterator[list[str]]:
    """The catalogue of an empty database after current.sql (one per module)."""
    name = f"flows_schema_file_{os.environ[RUN_ENV]}_{worker_id}"
    url = create_database(name)
    try:
        load_schema_file(url)
        yield catalogue(url)
    finally:
        drop_database(name)


MISMATCH = ("flows/schema/current.sql and the migrations disagree (lines starting '-': only the migrated"
            " database has them; '+': only current.sql). Put a schema change in a new migration AND in current.sql:\n")


def test_a_fresh_migrate_equals_the_schema_file(db_url: str, schema_file_catalogue: list[str]) -> None:
    migrated = catalogue(db_url)
    assert any(line.startswith("function ") for line in migrated) and any(
        line.startswith("index ") for line in migrated), "the catalogue query found no functions or indexes"
    diff = differences(migrated, schema_file_catalogue, "migrations/ (fresh migrate)")
    assert not diff, MISMATCH + diff


def test_an_upgrade_from_the_oldest_release_equals_the_schema_file(
    blank_url: str, schema_file_catalogue: list[str]
) -> None:
    with psycopg.connect(blank_url, autocommit=True) as conn, conn.transaction():  # as test_upgrade builds it
        conn.execute((FIXTURE / "schema_migrations.sql").read_bytes())
        for path in frozen_files():
            conn.execute(path.read_bytes())
        conn.execute((FIXTURE / "rows.sql").read_bytes())
    assert migrate.migrate(blank_url), "nothing to upgrade"
    diff = differences(catalogue(blank_url), schema_file_catalogue, f"migrations/ (upgraded from {FIXTURE.name})")
    assert not diff, MISMATCH + diff


def test_the_comparison_sees_any_drift(blank_url: str, schema_file_catalogue: list[str]) -> None:
    """current.sql with a default, an index and a line of a function body
    changed: each shows in the diff."""
    text = SCHEMA_FILE.read_text()
    edits = [
        ("version          integer     NOT NULL DEFAULT 1,", "version          integer     NOT NULL DEFAULT 2,"),
        ("CREATE INDEX signals_by_workflow ON signals (workflow_name, workflow_id);",
         "CREATE INDEX signals_by_workflow ON signals (workflow_name, workflow_id, id);"),
        ("    UPDATE worker_heartbeats SET last_beat = now() WHERE owner = p_owner;",
         "    UPDATE worker_heartbeats SET last_beat = clock_timestamp() WHERE owner = p_owner;"),
    ]
    for old, new in edits:
        assert text.count(old) == 1, f"current.sql no longer holds {old!r}: update this test"
        text = text.replace(old, new)
    load_schema_file(blank_url, text)
    diff = differences(catalogue(blank_url), schema_file_catalogue, "an edited copy of current.sql")
    assert "workflows #4 version integer NOT NULL DEFAULT 2" in diff
    assert "signals_by_workflow ON public.signals USING btree (workflow_name, workflow_id, id)" in diff
    assert "flows_beat(text,text[],text[],text[],double precision) |     UPDATE worker_heartbeats SET last_beat = " \
           "clock_timestamp()" in diff
