"""The console in the loan app, through Flask's test client: its pages,
its actions (POSTs with the CSRF token), and who sees what when keys are
configured."""

from __future__ import annotations

import re
from typing import Any, Iterator
from uuid import UUID

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient

from flows import Worker
from tests.webapp_support import JANE, http, loan_worker, make_app, start_loan, wait_status  # noqa: F401
from webapp.extension import client as flows_client

ALICE, BOB = UUID("0190aaaa-0000-7000-8000-00000000000a"), UUID("0190bbbb-0000-7000-8000-00000000000b")
ALICE_KEY, BOB_KEY, ADMIN_KEY = "alice-key-0123456789abcdef", "bob-key-0123456789abcdef", "admin-key-0123456789abc"


@pytest.fixture
def app(db_url: str) -> Iterator[Flask]:
    app = make_app(db_url)
    yield app
    flows_client.close(app)


@pytest.fixture
def keyed(db_url: str) -> Iterator[FlaskClient]:
    app = make_app(db_url, API_KEYS=f"{ALICE_KEY}:{ALICE},{BOB_KEY}:{BOB}", CONSOLE_ADMIN_KEY=ADMIN_KEY)
    yield app.test_client()
    flows_client.close(app)


def csrf(page: bytes) -> str:
    match = re.search(rb'name="csrf_token" value="([^"]+)"', page)
    assert match, "no CSRF token on the page"
    return match.group(1).decode()


def why_of(page: bytes) -> str:
    match = re.search(rb'<p id="why">(.*?)</p>', page, re.S)
    assert match
    return re.sub(r"<[^>]+>", "`", match.group(1).decode()).replace("``", "`").replace("&#39;", "'")


def test_the_pages_of_a_loan_waiting_for_a_document(http: FlaskClient, loan_worker: Worker) -> None:
    wid = start_loan(http)
    wait_status(http, wid, waiting_for="signal:document-identity")

    page = http.get("/console/?name=loan-application&waiting_for=signal")
    assert page.status_code == 200 and f"/console/workflows/loan-application/{wid}".encode() in page.data
    assert b'running <b>1</b>' in page.data
    assert http.get("/console/?status=completed").data.count(b"No workflow matches.") == 1

    page = http.get(f"/console/workflows/loan-application/{wid}")
    assert page.status_code == 200
    assert why_of(page.data).startswith("waiting for signal `document-identity` since")
    assert b"check-credit-score" in page.data and b"activity_completed" in page.data
    assert b'hx-trigger="every 2s"' in page.data  # live while it runs

    fleet = http.get("/console/fleet")
    assert fleet.status_code == 200 and loan_worker.owner.encode() in fleet.data
    rates = http.get("/console/fleet/rates.json").json
    assert rates is not None and {s["label"] for s in rates["series"]} >= {
        n for n in [f"loan-application-shard-{k}" for k in range(3)] if n.encode() in page.data}
    static = http.get("/console/static/htmx-2.0.11.min.js")
    assert static.status_code == 200 and static.data.startswith(b"var htmx")
    static.close()


def test_signal_needs_the_csrf_token_and_then_moves_the_loan_on(http: FlaskClient, loan_worker: Worker,
                                                                db: psycopg.Connection[Any]) -> None:
    wid = start_loan(http)
    wait_status(http, wid, waiting_for="signal:document-identity")
    url = f"/console/workflows/loan-application/{wid}"
    body = {"signal": "document-identity",
            "payload": '{"document_type": "identity", "document_id": "ID-123", "uploaded_at": "2024-05-01T10:00:00Z"}'}
    refused = http.post(f"{url}/signal", data=body)
    assert refused.status_code == 400 and b"CSRF token" in refused.data
    refused = http.post(f"{url}/signal", data={**body, "csrf_token": "forged"})
    assert refused.status_code == 400
    assert db.execute("SELECT count(*) FROM signals").fetchone() == (0,)

    token = csrf(http.get(url).data)
    sent = http.post(f"{url}/signal", data={**body, "csrf_token": token})
    assert sent.status_code == 302
    assert b"Signal document-identity sent" in http.get(url).data
    wait_status(http, wid, waiting_for="signal:document-income")
    bad = http.post(f"{url}/signal", data={"signal": "x", "payload": "{not json", "csrf_token": token})
    assert bad.status_code == 400 and b"payload is not JSON" in bad.data
    wrong_shape = http.post(f"{url}/signal", data={"signal": "document-income", "csrf_token": token,
                                                   "payload": '{"document_type": "income", "document_id": "P-1"}'})
    assert wrong_shape.status_code == 302  # refused: the loan declares the payload's type
    assert b"Signal not sent" in (page := http.get(url).data) and b"uploaded_at" in page
    assert db.execute("SELECT count(*) FROM signals WHERE signal_name = 'document-income'").fetchone() == (0,)

    assert http.post(f"{url}/cancel", data={"csrf_token": token}).status_code == 302
    page = http.get(url).data
    assert b"Workflow cancelled." in page and why_of(page).startswith("cancelled at")


