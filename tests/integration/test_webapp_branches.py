"""Every path of the loan workflow, driven over the HTTP API (Flask test
client) with an in-process worker on a real database."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from flask.testing import FlaskClient

from flows import Worker
from tests.webapp_support import (  # noqa: F401 - fixtures
    BASE,
    DOCS,
    JANE,
    app,
    http,
    loan_worker,
    name_with_score,
    send_approval,
    send_document,
    start_loan,
    wait_status,
)
from webapp import loans


@pytest.fixture
def no_review(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loans, "REVIEW_PROBABILITY", 0.0)


@pytest.fixture
def always_review(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loans, "REVIEW_PROBABILITY", 1.0)


def activities(db: psycopg.Connection[Any], wid: str) -> list[tuple[str, str, int]]:
    return db.execute(
        "SELECT name, status, sequence_num FROM activities WHERE workflow_id = %s ORDER BY sequence_num", (wid,)
    ).fetchall()


def submit_all(http: FlaskClient, wid: str, types: tuple[str, ...] = ("identity", "income", "address")) -> None:
    for doc_type in types:
        r = send_document(http, wid, doc_type, DOCS[doc_type])
        assert r.status_code == 200, r.json


def output(body: dict[str, Any]) -> dict[str, Any]:
    assert body["Status"] == "completed", body
    return body["Output"]  # type: ignore[no-any-return]


def test_low_credit_score_is_rejected_without_asking_for_documents(
    http: FlaskClient, loan_worker: Worker, db: psycopg.Connection[Any]
) -> None:
    name = name_with_score(lambda s: s < loans.APPROVAL_CREDIT_SCORE)
    wid = start_loan(http, name)
    out = output(wait_status(http, wid, ended=True))
    score = loans.credit_score(name)
    assert out["decision"] == "rejected" and out["approved_amount"] == 0
    assert out["reason"] == f"Credit score {score} is below the minimum of 600"
    assert activities(db, wid) == [("check-credit-score", "completed", 1)]
    assert db.execute("SELECT count(*) FROM signals").fetchone() == (0,)


def test_score_of_600_passes_the_credit_check(http: FlaskClient, loan_worker: Worker) -> None:
    name = name_with_score(lambda s: s == loans.APPROVAL_CREDIT_SCORE)
    wid = start_loan(http, name)
    wait_status(http, wid, waiting_for="signal:document-identity")


def test_invalid_document_rejects_and_stops_collecting(
    http: FlaskClient, loan_worker: Worker, db: psycopg.Connection[Any]
) -> None:
    wid = start_loan(http)
    wait_status(http, wid, waiting_for="signal:document-identity")
    assert send_document(http, wid, "identity", "DL-1234").status_code == 200
    assert send_document(http, wid, "income", "INVALID-77").status_code == 200
    out = output(wait_status(http, wid, ended=True))
    assert out["decision"] == "rejected"
    assert out["reason"].startswith("Document verification failed: income document INVALID-77")
    assert activities(db, wid) == [
        ("check-credit-score", "completed", 1), ("verify-document", "completed", 3),
        ("verify-document", "completed", 5),
    ]
    assert db.execute("SELECT count(*) FROM timers").fetchone() == (0,)  # never reached the compliance hold
    # Once ended, the API refuses further documents with 409 and stores nothing.
    r = send_document(http, wid, "address", "UTIL-1")
    assert r.status_code == 409 and r.json["error"] == "workflow has ended"  # type: ignore[index]
    assert db.execute("SELECT count(*) FROM signals WHERE signal_name = 'document-address'").fetchone() == (0,)


def test_documents_sent_early_and_out_of_order_are_verified_in_order(
    http: FlaskClient, loan_worker: Worker, db: psycopg.Connection[Any], no_review: None
) -> None:
    wid = start_loan(http)
    submit_all(http, wid, ("address", "income", "identity"))  # before the credit check has even run
    out = output(wait_status(http, wid, ended=True))
    assert out["decision"] == "approved" and out["approved_amount"] == 75_000
    verified = db.execute(
        "SELECT sequence_num, input->>'document_type', output->>'valid' FROM activities"
        " WHERE workflow_id = %s AND name = 'verify-document' ORDER BY sequence_num", (wid,)
    ).fetchall()
    assert verified == [(3, "identity", "true"), (5, "income", "true"), (7, "address", "true")]
    consumed = db.execute(
        "SELECT signal_name, consumed_seq FROM signals WHERE workflow_id = %s ORDER BY consumed_seq", (wid,)
    ).fetchall()
    assert consumed == [("document-identity", 2), ("document-income", 4), ("document-address", 6)]


def test_up_to_50k_needs_no_proof_of_address(
    http: FlaskClient, loan_worker: Worker, db: psycopg.Connection[Any], no_review: None
) -> None:
    wid = start_loan(http, amount=50_000)
    r = send_document(http, wid, "address", "UTIL-1")  # never asked for: refused, not left unconsumed
    assert r.status_code == 409 and r.json["field"] == "document_type"  # type: ignore[index]
    submit_all(http, wid, ("identity", "income"))
    out = output(wait_status(http, wid, ended=True))
    assert out["decision"] == "approved" and out["approved_amount"] == 50_000
    assert [a[0] for a in activities(db, wid)] == [
        "check-credit-score", "verify-document", "verify-document", "disburse-loan",
    ]
    assert db.execute("SELECT sequence_num FROM timers WHERE workflow_id = %s", (wid,)).fetchall() == [(6,)]
    assert db.execute("SELECT signal_name FROM signals WHERE NOT consumed").fetchall() == []


def test_manager_refusal_rejects(
    http: FlaskClient, loan_worker: Worker, db: psycopg.Connection[Any], always_review: None
) -> None:
    wid = start_loan(http)
    submit_all(http, wid)
    wait_status(http, wid, waiting_for="signal:manager-approval")
    r = send_approval(http, wid, False, "Income too irregular")
    assert r.status_code == 200 and r.json["signal_name"] == "manager-approval"  # type: ignore[index]
    out = output(wait_status(http, wid, ended=True))
    assert out["decision"] == "rejected"
    assert out["reason"] == "Declined by manager review: Income too irregular"
    assert "disburse-loan" not in [a[0] for a in activities(db, wid)]
    assert db.execute(
        "SELECT payload->>'approved', payload ? 'approved_at', consumed FROM signals"
        " WHERE workflow_id = %s AND signal_name = 'manager-approval'", (wid,)
    ).fetchall() == [("false", True, True)]


def test_manager_approval_continues_to_disbursement(
    http: FlaskClient, loan_worker: Worker, db: psycopg.Connection[Any], always_review: None
) -> None:
    wid = start_loan(http)
    submit_all(http, wid)
    wait_status(http, wid, waiting_for="signal:manager-approval")
    assert send_approval(http, wid, True, "Application looks good, approve").status_code == 200
    out = output(wait_status(http, wid, ended=True))
    assert out["decision"] == "approved"
    # 1 credit check, 2-7 documents, 8 timer, 9 random, 10 the approval, 11 the disbursement
    assert activities(db, wid)[-1] == ("disburse-loan", "completed", 11)
    assert db.execute(
        "SELECT consumed, consumed_seq FROM signals WHERE workflow_id = %s AND signal_name = 'manager-approval'",
        (wid,),
    ).fetchall() == [(True, 10)]


def test_approval_is_refused_while_no_review_is_pending(
    http: FlaskClient, loan_worker: Worker, db: psycopg.Connection[Any], no_review: None
) -> None:
    wid = start_loan(http)
    wait_status(http, wid, waiting_for="signal:document-identity")
    r = send_approval(http, wid, True)
    assert r.status_code == 409 and r.json["error"] == "no review pending"  # type: ignore[index]
    assert "signal:document-identity" in r.json["detail"]  # type: ignore[index]
    assert db.execute("SELECT count(*) FROM signals").fetchone() == (0,)


def test_above_100k_the_underwriter_approves(
    http: FlaskClient, loan_worker: Worker, db: psycopg.Connection[Any], no_review: None
) -> None:
    wid = start_loan(http, amount=150_000)
    submit_all(http, wid)
    out = output(wait_status(http, wid, ended=True))
    assert out["decision"] == "approved" and out["approved_amount"] == 150_000
    underwriter = db.execute(
        "SELECT sequence_num, status, input, output FROM activities"
        " WHERE workflow_id = %s AND name = 'get-underwriter-approval'", (wid,)
    ).fetchall()
    assert len(underwriter) == 1
    seq, state, inp, out_ = underwriter[0]
    assert (seq, state) == (10, "completed")
    assert inp == {"application_id": wid, "amount": 150_000, "credit_score": loans.credit_score(JANE)}
    assert out_["approved"] is True and "Excellent credit history" in out_["reason"]
    assert activities(db, wid)[-1] == ("disburse-loan", "completed", 11)


def test_exactly_100k_needs_no_underwriter(
    http: FlaskClient, loan_worker: Worker, db: psycopg.Connection[Any], no_review: None
) -> None:
    wid = start_loan(http, amount=100_000)
    submit_all(http, wid)
    assert output(wait_status(http, wid, ended=True))["decision"] == "approved"
    assert "get-underwriter-approval" not in [a[0] for a in activities(db, wid)]


def test_underwriter_refusal_rejects(
    http: FlaskClient, loan_worker: Worker, db: psycopg.Connection[Any], no_review: None
) -> None:
    name = name_with_score(lambda s: loans.APPROVAL_CREDIT_SCORE <= s < loans.UNDERWRITER_CREDIT_SCORE)
    wid = start_loan(http, name, amount=250_000)
    submit_all(http, wid)
    out = output(wait_status(http, wid, ended=True))
    assert out["decision"] == "rejected" and out["approved_amount"] == 0
    assert out["reason"].startswith("Declined by underwriter: credit score")
    assert "disburse-loan" not in [a[0] for a in activities(db, wid)]


def test_cancelled_workflow_takes_no_documents(http: FlaskClient, engine: Any, db: psycopg.Connection[Any]) -> None:
    wid = start_loan(http)
    assert engine.cancel("loan-application", wid)
    before = db.execute("SELECT count(*) FROM signals").fetchone()
    r = send_document(http, wid, "identity", "DL-1")
    assert r.status_code == 409 and "cancelled" in r.json["detail"]  # type: ignore[index]
    r = send_approval(http, wid, True)
    assert r.status_code == 409
    assert db.execute("SELECT count(*) FROM signals").fetchone() == before
    assert http.get(f"{BASE}/loan-application/{wid}/result").json["Status"] == "cancelled"  # type: ignore[index]


def test_a_loan_without_its_identity_document_is_rejected_after_the_document_timeout(
    http: FlaskClient, loan_worker: Worker, db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch,
    no_review: None,
) -> None:
    monkeypatch.setenv("FLOWS_DOCUMENT_TIMEOUT", "1")
    name = name_with_score(lambda s: s >= loans.APPROVAL_CREDIT_SCORE)
    late = start_loan(http, name, amount=20_000)
    out = output(wait_status(http, late, ended=True))
    assert (out["decision"], out["approved_amount"]) == ("rejected", 0)
    assert out["reason"] == "No identity document received within 1 seconds"
    assert activities(db, late) == [("check-credit-score", "completed", 1)]
    # a loan that gets its documents in time goes through as before, its identity timer gone
    monkeypatch.setenv("FLOWS_DOCUMENT_TIMEOUT", "60")
    on_time = start_loan(http, name, amount=20_000)
    wait_status(http, on_time, waiting_for="signal:document-identity")
    submit_all(http, on_time, ("identity", "income"))
    assert output(wait_status(http, on_time, ended=True))["decision"] == "approved"
    assert db.execute("SELECT count(*), bool_and(fired) FROM timers WHERE workflow_id = %s", (on_time,)).fetchone() \
        == (1, True)  # the compliance timer only, as the spec shows
