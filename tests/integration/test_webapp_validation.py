"""Bad requests get a 4xx JSON error naming the problem, never a 500, and
write nothing (checked by counting every table's rows)."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from flask.testing import FlaskClient

from tests.conftest import on_citus
from tests.webapp_support import BASE, app, http, row_counts, start_loan  # noqa: F401 - fixtures

GOOD = {"applicant_name": "Jane Smith", "amount": 75000, "purpose": "home renovation"}
NIL = "00000000-0000-0000-0000-000000000000"


def check_error(r: Any, status: int, error: str, field: str | None = None, detail: str | None = None) -> None:
    assert r.status_code == status, (r.status_code, r.data)
    assert r.mimetype == "application/json"
    body = r.json
    assert body["error"] == error, body
    assert isinstance(body["detail"], str) and body["detail"], body
    if field is not None:
        assert body["field"] == field, body
        if field not in ("id", "workflowName"):  # path parameters
            assert field.split(".")[-1] in body["detail"], body
    if detail is not None:
        assert detail in body["detail"], body


@pytest.mark.parametrize(
    ("body", "field", "detail"),
    [
        ({**GOOD, "amount": "75000"}, "amount", "Expected `int`, got `str`"),
        ({**GOOD, "amount": 75000.5}, "amount", "got `float`"),
        ({**GOOD, "amount": True}, "amount", "got `bool`"),
        ({**GOOD, "amount": 0}, "amount", ">= 1"),
        ({**GOOD, "amount": -5}, "amount", ">= 1"),
        ({**GOOD, "amount": 10_000_001}, "amount", "<= 10000000"),
        ({**GOOD, "amount": 10**40}, "amount", None),
        ({**GOOD, "amount": None}, "amount", None),
        ({**GOOD, "applicant_name": ""}, "applicant_name", None),
        ({**GOOD, "applicant_name": "   "}, "applicant_name", None),
        ({**GOOD, "applicant_name": "x" * 201}, "applicant_name", "length <= 200"),
        ({**GOOD, "applicant_name": 42}, "applicant_name", "Expected `str`"),
        ({**GOOD, "purpose": ""}, "purpose", None),
        ({k: v for k, v in GOOD.items() if k != "amount"}, "amount", "missing required field"),
        ({k: v for k, v in GOOD.items() if k != "applicant_name"}, "applicant_name", "missing required field"),
        ({k: v for k, v in GOOD.items() if k != "purpose"}, "purpose", "missing required field"),
        ({**GOOD, "ammount": 5}, "ammount", "unknown field"),
    ],
)
def test_bad_loan_applications(
    http: FlaskClient, db: psycopg.Connection[Any], body: dict[str, Any], field: str, detail: str | None
) -> None:
    before = row_counts(db)
    check_error(http.post(BASE, json=body), 400, "invalid request body", field, detail)
    assert row_counts(db) == before


@pytest.mark.parametrize(
    ("raw", "status", "error"),
    [
        (b"", 400, "malformed JSON"),
        (b"{", 400, "malformed JSON"),
        (b"{'applicant_name': 'x'}", 400, "malformed JSON"),
        (b'{"applicant_name": "Jane", "amount": 1, "purpose": "p"} trailing', 400, "malformed JSON"),
        (b"\xff\xfe", 400, "malformed JSON"),
        (b"[]", 400, "invalid request body"),
        (b"null", 400, "invalid request body"),
        (b'"just a string"', 400, "invalid request body"),
    ],
)
def test_malformed_bodies(http: FlaskClient, db: psycopg.Connection[Any], raw: bytes, status: int, error: str) -> None:
    before = row_counts(db)
    check_error(http.post(BASE, data=raw, content_type="application/json"), status, error)
    assert row_counts(db) == before


def test_body_over_64_kib_is_413(http: FlaskClient, db: psycopg.Connection[Any]) -> None:
    before = row_counts(db)
    big = json.dumps({**GOOD, "purpose": "x" * (64 * 1024)})
    check_error(http.post(BASE, data=big, content_type="application/json"), 413, "request body too large",
                detail="65536 bytes")
    wid = start_loan(http)
    after_start = row_counts(db)
    big_doc = json.dumps({"document_type": "identity", "document_id": "D" * (70 * 1024)})
    check_error(http.post(f"{BASE}/loan-application/{wid}/documents", data=big_doc,
                          content_type="application/json"), 413, "request body too large")
    assert row_counts(db) == after_start
    assert after_start["workflows"] == before["workflows"] + 1


@pytest.mark.parametrize(("size", "status"), [(64 * 1024, 400), (64 * 1024 + 1, 413)])
def test_the_limit_is_exactly_64_kib(http: FlaskClient, size: int, status: int) -> None:
    prefix, suffix = '{"applicant_name": "Jane", "amount": 1, "purpose": "', '"}'
    body = prefix + "x" * (size - len(prefix) - len(suffix)) + suffix
    assert len(body) == size
    r = http.post(BASE, data=body, content_type="application/json")
    # At the limit the body is read and judged (purpose too long); one byte more is refused unread.
    assert r.status_code == status, r.json
    assert r.json["error"] == ("invalid request body" if status == 400 else "request body too large")


@pytest.mark.parametrize(
    "content_type",
    [None, "", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
     "application/jsonx", "application/problem+json", "text/json"],
)
def test_a_body_not_sent_as_application_json_is_415(
    http: FlaskClient, db: psycopg.Connection[Any], content_type: str | None
) -> None:
    """A cross-site form can post text/plain or a form without a preflight,
    and a request with no Content-Type at all: none of them is read."""
    before = row_counts(db)
    headers = {} if content_type is None else {"Content-Type": content_type}
    wid = "00000000-0000-0000-0000-000000000001"
    for path in (BASE, f"{BASE}/loan-application/{wid}/documents", f"{BASE}/loan-application/{wid}/approve"):
        r = http.post(path, data=json.dumps(GOOD), headers=headers)
        check_error(r, 415, "unsupported media type", detail="Content-Type: application/json")
    assert row_counts(db) == before
    check_error(http.post(BASE, data=GOOD), 415, "unsupported media type")  # a form post
    # The charset parameter is allowed (JSON is UTF-8 whatever it says).
    r = http.post(BASE, data=json.dumps(GOOD), headers={"Content-Type": "application/json; charset=utf-8"})
    assert r.status_code == 201


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("", {**GOOD, "applicant_name": "Jane\u0000Smith"}, "applicant_name"),
        ("", {**GOOD, "purpose": "\u0000"}, "purpose"),
        ("/approve", {"approver_role": "manager", "approved": True, "comments": "ok\u0000"}, "comments"),
    ],
)
def test_a_nul_character_is_400_naming_the_field(
    http: FlaskClient, db: psycopg.Connection[Any], path: str, body: dict[str, Any], field: str
) -> None:
    """PostgreSQL cannot store NUL in text or jsonb: refused before any write."""
    url = BASE
    if path:
        url = f"{BASE}/loan-application/{start_loan(http)}{path}"
    before = row_counts(db)
    raw = json.dumps(body)
    assert "\\u0000" in raw  # the JSON escape of a NUL in the string
    r = http.post(url, data=raw, content_type="application/json")
    check_error(r, 400, "invalid request body", field, detail="NUL")
    assert row_counts(db) == before


def test_a_value_the_engine_refuses_is_400_naming_the_request_field(
    http: FlaskClient, db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Behind the decoder, the engine refuses a NUL itself (InvalidInput with
    the value's path, before any write): the answer names the request field."""
    from webapp import routes
    from webapp.schemas import LoanApplication

    monkeypatch.setattr(routes, "decode_body", lambda type_: LoanApplication("Jane\0Smith", 75_000, "renovation"))
    before = row_counts(db)
    check_error(http.post(BASE, json=GOOD), 400, "invalid request body", "applicant_name", detail="NUL")
    assert "input." not in http.post(BASE, json=GOOD).json["detail"]
    assert row_counts(db) == before


