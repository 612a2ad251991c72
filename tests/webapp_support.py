"""Fixtures and helpers for the loan API tests (tests/integration/test_webapp_*).

Test modules import the fixtures they use from here. The app runs in-process
on Flask's test client against the test's own database; ``loan_worker`` runs
a flows.Worker thread for the loan workflow.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient

from flows import Worker
from webapp import create_app, loans
from webapp.extension import client as flows_client

BASE = "/api/loans"
TABLES = ("workflows", "activities", "history_events", "timers", "signals", "task_queue", "dead_letter_queue")
JANE = "Jane Smith"  # credit score 753: passes every check
# The spec's document ids (each with the serial number verification wants).
DOCS = {"identity": "DL-987654321", "income": "W2-2023-456", "address": "UTIL-202401-789"}


def make_app(db_url: str, **config: Any) -> Flask:
    return create_app({"TESTING": True, "DATABASE_URL": db_url, "SHARDS": 3, **config})


@pytest.fixture
def app(db_url: str) -> Iterator[Flask]:
    app = make_app(db_url)
    yield app
    flows_client.close(app)


@pytest.fixture
def http(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def loan_worker(start_worker: Callable[..., Worker], monkeypatch: pytest.MonkeyPatch) -> Worker:
    """A worker thread for the loan workflow, with a short compliance sleep."""
    monkeypatch.setenv("FLOWS_COMPLIANCE_SLEEP", "0.1")
    return start_worker([loans.loan_application_workflow], loans.ACTIVITIES)


def row_counts(db: psycopg.Connection[Any]) -> dict[str, int]:
    return {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}  # type: ignore[index]


def wait_for(check: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return value


def start_loan(http: FlaskClient, name: str = JANE, amount: int = 75_000, purpose: str = "home renovation",
               **kwargs: Any) -> str:
    r = http.post(BASE, json={"applicant_name": name, "amount": amount, "purpose": purpose}, **kwargs)
    assert r.status_code == 201, r.json
    return str(r.json["workflow_id"])  # type: ignore[index]


def status(http: FlaskClient, wid: str, **kwargs: Any) -> dict[str, Any]:
    r = http.get(f"{BASE}/loan-application/{wid}", **kwargs)
    assert r.status_code == 200, r.json
    return r.json  # type: ignore[return-value]


def wait_status(http: FlaskClient, wid: str, *, waiting_for: str | None = None, ended: bool = False,
                timeout: float = 15.0, **kwargs: Any) -> dict[str, Any]:
    """Poll until the workflow waits for ``waiting_for``, or has ended."""

    def check() -> dict[str, Any] | None:
        body = status(http, wid, **kwargs)
        if ended and body["Status"] != "running":
            return body
        if waiting_for is not None and body["WaitingFor"] == waiting_for:
            return body
        assert body["Status"] == "running", body  # ended early: the test's premise is wrong
        return None

    return wait_for(check, timeout, f"{wid} waiting_for={waiting_for} ended={ended}")  # type: ignore[no-any-return]


def send_document(http: FlaskClient, wid: str, doc_type: str, doc_id: str, **kwargs: Any) -> Any:
    return http.post(f"{BASE}/loan-application/{wid}/documents",
                     json={"document_type": doc_type, "document_id": doc_id}, **kwargs)


def send_approval(http: FlaskClient, wid: str, approved: bool, comments: str = "", **kwargs: Any) -> Any:
    return http.post(f"{BASE}/loan-application/{wid}/approve",
                     json={"approver_role": "manager", "approved": approved, "comments": comments}, **kwargs)


def name_with_score(accept: Callable[[int], bool]) -> str:
    """An applicant name whose demo credit score satisfies ``accept``."""
    for i in range(10_000):
        name = f"Applicant {i}"
        if accept(loans.credit_score(name)):
            return name
    raise AssertionError("no such name")
