"""API keys and tenant isolation: with FLOWS_API_KEYS set, a request needs a
key, acts as its tenant, and cannot see or signal another tenant's workflows."""

from __future__ import annotations

import uuid
from typing import Any, Iterator

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient

import flows
from tests.webapp_support import BASE, make_app, row_counts, send_approval, send_document, start_loan, status
from webapp import create_app
from webapp.extension import client as flows_client

ALICE, BOB = uuid.UUID("0190a4c2-0000-7000-8000-00000000a11c"), uuid.UUID("0190a4c2-0000-7000-8000-000000000b0b")
KEYS = f"alice-key:{ALICE}, bob-key:{BOB}"


def auth(key: str) -> dict[str, Any]:
    return {"headers": {"Authorization": f"Bearer {key}"}}


@pytest.fixture
def keyed_app(db_url: str) -> Iterator[Flask]:
    app = make_app(db_url, API_KEYS=KEYS)
    yield app
    flows_client.close(app)


@pytest.fixture
def http(keyed_app: Flask) -> FlaskClient:
    return keyed_app.test_client()


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer nope"}, {"Authorization": "alice-key"}, {"Authorization": "Basic alice-key"},
     {"Authorization": "Bearer "}, {"Authorization": "Bearer alice-key-and-more"}],
)
def test_requests_without_a_valid_key_are_401(
    http: FlaskClient, db: psycopg.Connection[Any], headers: dict[str, str]
) -> None:
    wid = start_loan(http, **auth("alice-key"))
    before = row_counts(db)
    body = {"applicant_name": "Eve", "amount": 1000, "purpose": "x"}
    for r in (
        http.post(BASE, json=body, headers=headers),
        http.get(f"{BASE}/loan-application/{wid}", headers=headers),
        http.get(f"{BASE}/loan-application/{wid}/result", headers=headers),
        http.post(f"{BASE}/loan-application/{wid}/documents", json={"document_type": "identity",
                                                                    "document_id": "DL-1"}, headers=headers),
        http.post(f"{BASE}/loan-application/{wid}/approve", json={"approver_role": "manager", "approved": True},
                  headers=headers),
    ):
        assert r.status_code == 401, r.json
        assert r.json["error"] == "unauthorized" and "Bearer" in r.json["detail"]
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert row_counts(db) == before


def test_each_tenant_sees_only_its_own_workflows(http: FlaskClient, db: psycopg.Connection[Any]) -> None:
    wid = start_loan(http, **auth("alice-key"))
    assert db.execute("SELECT tenant_id FROM workflows WHERE id = %s", (wid,)).fetchone() == (ALICE,)
    assert status(http, wid, **auth("alice-key"))["TenantID"] == str(ALICE)

    before = row_counts(db)
    for path in (f"{BASE}/loan-application/{wid}", f"{BASE}/loan-application/{wid}/result"):
        r = http.get(path, **auth("bob-key"))
        assert r.status_code == 404 and r.json["error"] == "workflow not found"
    r = send_document(http, wid, "identity", "DL-1", **auth("bob-key"))
    assert r.status_code == 404 and r.json["error"] == "workflow not found"
    r = send_approval(http, wid, True, **auth("bob-key"))
    assert r.status_code == 404
    assert row_counts(db) == before  # Bob wrote nothing into Alice's workflow

    r = send_document(http, wid, "identity", "DL-1", **auth("alice-key"))
    assert r.status_code == 200
    assert db.execute("SELECT tenant_id FROM signals WHERE workflow_id = %s", (wid,)).fetchall() == [(ALICE,)]

    bob_wid = start_loan(http, "Bob Jones", **auth("bob-key"))
    assert status(http, bob_wid, **auth("bob-key"))["TenantID"] == str(BOB)
    assert http.get(f"{BASE}/loan-application/{bob_wid}", **auth("alice-key")).status_code == 404


def test_health_and_openapi_need_no_key(http: FlaskClient) -> None:
    assert http.get("/healthz").status_code == 200
    doc = http.get("/openapi.json").json
    assert doc["paths"]["/api/loans"]["post"]["security"] == [{"bearer": []}]


def test_without_keys_everything_runs_as_the_default_tenant(db_url: str, db: psycopg.Connection[Any]) -> None:
    app = make_app(db_url)
    try:
        http = app.test_client()
        wid = start_loan(http, headers={"Authorization": "Bearer anything"})
        assert status(http, wid)["TenantID"] == str(flows.DEFAULT_TENANT_ID)
        assert db.execute("SELECT tenant_id FROM workflows WHERE id = %s", (wid,)).fetchone() == (
            flows.DEFAULT_TENANT_ID,)
    finally:
        flows_client.close(app)


def test_keys_come_from_the_environment(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWS_API_KEYS", f"env-key:{ALICE}")
    monkeypatch.setenv("DATABASE_URL", db_url)
    app = create_app()
    try:
        http = app.test_client()
        assert http.get(f"{BASE}/loan-application/{ALICE}").status_code == 401
        wid = start_loan(http, **auth("env-key"))
        assert status(http, wid, **auth("env-key"))["TenantID"] == str(ALICE)
    finally:
        flows_client.close(app)


@pytest.mark.parametrize("keys", ["alice-key", "alice-key:not-a-uuid", f":{ALICE}", f"k:{ALICE},k:{BOB}"])
def test_bad_key_configuration_fails_at_startup(db_url: str, keys: str) -> None:
    with pytest.raises(flows.ConfigurationError, match="FLOWS_API_KEYS"):
        make_app(db_url, API_KEYS=keys)