@pytest.mark.skipif(on_citus(), reason="the test makes PostgreSQL refuse a value with a trigger, and Citus refuses"
                    " triggers on distributed tables")
def test_a_value_the_database_refuses_is_400_not_503(http: FlaskClient, db: psycopg.Connection[Any]) -> None:
    """Any data error of PostgreSQL (SQLSTATE class 22) is the request's
    fault: 400. A value the codec does not know PostgreSQL refuses is made
    here by a trigger raising one; another class stays a 503."""
    wid = start_loan(http)
    db.execute(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " RAISE EXCEPTION 'value refused: %', NEW.payload USING ERRCODE = TG_ARGV[0]; END $$")
    db.execute("CREATE TRIGGER refuse BEFORE INSERT ON signals FOR EACH ROW EXECUTE FUNCTION refuse('22P02')")
    before = row_counts(db)
    r = http.post(f"{BASE}/loan-application/{wid}/documents", json={"document_type": "identity",
                                                                   "document_id": "DL-4242"})
    check_error(r, 400, "invalid request body", detail="SQLSTATE 22P02")
    assert "DL-4242" not in r.json["detail"]
    assert row_counts(db) == before
    db.execute("DROP TRIGGER refuse ON signals")
    db.execute("CREATE TRIGGER refuse BEFORE INSERT ON signals FOR EACH ROW EXECUTE FUNCTION refuse('53100')")
    r = http.post(f"{BASE}/loan-application/{wid}/documents", json={"document_type": "identity",
                                                                   "document_id": "DL-4242"})
    check_error(r, 503, "database unavailable")


