"""Upgrading a database of the previous release with workflows in flight:
migrated to the current files, the current code finishes every workflow
the release parked mid-run.

The database is built from the release fixture (``tests/fixtures/
release_5d85d34``, made by ``make_release_fixture.py`` with that release's
code): its frozen migration files, its migrations table without checksums,
and its rows, with their timestamps moved as if the release had stopped a
moment ago. Every task in it is due then, so timers fire and the dead
worker's lease is gone as soon as the workers look.
"""

from __future__ import annotations

import hashlib
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator

import psycopg
import pytest

import flows
from flows import Engine, migrate, sharding
from tests.fixtures import release_app as app

RELEASE = "5d85d34"
FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / f"release_{RELEASE}"
FINISH_SECONDS = 60.0

# What the test sends each parked workflow (base name: signal, payload).
SIGNALS = {
    "rel-signal": ("approve", {"by": "alice"}),
    "rel-second-signal": ("doc", "payslip"),
    "rel-step-done": ("go", None),
    "rel-fired-timer": ("resume", "resumed after the upgrade"),
}
# The output release_app computes for each (rel-timer's: from its recorded values).
EXPECTED: dict[str, Any] = {
    "rel-signal": {"order": "order-17", "approved_by": "alice"},
    "rel-second-signal": ["passport", "payslip"],  # the first consumed before the upgrade
    "rel-activity-pending": {"doubled": 42, "note": "a note from before the upgrade"},
    "rel-lost-lease": "echo from a dead worker",
    # The second attempt, numbered as today's code numbers attempts (from 1;
    # the release numbered them from 0, and its attempt 0 failed).
    "rel-retry": "flaky call on attempt 2",
    "rel-step-done": [10, 20],
    "rel-fired-timer": {"label": "slept", "resumed": "resumed after the upgrade"},
    "rel-completed": {"answer": 42},
}


def frozen_files() -> list[Path]:
    return sorted((FIXTURE / "migrations").glob("*.sql"))


