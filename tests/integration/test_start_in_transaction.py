"""``engine.start(..., conn=conn)`` joins the caller's transaction, whatever
ran on ``conn`` before, and never commits or rolls back the caller's work."""

from __future__ import annotations

from typing import Any, Callable, Iterator
from uuid import UUID

import psycopg
import pytest

import flows
from flows import Engine
from tests.conftest import on_citus
from tests.engine_app import documents

WORKFLOW_ID = "018c123e-4567-7890-abcd-ef0123456789"


def counts(db: psycopg.Connection[Any]) -> dict[str, int]:
    """What another session sees: the caller's rows and everything a start writes."""
    out: dict[str, int] = {}
    for table in ("orders", "workflows", "task_queue", "history_events"):
        row = db.execute(f"SELECT count(*) FROM {table}").fetchone()
        assert row is not None
        out[table] = row[0]
    return out


NOTHING = {"orders": 0, "workflows": 0, "task_queue": 0, "history_events": 0}
BOTH = {"orders": 1, "workflows": 1, "task_queue": 1, "history_events": 1}


@pytest.fixture
def orders(db: psycopg.Connection[Any]) -> None:
    db.execute("CREATE TABLE orders (id int PRIMARY KEY)")


# Each case runs the caller's transaction: its own row and a start in some
# order, then ``decide`` (the caller's commit or rollback), after checking
# from another session that nothing was committed before it.
Case = Callable[[Engine, str, psycopg.Connection[Any], bool], flows.Execution]


def _start(engine: Engine, conn: psycopg.Connection[Any], **kwargs: Any) -> flows.Execution:
    return engine.start(documents, [], conn=conn, **kwargs)


def fresh_connection(engine: Engine, url: str, db: psycopg.Connection[Any], commit: bool) -> flows.Execution:
    with psycopg.connect(url) as conn:  # not autocommit, idle: the start is its first statement
        run = _start(engine, conn)
        conn.execute("INSERT INTO orders VALUES (1)")
        assert counts(db) == NOTHING, "committed before the caller decided"
        conn.commit() if commit else conn.rollback()
    return run


def after_other_statements(engine: Engine, url: str, db: psycopg.Connection[Any], commit: bool) -> flows.Execution:
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO orders VALUES (1)")
        run = _start(engine, conn)
        assert counts(db) == NOTHING, "committed before the caller decided"
        conn.commit() if commit else conn.rollback()
    return run


def _in_block(autocommit: bool) -> Case:
    def case(engine: Engine, url: str, db: psycopg.Connection[Any], commit: bool) -> flows.Execution:
        with psycopg.connect(url, autocommit=autocommit) as conn:
            with conn.transaction():
                run = _start(engine, conn)
                conn.execute("INSERT INTO orders VALUES (1)")
                assert counts(db) == NOTHING, "committed before the caller's block ended"
                if not commit:
                    raise psycopg.Rollback()
            if not autocommit:
                conn.commit()  # the block was the outermost one: nothing is left open
        return run

    return case


CASES: dict[str, Case] = {
    "fresh non-autocommit connection": fresh_connection,
    "after other statements": after_other_statements,
    "inside conn.transaction()": _in_block(autocommit=False),
    "inside conn.transaction() on an autocommit connection": _in_block(autocommit=True),
}


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
def test_the_callers_rollback_leaves_no_workflow_task_or_event(
    engine: Engine, db_url: str, db: psycopg.Connection[Any], orders: None, case: Case
) -> None:
    case(engine, db_url, db, False)
    assert counts(db) == NOTHING


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
def test_the_callers_commit_keeps_its_row_and_the_workflow_which_a_worker_then_runs(
    engine: Engine, db_url: str, db: psycopg.Connection[Any], orders: None, case: Case,
    start_worker: Callable[..., flows.Worker],
) -> None:
    run = case(engine, db_url, db, True)
    assert counts(db) == BOTH
    start_worker([documents], [])
    assert engine.result(run.workflow_name, run.workflow_id, timeout=15) == []


def test_on_an_autocommit_connection_outside_a_transaction_the_start_commits_at_once(
    engine: Engine, db_url: str, db: psycopg.Connection[Any], orders: None,
    start_worker: Callable[..., flows.Worker],
) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        run = _start(engine, conn)
        assert counts(db) == {**BOTH, "orders": 0}
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    start_worker([documents], [])
    assert engine.result(run.workflow_name, run.workflow_id, timeout=15) == []


@pytest.fixture
def blocker(engine: Engine, db_url: str) -> Iterator[psycopg.Connection[Any]]:
    """Another session starting WORKFLOW_ID, not yet committed: a start of
    the same id waits for it."""
    with psycopg.connect(db_url) as conn:
        conn.execute("INSERT INTO workflows (name, id, tenant_id) VALUES (%s, %s, %s)",
                     (engine.shard_of(documents.name, UUID(WORKFLOW_ID)), WORKFLOW_ID, flows.DEFAULT_TENANT_ID))
        yield conn
        conn.rollback()


def _refused(engine: Engine, conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(flows.DatabaseError, match="LockNotAvailable"):
        _start(engine, conn, workflow_id=WORKFLOW_ID)


@pytest.mark.skipif(on_citus(), reason="on Citus the start waits for the blocker on a worker node, where the"
                    " session's lock_timeout does not reach: this test's way to make a start fail does not work there")
@pytest.mark.parametrize("where", ["fresh non-autocommit connection", "after other statements",
                                   "inside conn.transaction()", "inside conn.transaction() on an autocommit connection"])
def test_a_refused_start_leaves_the_callers_transaction_usable(
    engine: Engine, db_url: str, db: psycopg.Connection[Any], orders: None, blocker: psycopg.Connection[Any],
    where: str,
) -> None:
    options = "-c lock_timeout=200"  # the start waits for the blocker's insert of the same id, then gives up
    with psycopg.connect(db_url, autocommit=where.endswith("on an autocommit connection"), options=options) as conn:
        if where == "fresh non-autocommit connection":
            _refused(engine, conn)
            conn.execute("INSERT INTO orders VALUES (1)")
            conn.commit()
        elif where == "after other statements":
            conn.execute("INSERT INTO orders VALUES (1)")
            _refused(engine, conn)
            conn.commit()
        else:
            with conn.transaction():
                conn.execute("INSERT INTO orders VALUES (1)")
                _refused(engine, conn)
            if not conn.autocommit:
                conn.commit()
    # The blocker has not committed its start; the caller's row must be there.
    assert counts(db) == {**NOTHING, "orders": 1}, "the caller's transaction did not survive the refused start"