@pytest.mark.parametrize("amount", [110.0, 75000.0, 1e2, 10_000_000.0])
def test_a_whole_number_float_is_an_integer_as_the_schema_says(
    http: FlaskClient, db: psycopg.Connection[Any], amount: float
) -> None:
    """JSON Schema counts 110.0 as an integer: so does the API."""
    r = http.post(BASE, data=json.dumps({**GOOD, "amount": amount}), content_type="application/json")
    assert r.status_code == 201, r.json
    stored = db.execute("SELECT input->'amount' FROM workflows WHERE id = %s", (r.json["workflow_id"],)).fetchone()
    assert stored == (int(amount),)


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (b'{"applicant_name": "Jane", "amount": 110.5, "purpose": "p"}', "got `float`"),
        (b'{"applicant_name": "Jane", "amount": 1e300, "purpose": "p"}', "<= 10000000"),
        (b'{"applicant_name": 1.0, "amount": 110.0, "purpose": "p"}', "Expected `str`"),
        (b'{"applicant_name": "Jane", "amount": 0.0, "purpose": "p"}', ">= 1"),
    ],
)
def test_floats_that_are_no_valid_amount_are_still_refused(http: FlaskClient, raw: bytes, detail: str) -> None:
    check_error(http.post(BASE, data=raw, content_type="application/json"), 400, "invalid request body",
                detail=detail)


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 32_000 + b"]" * 32_000,
        b'{"applicant_name": ' + b"[" * 30_000 + b"]" * 30_000 + b', "amount": 1.0, "purpose": "p"}',
        b'{"a": ' * 9_000 + b"1" + b"}" * 9_000,
    ],
)
def test_deeply_nested_bodies_are_400(http: FlaskClient, raw: bytes) -> None:
    r = http.post(BASE, data=raw, content_type="application/json")
    assert r.status_code == 400, r.data[:200]
    assert r.mimetype == "application/json"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"document_type": "passport", "document_id": "P-1"}, "document_type"),
        ({"document_type": "Identity", "document_id": "P-1"}, "document_type"),
        ({"document_type": "identity", "document_id": ""}, "document_id"),
        ({"document_type": "identity", "document_id": "has space 1"}, "document_id"),
        ({"document_type": "identity", "document_id": "D" * 65}, "document_id"),
        ({"document_type": "identity", "document_id": 123}, "document_id"),
        ({"document_type": "identity"}, "document_id"),
        ({"document_id": "DL-1"}, "document_type"),
        ({"document_type": "identity", "document_id": "DL-1", "extra": 1}, "extra"),
    ],
)
def test_bad_documents(http: FlaskClient, db: psycopg.Connection[Any], body: dict[str, Any], field: str) -> None:
    wid = start_loan(http)
    before = row_counts(db)
    check_error(http.post(f"{BASE}/loan-application/{wid}/documents", json=body), 400, "invalid request body", field)
    assert row_counts(db) == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"approver_role": "intern", "approved": True}, "approver_role"),
        ({"approver_role": "manager", "approved": "yes"}, "approved"),
        ({"approver_role": "manager"}, "approved"),
        ({"approver_role": "manager", "approved": True, "comments": "c" * 2001}, "comments"),
    ],
)
def test_bad_approvals(http: FlaskClient, db: psycopg.Connection[Any], body: dict[str, Any], field: str) -> None:
    wid = start_loan(http)
    before = row_counts(db)
    check_error(http.post(f"{BASE}/loan-application/{wid}/approve", json=body), 400, "invalid request body", field)
    assert row_counts(db) == before


