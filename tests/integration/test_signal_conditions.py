"""Conditional signals on a real PostgreSQL: ``dedup_key`` stores at most one
signal per key, ``only_if_waiting`` one per wait, however many senders race."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import psycopg
import pytest
import uuid6

import flows
from flows import Engine, Worker
from flows.store import client as client_store
from tests.engine_app import documents
from tests.integration.test_engine import rows, wait_for

SENDERS = 20


def race(send: Callable[[int], Any], n: int = SENDERS) -> tuple[list[Any], list[BaseException]]:
    """Call ``send(i)`` from ``n`` threads released at once; (results, errors)."""
    barrier = threading.Barrier(n)
    results: list[Any] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        barrier.wait()
        try:
            out = send(i)
        except BaseException as exc:  # noqa: BLE001 - collected for the test to judge
            with lock:
                errors.append(exc)
        else:
            with lock:
                results.append(out)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results, errors


@pytest.fixture
def wide_engine(db_url: str) -> Any:
    """An engine with a connection per sender, so the senders really overlap."""
    with Engine(db_url, shards=3, pool_size=SENDERS) as eng:
        yield eng


def waiting_run(engine: Engine, kinds: list[str]) -> flows.Execution:
    """A ``documents`` workflow stopped at its first wait, with no worker left
    running (the signals sent next stay unconsumed until the test says)."""
    run = engine.start(documents, kinds)
    worker = Worker(engine, [documents], [], graceful_timeout=5.0)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        wait_for(engine, run, f"signal:doc-{kinds[0]}")
    finally:
        worker.stop()
        thread.join(10)
    assert not thread.is_alive()
    return run


def test_only_one_of_twenty_racing_senders_answers_a_wait(
    engine: Engine, wide_engine: Engine, start_worker: Callable[..., Worker], db: psycopg.Connection[Any]
) -> None:
    run = waiting_run(engine, ["x", "x"])
    sent, refused = race(lambda i: wide_engine.send_signal(
        run.workflow_name, run.workflow_id, "doc-x", {"sender": i}, only_if_waiting=True))
    assert len(sent) == 1 and len(refused) == SENDERS - 1, refused
    assert all(isinstance(e, flows.SignalNotAwaited) for e in refused), refused
    assert {e.pending_signal_id for e in refused} == set(sent)  # type: ignore[attr-defined]
    stored = rows(db, "SELECT id, payload FROM signals WHERE workflow_id = %s", run.workflow_id)
    assert [sid for sid, _ in stored] == sent
    winner = stored[0][1]

    # The workflow takes the winner's payload and waits again: a new wait takes one more.
    start_worker([documents], [])
    deadline = time.monotonic() + 10
    while rows(db, "SELECT consumed FROM signals WHERE id = %s", sent[0]) != [(True,)]:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    wait_for(engine, run, "signal:doc-x")
    second, refused = race(lambda i: wide_engine.send_signal(
        run.workflow_name, run.workflow_id, "doc-x", {"second": i}, only_if_waiting=True), n=5)
    assert len(second) == 1 and len(refused) == 4
    assert engine.result(run.workflow_name, run.workflow_id, timeout=10)[0] == winner
    assert rows(db, "SELECT count(*) FROM signals WHERE workflow_id = %s", run.workflow_id) == [(2,)]


def test_only_if_waiting_refuses_a_signal_the_workflow_does_not_wait_for(
    engine: Engine, start_worker: Callable[..., Worker], db: psycopg.Connection[Any]
) -> None:
    early = engine.start(documents, ["a"])  # no replay yet: waits for nothing
    with pytest.raises(flows.SignalNotAwaited) as info:
        engine.send_signal(early.workflow_name, early.workflow_id, "doc-a", 1, only_if_waiting=True)
    assert info.value.waiting_for is None and info.value.pending_signal_id is None

    run = waiting_run(engine, ["a", "b"])
    with pytest.raises(flows.SignalNotAwaited, match="waiting for: signal:doc-a") as info:
        engine.send_signal(run.workflow_name, run.workflow_id, "doc-b", 1, only_if_waiting=True)
    assert info.value.waiting_for == "signal:doc-a"
    assert rows(db, "SELECT count(*) FROM signals") == [(0,)]
    # Without the condition the same signal is kept for a later wait, as always.
    engine.send_signal(run.workflow_name, run.workflow_id, "doc-b", 1)
    assert rows(db, "SELECT signal_name FROM signals") == [("doc-b",)]


def test_twenty_racing_senders_with_one_key_store_one_signal(
    engine: Engine, wide_engine: Engine, db: psycopg.Connection[Any]
) -> None:
    run = engine.start(documents, ["a", "b"])
    sent, duplicates = race(lambda i: wide_engine.send_signal(
        run.workflow_name, run.workflow_id, "doc-a", {"sender": i}, dedup_key="doc-a"))
    assert len(sent) == 1 and len(duplicates) == SENDERS - 1, duplicates
    assert all(isinstance(e, flows.DuplicateSignal) for e in duplicates), duplicates
    [(signal_id, payload)] = rows(db, "SELECT id, payload FROM signals WHERE workflow_id = %s", run.workflow_id)
    assert sent == [signal_id]
    for dup in duplicates:
        assert dup.signal_id == signal_id and dup.payload == payload and dup.dedup_key == "doc-a"  # type: ignore[attr-defined]

    # Another key, or the same key on another workflow, is another signal.
    engine.send_signal(run.workflow_name, run.workflow_id, "doc-b", 2, dedup_key="doc-b")
    other = engine.start(documents, ["a"])
    engine.send_signal(other.workflow_name, other.workflow_id, "doc-a", 3, dedup_key="doc-a")
    assert rows(db, "SELECT dedup_key, count(*) FROM signals GROUP BY 1 ORDER BY 1") == [("doc-a", 2), ("doc-b", 1)]


def test_a_key_stays_taken_after_its_signal_is_consumed(
    engine: Engine, start_worker: Callable[..., Worker], db: psycopg.Connection[Any]
) -> None:
    run = engine.start(documents, ["a", "a"])
    start_worker([documents], [])
    first = engine.send_signal(run.workflow_name, run.workflow_id, "doc-a", "one", dedup_key="k")
    wait_for(engine, run, "signal:doc-a")  # the first wait took it; the second waits
    assert rows(db, "SELECT consumed FROM signals WHERE id = %s", first) == [(True,)]
    with pytest.raises(flows.DuplicateSignal) as info:
        engine.send_signal(run.workflow_name, run.workflow_id, "doc-a", "two", dedup_key="k")
    assert info.value.signal_id == first and info.value.payload == "one"
    assert rows(db, "SELECT count(*) FROM signals") == [(1,)]


def test_conditions_on_an_ended_or_missing_workflow(engine: Engine, db: psycopg.Connection[Any]) -> None:
    run = engine.start(documents, ["a"])
    engine.cancel(run.workflow_name, run.workflow_id)
    for kwargs in ({"dedup_key": "k"}, {"only_if_waiting": True}):
        with pytest.raises(flows.WorkflowNotRunning):
            engine.send_signal(run.workflow_name, run.workflow_id, "doc-a", 1, **kwargs)
        with pytest.raises(flows.WorkflowNotFound):
            engine.send_signal(run.workflow_name, "018c123e-4567-7890-abcd-ef0123456789", "doc-a", 1, **kwargs)
    with pytest.raises(flows.InvalidInput, match="dedup_key"):
        engine.send_signal(run.workflow_name, run.workflow_id, "doc-a", 1, dedup_key="")
    with pytest.raises(flows.InvalidInput, match="dedup_key"):
        engine.send_signal(run.workflow_name, run.workflow_id, "doc-a", 1, dedup_key="a\0b")
    assert rows(db, "SELECT count(*) FROM signals") == [(0,)]


def _send_in(conn: psycopg.Connection[Any], run: flows.Execution, engine: Engine, **conditions: Any) -> Any:
    return client_store.send_signal(
        conn, shard=run.workflow_name_sharded, workflow_id=run.workflow_id, tenant_id=None, signal_id=uuid6.uuid7(),
        name="doc-a", payload=b'"first"', task_id=uuid6.uuid7(), **conditions)


@pytest.mark.parametrize("conditions", [{"dedup_key": "k"}, {"only_if_waiting": True}])
def test_a_sender_waits_for_one_in_flight_and_then_sees_its_signal(
    engine: Engine, db_url: str, db: psycopg.Connection[Any], conditions: dict[str, Any]
) -> None:
    """The interleaving the races above hit by chance, made certain: a send
    whose transaction is still open makes a second sender wait, and the
    second finds the first's signal once it commits (a check that read
    before the first committed would store a second signal)."""
    run = waiting_run(engine, ["a"]) if "only_if_waiting" in conditions else engine.start(documents, ["a"])
    with psycopg.connect(db_url) as first:
        sent = _send_in(first, run, engine, **conditions)
        assert sent.outcome == "stored"
        second: list[Any] = []
        thread = threading.Thread(target=lambda: second.append(pytest.raises(
            (flows.DuplicateSignal, flows.SignalNotAwaited), engine.send_signal,
            run.workflow_name, run.workflow_id, "doc-a", "second", **conditions)))
        thread.start()
        thread.join(0.5)
        assert thread.is_alive()  # waiting for the first sender's transaction
        first.commit()
    thread.join(10)
    [refused] = second
    assert (refused.value.signal_id if "dedup_key" in conditions else refused.value.pending_signal_id) == sent.signal_id
    assert rows(db, "SELECT id FROM signals") == [(sent.signal_id,)]
