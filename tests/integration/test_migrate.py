"""migrate.py's record of applied files: checksums, refusing a changed
file by name, upgrading the table older releases left, and migrating from
several processes at once."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

import flows
from flows import Engine, migrate
from tests.conftest import ROOT

CHANGED = "005_step_functions.sql"
# The table as releases before checksums created it (migrate.py at 5d85d34).
OLD_TABLE = "CREATE TABLE flows_schema_migrations (name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """A copy of migrations/ that a test may change."""
    directory = tmp_path / "migrations"
    shutil.copytree(migrate.MIGRATIONS_DIR, directory)
    return directory


def recorded(url: str) -> dict[str, str | None]:
    with psycopg.connect(url) as conn:
        return dict(conn.execute("SELECT name, checksum FROM flows_schema_migrations").fetchall())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def change(directory: Path) -> None:
    with (directory / CHANGED).open("a") as f:
        f.write("-- an innocent-looking comment is a change too\n")


def add_file(directory: Path) -> Path:
    path = directory / "999_later.sql"
    path.write_text("CREATE TABLE later (id int);\n")
    return path


def table_exists(url: str, name: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()
        return bool(row and row[0])


def test_each_applied_file_is_recorded_with_the_sha256_of_its_bytes(blank_url: str, files: Path) -> None:
    migrate.migrate(blank_url, files)
    assert recorded(blank_url) == {p.name: sha256(p) for p in sorted(files.glob("*.sql"))}


def test_a_changed_applied_file_is_refused_by_name_and_nothing_runs(blank_url: str, files: Path) -> None:
    migrate.migrate(blank_url, files)
    before = recorded(blank_url)
    change(files)
    add_file(files)
    with pytest.raises(flows.MigrationChanged) as refused:
        migrate.migrate(blank_url, files)
    assert refused.value.files == [CHANGED]
    assert str(files / CHANGED) in str(refused.value) and "must never change" in str(refused.value)
    assert recorded(blank_url) == before and not table_exists(blank_url, "later")


def test_engine_migrate_refuses_a_changed_file_with_a_flows_error(
    db_url: str, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(migrate, "MIGRATIONS_DIR", files)
    change(files)
    with Engine(db_url) as engine, pytest.raises(flows.FlowsError, match=CHANGED):
        engine.migrate()


def test_flows_migrate_names_the_changed_file_without_a_traceback(db_url: str, files: Path) -> None:
    change(files)
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "migrate"], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "DATABASE_URL": db_url, "FLOWS_MIGRATIONS_DIR": str(files)},
    )
    assert done.returncode == 1, done.stderr
    assert f"error: applied migration file(s) changed since they were applied to this database: {files / CHANGED}" \
        in done.stderr
    assert "Traceback" not in done.stderr


def old_release_database(url: str, directory: Path, names: list[str]) -> None:
    """Apply ``names`` as a release before checksums did, leaving its table."""
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        conn.execute(OLD_TABLE)
        for name in names:
            conn.execute((directory / name).read_bytes())
            conn.execute("INSERT INTO flows_schema_migrations (name) VALUES (%s)", (name,))


def test_a_table_without_checksums_is_upgraded_and_takes_the_current_files_checksums(
    blank_url: str, files: Path
) -> None:
    names = [p.name for p in migrate.migration_files(files)]
    old_release_database(blank_url, files, names)
    with psycopg.connect(blank_url) as conn, conn.transaction():  # a file an older release later folded away
        conn.execute("INSERT INTO flows_schema_migrations (name) VALUES ('007_gone.sql')")
    later = add_file(files)

    assert migrate.migrate(blank_url, files) == [later.name]
    assert recorded(blank_url) == {**{p.name: sha256(p) for p in migrate.migration_files(files)},
                                   "007_gone.sql": None}
    change(files)  # from now on a change is caught
    with pytest.raises(flows.MigrationChanged, match=CHANGED):
        migrate.migrate(blank_url, files)


def test_two_processes_upgrading_an_old_table_at_once_apply_each_file_once(blank_url: str, files: Path) -> None:
    names = [p.name for p in migrate.migration_files(files)]
    old_release_database(blank_url, files, names[:4])
    later = add_file(files)
    env = {**os.environ, "DATABASE_URL": blank_url, "FLOWS_MIGRATIONS_DIR": str(files)}
    procs = [subprocess.Popen([sys.executable, "-m", "flows.cli", "migrate"], cwd=ROOT, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    applied = sorted(out.strip() for out, _ in outs)
    # One process applied the rest; the other, serialised behind it, found nothing to do.
    assert applied == ["applied: " + ", ".join(names[4:] + [later.name]), "applied: nothing (up to date)"]
    assert recorded(blank_url) == {p.name: sha256(p) for p in migrate.migration_files(files)}


def test_status_reports_pending_changed_and_unchecked_files_without_writing(
    blank_url: str, files: Path
) -> None:
    names = [p.name for p in migrate.migration_files(files)]
    with psycopg.connect(blank_url, autocommit=True) as conn:
        assert migrate.status(conn, files) == migrate.Status(pending=names, changed=[], unchecked=[])
    old_release_database(blank_url, files, names[:2])
    with psycopg.connect(blank_url, autocommit=True) as conn:
        assert migrate.status(conn, files) == migrate.Status(pending=names[2:], changed=[], unchecked=names[:2])
        assert migrate.check(conn, files) == names[2:]
    migrate.migrate(blank_url, files)
    change(files)
    with psycopg.connect(blank_url, autocommit=True) as conn:
        assert migrate.status(conn, files) == migrate.Status(pending=[], changed=[CHANGED], unchecked=[])
        with pytest.raises(flows.MigrationChanged, match=CHANGED):
            migrate.check(conn, files)
        row = conn.execute("SELECT checksum FROM flows_schema_migrations WHERE name = %s", (CHANGED,)).fetchone()
    assert row is not None and row[0] != sha256(files / CHANGED)


def test_a_folder_without_migration_files_is_a_configuration_error(blank_url: str, tmp_path: Path) -> None:
    with pytest.raises(flows.ConfigurationError, match=str(tmp_path)):
        migrate.migrate(blank_url, tmp_path)
