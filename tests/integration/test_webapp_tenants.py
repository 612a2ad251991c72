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
ALICE_KEY, BOB_KEY = "alice-key-0123456789", "bob-key-9876543210"
KEYS = f"{ALICE_KEY}:{ALICE}, {BOB_KEY}:{BOB}"


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
    [{}, {"Authorization": "Bearer nope"}, {"Authorization": ALICE_KEY}, {"Authorization": f"Basic {ALICE_KEY}"},
     {"Authorization": "Bearer "}, {"Authorization": f"Bearer {ALICE_KEY}-and-more"},
     {"Authorization": f"Bearer {ALICE_KEY[:-1]}"}, {"Authorization": f"Bearer {ALICE_KEY.upper()}"}],
)
def test_requests_without_a_valid_key_are_401(
    http: FlaskClient, db: psycopg.Connection[Any], headers: dict[str, str]
) -> None:
    wid = start_loan(http, **auth(ALICE_KEY))
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
    wid = start_loan(http, **auth(ALICE_KEY))
    assert db.execute("SELECT tenant_id FROM workflows WHERE id = %s", (wid,)).fetchone() == (ALICE,)
    assert status(http, wid, **auth(ALICE_KEY))["TenantID"] == str(ALICE)

    before = row_counts(db)
    for path in (f"{BASE}/loan-application/{wid}", f"{BASE}/loan-application/{wid}/result"):
        r = http.get(path, **auth(BOB_KEY))
        assert r.status_code == 404 and r.json["error"] == "workflow not found"
    r = send_document(http, wid, "identity", "DL-1", **auth(BOB_KEY))
    assert r.status_code == 404 and r.json["error"] == "workflow not found"
    r = send_approval(http, wid, True, **auth(BOB_KEY))
    assert r.status_code == 404
    assert row_counts(db) == before  # Bob wrote nothing into Alice's workflow

    r = send_document(http, wid, "identity", "DL-1", **auth(ALICE_KEY))
    assert r.status_code == 200
    assert db.execute("SELECT tenant_id FROM signals WHERE workflow_id = %s", (wid,)).fetchall() == [(ALICE,)]

    bob_wid = start_loan(http, "Bob Jones", **auth(BOB_KEY))
    assert status(http, bob_wid, **auth(BOB_KEY))["TenantID"] == str(BOB)
    assert http.get(f"{BASE}/loan-application/{bob_wid}", **auth(ALICE_KEY)).status_code == 404


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
    monkeypatch.setenv("FLOWS_API_KEYS", f"env-key-0123456789abcdef:{ALICE}")
    monkeypatch.setenv("DATABASE_URL", db_url)
    app = create_app()
    try:
        http = app.test_client()
        assert http.get(f"{BASE}/loan-application/{ALICE}").status_code == 401
        wid = start_loan(http, **auth("env-key-0123456789abcdef"))
        assert status(http, wid, **auth("env-key-0123456789abcdef"))["TenantID"] == str(ALICE)
    finally:
        flows_client.close(app)


def test_keys_as_a_json_object_in_the_environment(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWS_API_KEYS", f'{{"{ALICE_KEY}": "{ALICE}", "{BOB_KEY}": "{BOB}"}}')
    monkeypatch.setenv("DATABASE_URL", db_url)
    app = create_app()
    try:
        wid = start_loan(app.test_client(), **auth(BOB_KEY))
        assert status(app.test_client(), wid, **auth(BOB_KEY))["TenantID"] == str(BOB)
    finally:
        flows_client.close(app)


SECRET = "s3cret-key-that-must-not-leak"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        # Set, but no usable key: each must refuse to start, never run open.
        ("null", "set to a NoneType"), ("[]", "set to a list"), ("{}", "lists no keys"), ("0", "set to a int"),
        ("false", "set to a bool"), ('""', "entry 1 is empty"), ("", "entry 1 is empty"), (" , ", "entry 1 is empty"),
        (f'["{SECRET}:{ALICE}"]', "set to a list"), ("true", "set to a bool"), ("12345", "set to a int"),
        # Unusable entries: the message names the entry, never its key.
        (f"{SECRET}", "entry 1 has no ':tenant-uuid' part"),
        (f"{SECRET}:not-a-uuid", "the tenant of entry 1 is not a UUID"),
        (f"{ALICE}:{SECRET}", "the tenant of entry 1 is not a UUID"),  # the wrong way round
        (f"{SECRET}:{ALICE},", "entry 2 is empty"),
        (f":{ALICE}", "the key of entry 1 is shorter than 16"),
        (f"k:{ALICE}", "the key of entry 1 is shorter than 16"),
        (f"{SECRET[:15]}:{ALICE}", "the key of entry 1 is shorter than 16"),
        (f"{SECRET} x:{ALICE}", "the key of entry 1 holds a space"),
        (f"{SECRET}:{ALICE},{SECRET}:{BOB}", "entry 2 repeats the key of an earlier entry"),
        (f'{{"{SECRET}": "{SECRET}"}}', "the tenant of entry 1 is not a UUID"),
        (f'{{"{SECRET}": 5}}', "the tenant of entry 1 is not a UUID"),
    ],
)
def test_api_keys_set_but_unusable_refuse_to_start(
    db_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, value: str, problem: str
) -> None:
    monkeypatch.setenv("FLOWS_API_KEYS", value)
    monkeypatch.setenv("DATABASE_URL", db_url)
    with pytest.raises(flows.ConfigurationError, match="FLOWS_API_KEYS") as info:
        create_app()
    assert problem in str(info.value)
    assert SECRET[:10] not in str(info.value) and SECRET[:10] not in caplog.text


def test_a_16_character_key_is_the_shortest_accepted(db_url: str) -> None:
    app = make_app(db_url, API_KEYS=f"{'k' * 16}:{ALICE}")
    try:
        assert start_loan(app.test_client(), **auth("k" * 16))
    finally:
        flows_client.close(app)