def test_bad_filters_and_unknown_workflows_get_a_page_saying_so(http: FlaskClient) -> None:
    for query, message in (("limit=7", b"limit must be one of"), ("status=stuck", b"status must be one of"),
                           ("from=soon", b"from is not an ISO 8601 time"), ("after=x", b"not a cursor"),
                           ("tenant=acme", b"tenant is not a UUID")):
        page = http.get(f"/console/?{query}")
        assert page.status_code == 400 and message in page.data, query
    page = http.get("/console/workflows/loan-application/0190f3c2-5a1e-7c3b-9d4e-2f6a8b1c0d9e")
    assert page.status_code == 404 and b"no workflow loan-application/" in page.data
    assert http.get("/console/workflows/loan-application/12").status_code == 400


def test_keys_show_each_tenant_its_own_and_the_admin_everything(keyed: FlaskClient, loan_worker: Worker) -> None:
    alice = start_loan(keyed, headers={"Authorization": f"Bearer {ALICE_KEY}"})
    bob = start_loan(keyed, headers={"Authorization": f"Bearer {BOB_KEY}"})

    page = keyed.get("/console/")
    assert page.status_code == 302 and "/console/login" in page.headers["Location"]
    login = keyed.get("/console/login")
    wrong = keyed.post("/console/login", data={"key": "guess", "csrf_token": csrf(login.data)})
    assert wrong.status_code == 401 and b"not valid" in wrong.data
    assert keyed.post("/console/login", data={"key": ALICE_KEY}).status_code == 400  # no CSRF token
    assert keyed.post("/console/login", data={"key": ALICE_KEY, "csrf_token": csrf(login.data)}).status_code == 302

    page = keyed.get("/console/")
    assert alice.encode() in page.data and bob.encode() not in page.data
    assert keyed.get(f"/console/workflows/loan-application/{bob}").status_code == 404
    assert keyed.get(f"/console/workflows/loan-application/{alice}").status_code == 200
    assert keyed.get("/console/fleet").status_code == 403
    assert keyed.get("/console/fleet/rates.json").status_code == 403
    token = csrf(keyed.get("/console/").data)
    assert keyed.post(f"/console/workflows/loan-application/{bob}/cancel", data={"csrf_token": token}).status_code == 404

    assert keyed.post("/console/logout", data={"csrf_token": token}).status_code == 302
    assert keyed.get("/console/").status_code == 302
    login = keyed.get("/console/login")
    keyed.post("/console/login", data={"key": ADMIN_KEY, "csrf_token": csrf(login.data)})
    page = keyed.get("/console/")
    assert alice.encode() in page.data and bob.encode() in page.data
    assert keyed.get("/console/fleet").status_code == 200
    assert keyed.get(f"/console/?tenant={BOB}").data.count(b"/console/workflows/") == 1


def test_the_console_cookie_is_signed(keyed: FlaskClient) -> None:
    login = keyed.get("/console/login")
    cookie = keyed.get_cookie("flows_console", path="/console")
    assert cookie is not None and cookie.http_only and cookie.same_site == "Lax"
    keyed.post("/console/login", data={"key": ADMIN_KEY, "csrf_token": csrf(login.data)})
    assert keyed.get("/console/").status_code == 200
    signed = keyed.get_cookie("flows_console", path="/console")
    assert signed is not None and signed.value != cookie.value
    keyed.set_cookie("flows_console", signed.value[:-3] + "abc", path="/console")  # tampered: not signed by us
    assert keyed.get("/console/").status_code == 302  # logged out, with a fresh token