@pytest.mark.parametrize("suffix", ["", "/result", "/documents", "/approve"])
def test_unknown_workflow_name_malformed_and_unknown_ids(
    http: FlaskClient, db: psycopg.Connection[Any], suffix: str
) -> None:
    wid = start_loan(http)
    before = row_counts(db)
    call = http.get if suffix in ("", "/result") else http.post
    body = {"approver_role": "manager", "approved": True} if suffix == "/approve" else {
        "document_type": "identity", "document_id": "DL-1"}
    kwargs = {} if call == http.get else {"json": body}
    check_error(call(f"{BASE}/order/{wid}{suffix}", **kwargs), 404, "unknown workflow", "workflowName")
    check_error(call(f"{BASE}/loan-application-shard-0/{wid}{suffix}", **kwargs), 404, "unknown workflow")
    check_error(call(f"{BASE}/loan-application/not-a-uuid{suffix}", **kwargs), 400, "invalid workflow id", "id")
    check_error(call(f"{BASE}/loan-application/{NIL}{suffix}", **kwargs), 404, "workflow not found")
    assert row_counts(db) == before


def test_unknown_routes_and_methods_are_json(http: FlaskClient) -> None:
    check_error(http.get("/api/nothing"), 404, "not found")
    r = http.delete(BASE)
    check_error(r, 405, "method not allowed")
    assert "POST" in r.headers["Allow"]
    check_error(http.put(f"{BASE}/loan-application/{NIL}"), 405, "method not allowed")


def test_every_answer_of_the_api_is_json(app: Any, http: FlaskClient) -> None:
    """Every route of the API (the console's HTML pages and the metrics' text aside), with every
    method (OPTIONS and HEAD included), and unknown paths, answer with a JSON
    body; OPTIONS lists the methods the route takes."""
    api_rules = [rule for rule in app.url_map.iter_rules() if rule.endpoint.split(".")[0] in ("api", "meta")]
    assert len(api_rules) >= 7
    paths = [_example(rule.rule) for rule in api_rules] + ["/", "/nothing", f"{BASE}/x/y/z", "/api"]
    for path in paths:
        for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"):
            r = http.open(path, method=method)
            assert r.mimetype == "application/json", (method, path, r.status_code, r.mimetype)
            if method != "HEAD":
                json.loads(r.data)
    r = http.options(BASE)
    assert r.status_code == 200 and r.json == {"allow": ["OPTIONS", "POST"]}
    assert r.headers["Allow"] == "OPTIONS, POST"


def _example(rule: str) -> str:
    return rule.replace("<workflow_name>", "loan-application").replace("<workflow_id>", NIL)


def test_start_response_matches_the_spec(http: FlaskClient, db: psycopg.Connection[Any]) -> None:
    r = http.post(BASE, json=GOOD)
    assert r.status_code == 201
    body = r.json
    assert set(body) == {"workflow_id", "workflow_name", "message"}
    assert body["workflow_name"] == "loan-application"
    shard = db.execute("SELECT name FROM workflows WHERE id = %s", (body["workflow_id"],)).fetchone()[0]
    assert body["message"] == f"Loan application started successfully (shard: {shard})"
    assert r.headers["Location"] == f"{BASE}/loan-application/{body['workflow_id']}"
    # Before any worker has run it, the workflow is running and waits for nothing yet.
    st = http.get(r.headers["Location"]).json
    assert st == {"ID": body["workflow_id"], "TenantID": NIL, "Name": shard, "Version": 1, "Status": "running",
                  "Error": "", "WaitingFor": ""}
