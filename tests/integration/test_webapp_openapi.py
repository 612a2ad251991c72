"""/openapi.json describes the routes the app really has, with the bodies
they really accept and return; /healthz reports whether the database answers."""

from __future__ import annotations

import re
import socket
import time
from typing import Any

import msgspec
import psycopg
from flask import Flask
from flask.testing import FlaskClient

from tests.webapp_support import BASE, app, http, make_app, start_loan  # noqa: F401 - fixtures
from webapp import loans, schemas
from webapp.extension import client as flows_client

_PARAM = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>|\{([^{}]+)\}")


def _shape(path: str) -> str:
    return _PARAM.sub("{}", path)


def test_openapi_paths_and_methods_match_the_url_map(app: Flask, http: FlaskClient) -> None:
    doc = http.get("/openapi.json").json
    assert doc["openapi"].startswith("3.")
    documented = {
        (_shape(path), method.upper())
        for path, item in doc["paths"].items() for method in item if method != "parameters"
    }
    served = {
        (_shape(rule.rule), method)
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static" and not rule.endpoint.startswith("flows_console.")  # the console: HTML, no API
        for method in rule.methods - {"HEAD", "OPTIONS"}  # type: ignore[operator]
    }
    assert documented == served
    # Path parameters are declared for every templated path, one per placeholder.
    for path, item in doc["paths"].items():
        names = [a or b for a, b in _PARAM.findall(path)]
        assert [p["name"] for p in item.get("parameters", [])] == names, path


def test_openapi_schemas_resolve_and_name_the_spec_fields(http: FlaskClient) -> None:
    doc = http.get("/openapi.json").json
    components = doc["components"]["schemas"]
    refs = re.findall(r'"\$ref":\s*"#/components/schemas/([^"]+)"', msgspec.json.encode(doc).decode())
    assert refs and all(ref in components for ref in refs)
    status = components["StatusResponse"]
    assert set(status["properties"]) == {"ID", "TenantID", "Name", "Version", "Status", "Error", "WaitingFor",
                                         "Output"}
    assert set(status["required"]) == {"ID", "TenantID", "Name", "Version", "Status", "Error", "WaitingFor"}
    assert set(components["LoanDecision"]["properties"]) == {
        "application_id", "decision", "approved_amount", "reason", "processed_at"}
    assert components["LoanApplication"]["required"] == ["applicant_name", "amount", "purpose"]
    assert sorted(components["DocumentRequest"]["properties"]["document_type"]["enum"]) == sorted(loans.DOCUMENT_TYPES)
    start = doc["paths"]["/api/loans"]["post"]
    assert start["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/LoanApplication")
    assert start["responses"]["201"]["content"]["application/json"]["schema"]["$ref"].endswith("/StartResponse")
    assert start["security"] == []  # no FLOWS_API_KEYS in this app


def test_responses_decode_strictly_as_the_documented_structs(http: FlaskClient) -> None:
    r = http.post(BASE, json={"applicant_name": "Jane Smith", "amount": 75000, "purpose": "car"})
    started = msgspec.json.decode(r.data, type=schemas.StartResponse)
    wid = started.workflow_id
    st = msgspec.json.decode(http.get(f"{BASE}/loan-application/{wid}").data, type=schemas.StatusResponse)
    assert st.id == wid and st.output is msgspec.UNSET
    sig = http.post(f"{BASE}/loan-application/{wid}/documents", json={"document_type": "income",
                                                                      "document_id": "W2-1"})
    assert msgspec.json.decode(sig.data, type=schemas.SignalResponse).signal_name == "document-income"
    err = http.get(f"{BASE}/loan-application/xyz")
    assert msgspec.json.decode(err.data, type=schemas.ErrorBody).field == "id"
    assert msgspec.json.decode(http.get("/healthz").data, type=schemas.Health).status == "ok"


def test_healthz_ok_on_a_migrated_database(http: FlaskClient) -> None:
    r = http.get("/healthz")
    assert r.status_code == 200 and r.json == {"status": "ok"}


def test_healthz_503_on_an_unmigrated_database(db: psycopg.Connection[Any], http: FlaskClient) -> None:
    db.execute("DROP TABLE workflows CASCADE")
    r = http.get("/healthz")
    assert r.status_code == 503 and r.json["error"] == "database unreachable"
    assert r.json["detail"] == "database error: UndefinedTable (details in the server log)"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_database_is_503_within_the_health_timeout() -> None:
    app = make_app(f"postgresql://postgres@127.0.0.1:{_closed_port()}/nope?connect_timeout=1", HEALTH_TIMEOUT=0.5)
    try:
        began = time.monotonic()
        r = app.test_client().get("/healthz")
        assert time.monotonic() - began < 5
        assert r.status_code == 503 and r.json["error"] == "database unreachable"
        assert r.json["detail"] == "database error: OperationalError (details in the server log)"  # no host named
    finally:
        flows_client.close(app)


def test_a_database_that_never_answers_is_503_after_the_health_timeout() -> None:
    with socket.socket() as silent:  # accepts connections (the kernel's backlog), never speaks
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        app = make_app(f"postgresql://postgres@127.0.0.1:{port}/nope?connect_timeout=3", HEALTH_TIMEOUT=0.5)
        try:
            r = app.test_client().get("/healthz")
            assert r.status_code == 503 and r.json == {"error": "database unreachable", "detail": "no answer within 0.5s"}
        finally:
            flows_client.close(app)


def test_api_errors_from_the_database_are_503_not_500(db: psycopg.Connection[Any], http: FlaskClient) -> None:
    wid = start_loan(http)
    db.execute("DROP TABLE signals CASCADE")
    r = http.post(f"{BASE}/loan-application/{wid}/documents", json={"document_type": "identity",
                                                                   "document_id": "DL-1"})
    assert r.status_code == 503
    assert r.json == {"error": "database unavailable", "detail": "the database did not answer; retry later"}
