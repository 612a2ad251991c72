"""A client told 200 can rely on it: one manager decision per review, one
document of each type per loan, however the requests are repeated or raced."""

from __future__ import annotations

import threading
from typing import Any, Callable

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient

from flows import Worker
from tests.webapp_support import (  # noqa: F401 - fixtures
    DOCS,
    app,
    http,
    loan_worker,
    send_approval,
    send_document,
    start_loan,
    wait_status,
)
from webapp import loans


@pytest.fixture
def always_review(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loans, "REVIEW_PROBABILITY", 1.0)


def in_parallel(app: Flask, n: int, request: Callable[[FlaskClient, int], Any]) -> list[Any]:
    """``request(client, i)`` for i < n from n threads released at once; the responses in order of i."""
    barrier = threading.Barrier(n)
    responses: list[Any] = [None] * n

    def run(i: int) -> None:
        client = app.test_client()
        barrier.wait()
        responses[i] = request(client, i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return responses


def review_pending(http: FlaskClient) -> str:
    wid = start_loan(http)
    for doc_type, doc_id in DOCS.items():
        assert send_document(http, wid, doc_type, doc_id).status_code == 200
    wait_status(http, wid, waiting_for="signal:manager-approval")
    return wid


def approvals(db: psycopg.Connection[Any], wid: str) -> list[tuple[Any, ...]]:
    return db.execute("SELECT id::text, payload->'approved' FROM signals WHERE workflow_id = %s"
                      " AND signal_name = 'manager-approval'", (wid,)).fetchall()


def test_twenty_racing_decisions_get_one_200(
    app: Flask, http: FlaskClient, loan_worker: Worker, db: psycopg.Connection[Any], always_review: None
) -> None:
    wid = review_pending(http)
    responses = in_parallel(app, 20, lambda c, i: send_approval(c, wid, i % 2 == 0, f"decision {i}"))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] + [409] * 19, [r.json for r in responses]
    [winner] = [(i, r.json) for i, r in enumerate(responses) if r.status_code == 200]
    # Depending on how far the worker got with the winner: pending, consumed, or the loan decided.
    assert {r.json["error"] for r in responses if r.status_code == 409} <= {
        "review already submitted", "no review pending", "workflow has ended"}
    # The signals table holds exactly the accepted decision, and the loan follows it.
    assert approvals(db, wid) == [(winner[1]["signal_id"], winner[0] % 2 == 0)]
    decision = wait_status(http, wid, ended=True)["Output"]["decision"]
    assert decision == ("approved" if winner[0] % 2 == 0 else "rejected")


def test_a_refusal_after_an_approval_is_409_and_changes_nothing(
    http: FlaskClient, loan_worker: Worker, db: psycopg.Connection[Any], always_review: None
) -> None:
    wid = review_pending(http)
    assert send_approval(http, wid, True, "fine").status_code == 200
    r = send_approval(http, wid, False, "changed my mind")
    # Depending on how far the worker got: the first decision is pending, consumed, or the loan has ended.
    assert r.status_code == 409, r.json
    assert r.json["error"] in ("review already submitted", "no review pending", "workflow has ended")
    assert wait_status(http, wid, ended=True)["Output"]["decision"] == "approved"
    r = send_approval(http, wid, False, "too late")
    assert r.status_code == 409 and r.json["error"] == "workflow has ended"
    assert [approved for _, approved in approvals(db, wid)] == [True]


def documents(db: psycopg.Connection[Any], wid: str) -> list[tuple[Any, ...]]:
    return db.execute("SELECT id::text, signal_name, payload->>'document_id' FROM signals WHERE workflow_id = %s"
                      " ORDER BY signal_name", (wid,)).fetchall()


def test_the_same_document_again_is_an_idempotent_200_and_another_a_409(
    http: FlaskClient, db: psycopg.Connection[Any]
) -> None:
    wid = start_loan(http)
    first = send_document(http, wid, "identity", "DL-1234")
    assert first.status_code == 200 and first.json["message"] == "Document identity submitted"
    again = send_document(http, wid, "identity", "DL-1234")
    assert again.status_code == 200 and again.json["signal_id"] == first.json["signal_id"]
    assert again.json["message"] == "Document identity already submitted"
    other = send_document(http, wid, "identity", "DL-9999")
    assert other.status_code == 409, other.json
    assert other.json["error"] == "document already submitted" and other.json["field"] == "document_type"
    assert "DL-1234" not in other.json["detail"]
    assert documents(db, wid) == [(first.json["signal_id"], "document-identity", "DL-1234")]
    # Another type is another document.
    assert send_document(http, wid, "income", "W2-1").status_code == 200
    assert len(documents(db, wid)) == 2


def test_thirty_racing_copies_of_a_document_store_one(app: Flask, http: FlaskClient,
                                                      db: psycopg.Connection[Any]) -> None:
    wid = start_loan(http)
    copies = in_parallel(app, 30, lambda c, i: send_document(c, wid, "income", "W2-2023-456"))
    assert [r.status_code for r in copies] == [200] * 30
    [(signal_id, _, _)] = documents(db, wid)
    assert {r.json["signal_id"] for r in copies} == {signal_id}

    # Different documents of one type racing: exactly one is taken.
    other = start_loan(http)
    racing = in_parallel(app, 20, lambda c, i: send_document(c, other, "income", f"W2-{i}"))
    accepted = [i for i, r in enumerate(racing) if r.status_code == 200]
    assert len(accepted) == 1 and sorted(r.status_code for r in racing).count(409) == 19
    assert [doc_id for _, _, doc_id in documents(db, other)] == [f"W2-{accepted[0]}"]