def shift_to_now(conn: psycopg.Connection[Any]) -> None:
    """Move every timestamp column by one interval so that the latest is
    now: the database looks as the release's code left it a moment ago,
    whatever this machine's clock says against the one that made it (the
    history's own JSON keeps the times the release recorded)."""
    columns = conn.execute(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = 'public' AND data_type = 'timestamp with time zone'").fetchall()
    latest = " UNION ALL ".join(f"SELECT max({c}) FROM {t}" for t, c in columns)
    row = conn.execute(f"SELECT now() - max(m) FROM ({latest}) l(m)").fetchone()
    assert row is not None and row[0] is not None
    for table, column in columns:
        conn.execute(f"UPDATE {table} SET {column} = {column} + %s", (row[0],))


@pytest.fixture
def db_url(blank_url: str) -> Iterator[str]:
    """The release's database, as its code left it (this module's db_url,
    for the engine, db and start_worker fixtures)."""
    with psycopg.connect(blank_url, autocommit=True) as conn, conn.transaction():
        conn.execute((FIXTURE / "schema_migrations.sql").read_bytes())
        for path in frozen_files():
            conn.execute(path.read_bytes())
        conn.execute((FIXTURE / "rows.sql").read_bytes())
        shift_to_now(conn)
    yield blank_url


def test_the_released_migration_files_are_unchanged() -> None:
    """The fixture's files are those of the release; today's must be the same bytes."""
    assert [p.name for p in frozen_files()], f"no migration files in {FIXTURE / 'migrations'}"
    changed = [p.name for p in frozen_files()
               if not (migrate.MIGRATIONS_DIR / p.name).exists()
               or (migrate.MIGRATIONS_DIR / p.name).read_bytes() != p.read_bytes()]
    assert changed == [], (
        f"migrations/ differs from release {RELEASE}'s files {changed}: a released migration file must never"
        " change or go (put the change in a new file)")


def recorded_values(db: psycopg.Connection[Any], workflow_id: Any) -> dict[str, Any]:
    """What rel-timer drew before the upgrade, from its history rows."""
    found = dict(db.execute(
        "SELECT event_type, event_data FROM history_events WHERE workflow_id = %s"
        " AND event_type IN ('random_generated', 'time_recorded', 'uuid_generated')", (workflow_id,)).fetchall())
    assert set(found) == {"random_generated", "time_recorded", "uuid_generated"}, found
    return {"random": found["random_generated"]["random_bytes"], "now": found["time_recorded"]["now"],
            "uuid": found["uuid_generated"]["uuid"]}


def report(db: psycopg.Connection[Any], workflows: dict[str, Any]) -> dict[str, Any]:
    """Each workflow's end: its output when completed, else where it stands."""
    out: dict[str, Any] = {}
    for name, wid in workflows.items():
        row = db.execute("SELECT status, output, error, waiting_for FROM workflows WHERE id = %s", (wid,)).fetchone()
        assert row is not None, f"{name} {wid} is gone"
        status, output, error, waiting_for = row
        if status == "completed":
            out[name] = output
        else:
            tasks = db.execute("SELECT task_type, visibility_timeout <= now(), lease_owner, deliveries FROM task_queue"
                               " WHERE workflow_id = %s", (wid,)).fetchall()
            out[name] = {"status": status, "error": error, "waiting_for": waiting_for,
                         "tasks (type, due, lease_owner, deliveries)": tasks}
    return out


def test_workflows_parked_by_the_previous_release_finish_after_migrating(
    db_url: str, db: psycopg.Connection[Any], engine: Engine, start_worker: Callable[..., flows.Worker]
) -> None:
    workflows = {sharding.base_name(name): wid for name, wid in db.execute("SELECT name, id FROM workflows")}
    assert sorted(workflows) == sorted(w.name for w in app.WORKFLOWS), "the fixture's workflows are not release_app's"
    for name, wid in workflows.items():  # the test's engine finds each where the release put it
        stored = db.execute("SELECT name FROM workflows WHERE id = %s", (wid,)).fetchone()
        assert stored == (engine.shard_of(name, wid),), f"{name} {wid}: the shard layout changed"
    expected = {**EXPECTED, "rel-timer": {"label": "drawn", **recorded_values(db, workflows["rel-timer"])}}
    completed_before = db.execute("SELECT output, completed_at, updated_at FROM workflows WHERE id = %s",
                                  (workflows["rel-completed"],)).fetchone()

    applied = migrate.migrate(db_url)
    frozen = {p.name for p in frozen_files()}
    assert applied == [p.name for p in migrate.migration_files() if p.name not in frozen]
    checksums = dict(db.execute("SELECT name, checksum FROM flows_schema_migrations").fetchall())
    assert checksums == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in migrate.migration_files()}, \
        "the migrations table was not upgraded to record every file's checksum"

    start_worker(app.WORKFLOWS, app.ACTIVITIES)
    for name, (signal, payload) in SIGNALS.items():
        engine.send_signal(name, workflows[name], signal, payload)
    deadline = time.monotonic() + FINISH_SECONDS
    while db.execute("SELECT count(*) FROM workflows WHERE status = 'running'").fetchone() != (0,):
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)

    ended = report(db, workflows)
    timer = ended["rel-timer"]
    if isinstance(timer, dict) and "now" in timer and "now" in expected["rel-timer"]:
        # The same instant, however each release writes it.
        assert datetime.fromisoformat(timer["now"]) == datetime.fromisoformat(expected["rel-timer"]["now"]), \
            f"rel-timer's recorded now() changed: {timer['now']} != {expected['rel-timer']['now']}"
        timer["now"] = expected["rel-timer"]["now"]
    wrong = [f"{name}: expected {expected.get(name)!r}, got {ended.get(name)!r}"
             for name in sorted(set(expected) | set(ended)) if ended.get(name) != expected.get(name)]
    assert not wrong, "parked workflows did not finish as release_app computes:\n" + "\n".join(wrong)
    assert db.execute("SELECT workflow_name, error FROM dead_letter_queue").fetchall() == []
    assert db.execute("SELECT output, completed_at, updated_at FROM workflows WHERE id = %s",
                      (workflows["rel-completed"],)).fetchone() == completed_before, "the completed workflow changed"
    assert db.execute("SELECT workflow_name, task_type FROM task_queue").fetchall() == [], "work left queued"

