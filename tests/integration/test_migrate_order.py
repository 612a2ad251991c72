"""migrate.py applies files in name order, each once: a file not applied
yet that sorts before one already applied (a hot-fix numbered into the
past) is refused by name, with the applied file it sorts before, and
nothing runs; the same file under a name that sorts last is applied."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

import flows
from flows import migrate
from tests.conftest import ROOT

HOTFIX = "054a_hotfix.sql"  # between two released files


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """A copy of migrations/ that a test may add to."""
    directory = tmp_path / "migrations"
    shutil.copytree(Path(str(migrate.MIGRATIONS_DIR)), directory)
    return directory


def applied(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [name for (name,) in conn.execute("SELECT name FROM flows_schema_migrations ORDER BY name")]


def table_exists(url: str, name: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()
        return bool(row and row[0])


def test_a_pending_file_that_sorts_before_an_applied_one_is_refused_and_nothing_runs(
    blank_url: str, files: Path
) -> None:
    migrate.migrate(blank_url, files)
    before = applied(blank_url)
    last = before[-1]
    assert HOTFIX < last
    (files / HOTFIX).write_text("CREATE TABLE hotfix (id int);\n")
    (files / "999_later.sql").write_text("CREATE TABLE later (id int);\n")

    with pytest.raises(flows.MigrationChanged) as refused:
        migrate.migrate(blank_url, files)
    assert refused.value.files == [HOTFIX]
    message = str(refused.value)
    assert str(files / HOTFIX) in message and f"sort before {last}, which this database has applied" in message
    assert applied(blank_url) == before
    assert not table_exists(blank_url, "hotfix") and not table_exists(blank_url, "later")

    with psycopg.connect(blank_url, autocommit=True) as conn:  # the supervisor's check at start-up
        assert migrate.status(conn, files).out_of_order == [HOTFIX]
        with pytest.raises(flows.MigrationChanged, match=HOTFIX):
            migrate.check(conn, files)

    (files / HOTFIX).rename(files / "998_hotfix.sql")  # numbered after every released file
    assert migrate.migrate(blank_url, files) == ["998_hotfix.sql", "999_later.sql"]
    assert table_exists(blank_url, "hotfix")


def test_flows_migrate_names_both_files_without_a_traceback(db_url: str, files: Path) -> None:
    (files / HOTFIX).write_text("CREATE TABLE hotfix (id int);\n")
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "migrate"], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "DATABASE_URL": db_url, "FLOWS_MIGRATIONS_DIR": str(files)},
    )
    assert done.returncode == 1, done.stderr
    last = migrate.migration_files()[-1].name
    assert f"error: migration file(s) not applied yet sort before {last}" in done.stderr
    assert str(files / HOTFIX) in done.stderr and "Traceback" not in done.stderr
