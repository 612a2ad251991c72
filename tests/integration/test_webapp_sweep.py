"""A sweep of bad input over every endpoint: malformed JSON, wrong types,
NUL and other odd text, huge and deep bodies, wrong content types, unknown
and malformed ids, other tenants' ids and keys, wrong methods. No answer is
a 5xx; every refusal is a 4xx JSON error that writes nothing. Some odd text
is a valid name ("' OR 1=1 --"): such a loan starts, whole, with the text
stored as sent.

``pytest tests/integration/test_webapp_sweep.py -s`` prints the counts
(requests per endpoint, answers by status)."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from typing import Any, Iterator

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.webapp_support import BASE, make_app, row_counts, start_loan
from webapp.extension import client as flows_client

ALICE, BOB = uuid.UUID("0190a4c2-0000-7000-8000-00000000a11c"), uuid.UUID("0190a4c2-0000-7000-8000-000000000b0b")
ALICE_KEY, BOB_KEY = "alice-key-0123456789", "bob-key-9876543210"
LOAN = {"applicant_name": "Jane Smith", "amount": 75000, "purpose": "home renovation"}
DOCUMENT = {"document_type": "identity", "document_id": "DL-987654321"}
APPROVAL = {"approver_role": "manager", "approved": True, "comments": "ok"}
NIL = "00000000-0000-0000-0000-000000000000"

# Values of the wrong type or shape, odd text, numbers at the edges.
ODD_VALUES: list[Any] = [
    None, True, False, 0, -1, 1.5, 110.0, 1e308, -0.0, 10**40, "", " ", "\u0000", "a\u0000b", "\t\n\r",
    "\u202e\u0041", "\ufeff", "\U0001f600" * 50, "x" * 5000, [], [1, 2], {}, {"a": 1}, [[[[[]]]]],
    "' OR 1=1 --", "'); DROP TABLE workflows; --", "$1", "%s", "{{7*7}}", "../../etc/passwd", "<script>",
]
MALFORMED = [
    b"", b" ", b"{", b"}", b"[", b"nul", b"{'a': 1}", b'{"a":}', b'{"a": 1,}', b"{} {}", b"\xff\xfe\x00",
    b"\xef\xbb\xbf{}", b'{"applicant_name": "\\ud800", "amount": 1, "purpose": "p"}', b'{"a": NaN}',
    b'{"a": Infinity}', b'{"amount": 1e999999}', b'{"amount": 0x10}', b'"\\u0000"', b"[]", b"null", b"1", b"true",
    b'"string"', b"1.5",
]
DEEP = [
    b"[" * 32_000 + b"]" * 32_000,
    b'{"a": ' * 9_000 + b"1" + b"}" * 9_000,
    b'{"applicant_name": ' + b"[" * 30_000 + b"]" * 30_000 + b', "amount": 1, "purpose": "p"}',
]
HUGE = [b'{"a": "' + b"x" * (64 * 1024) + b'"}', b"[" + b"1," * 600_000 + b"1]", b" " * (64 * 1024 + 1)]
CONTENT_TYPES = [None, "", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                 "application/xml", "application/json-patch+json", "text/json"]


def body_variants(good: dict[str, Any]) -> Iterator[tuple[str, bytes, str | None]]:
    """(what, raw body, content type) for every bad body built from ``good``."""
    json_type = "application/json"
    for raw in MALFORMED:
        yield "malformed", raw, json_type
    for raw in DEEP:
        yield "deep", raw, json_type
    for raw in HUGE:
        yield "huge", raw, json_type
    for ctype in CONTENT_TYPES:
        yield "content-type", json.dumps(good).encode(), ctype
    for field in good:
        yield "missing", json.dumps({k: v for k, v in good.items() if k != field}).encode(), json_type
        for value in ODD_VALUES:
            if value != good[field]:
                yield f"field {field}", json.dumps({**good, field: value}).encode(), json_type
    yield "unknown field", json.dumps({**good, "tenant_id": str(BOB)}).encode(), json_type
    yield "NUL key", json.dumps({**good, "a\u0000": 1}).encode(), json_type


@pytest.fixture
def keyed(db_url: str) -> Iterator[Flask]:
    app = make_app(db_url, API_KEYS=f"{ALICE_KEY}:{ALICE},{BOB_KEY}:{BOB}")
    yield app
    flows_client.close(app)


def sweep(http: FlaskClient, alice_loan: str, bob_loan: str,
          started: dict[str, bytes]) -> Counter[tuple[str, int]]:
    """Send every bad request; count answers by (endpoint, status). Loans
    the sweep did start go into ``started`` (id: the body sent)."""
    counts: Counter[tuple[str, int]] = Counter()
    alice = {"Authorization": f"Bearer {ALICE_KEY}"}
    bad_auth: list[dict[str, str]] = [
        {}, {"Authorization": "Bearer"}, {"Authorization": f"Bearer {ALICE_KEY}x"}, {"Authorization": ALICE_KEY},
        {"Authorization": f"Basic {ALICE_KEY}"}, {"Authorization": "Bearer " + "k" * 8000},
        {"Authorization": "Bearer \u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9"},
    ]
    # Ids that are malformed, unknown, or another tenant's (Bob's loan asked for with Alice's key).
    ids = ["not-a-uuid", "0" * 36, NIL, str(uuid.uuid4()), bob_loan, bob_loan.upper(), "{" + bob_loan + "}",
           f"urn:uuid:{bob_loan}", "%00", "..", "x" * 2000, alice_loan + "0", alice_loan[:-1]]
    names = ["loan-application-shard-0", "LOAN-APPLICATION", "order", "loan%00application", "l" * 500]

    def check(endpoint: str, r: Any, sent: bytes = b"") -> None:
        counts[(endpoint, r.status_code)] += 1
        assert r.status_code < 500, (endpoint, r.status_code, r.data[:300])
        assert r.mimetype == "application/json", (endpoint, r.status_code, r.mimetype)
        body = r.json
        if r.status_code == 201 and endpoint == "POST /api/loans":
            started[body["workflow_id"]] = sent
            return
        assert 400 <= r.status_code < 500, (endpoint, r.status_code, r.data[:300])
        assert isinstance(body["error"], str) and isinstance(body["detail"], str) and body["detail"], body

    posts = {
        "POST /api/loans": (lambda wid, name="loan-application": BASE, LOAN),
        "POST .../documents": (lambda wid, name="loan-application": f"{BASE}/{name}/{wid}/documents", DOCUMENT),
        "POST .../approve": (lambda wid, name="loan-application": f"{BASE}/{name}/{wid}/approve", APPROVAL),
    }
    for endpoint, (url, good) in posts.items():
        for _, raw, ctype in body_variants(good):
            headers = dict(alice) if ctype is None else {**alice, "Content-Type": ctype}
            check(endpoint, http.post(url(alice_loan), data=raw, headers=headers), raw)
        for headers in bad_auth:
            check(endpoint, http.post(url(alice_loan), json=good, headers=headers))
        if endpoint != "POST /api/loans":
            for wid in ids:
                check(endpoint, http.post(url(wid), json=good, headers=alice))
            for name in names:
                check(endpoint, http.post(url(alice_loan, name), json=good, headers=alice))
            # Bob's own key on Alice's loan.
            check(endpoint, http.post(url(alice_loan), json=good, headers={"Authorization": f"Bearer {BOB_KEY}"}))
        for method in ("GET", "PUT", "PATCH", "DELETE"):
            check(endpoint, http.open(url(alice_loan), method=method, json=good, headers=alice))

    gets = {"GET .../{id}": "", "GET .../{id}/result": "/result"}
    for endpoint, suffix in gets.items():
        for wid in ids:
            check(endpoint, http.get(f"{BASE}/loan-application/{wid}{suffix}", headers=alice))
        for name in names:
            check(endpoint, http.get(f"{BASE}/{name}/{alice_loan}{suffix}", headers=alice))
        for headers in bad_auth:
            check(endpoint, http.get(f"{BASE}/loan-application/{alice_loan}{suffix}", headers=headers))
        check(endpoint, http.get(f"{BASE}/loan-application/{alice_loan}{suffix}",
                                 headers={"Authorization": f"Bearer {BOB_KEY}"}))
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            check(endpoint, http.open(f"{BASE}/loan-application/{alice_loan}{suffix}", method=method, json=LOAN,
                                      headers=alice))
    for path in ("/healthz", "/openapi.json"):
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            check(f"{method} {path}", http.open(path, method=method, data=MALFORMED[2],
                                                content_type="application/json"))
    return counts


def test_no_bad_request_gets_a_5xx_or_writes_anything(keyed: Flask, db: psycopg.Connection[Any]) -> None:
    http = keyed.test_client()
    alice_loan = start_loan(http, headers={"Authorization": f"Bearer {ALICE_KEY}"})
    bob_loan = start_loan(http, "Bob Jones", headers={"Authorization": f"Bearer {BOB_KEY}"})
    before = row_counts(db)
    started: dict[str, bytes] = {}
    counts = sweep(http, alice_loan, bob_loan, started)

    # Refusals wrote nothing; each loan the sweep started is whole (row,
    # first event, first task) and holds exactly the text sent.
    n = len(started)
    assert row_counts(db) == {**before, "workflows": before["workflows"] + n,
                              "history_events": before["history_events"] + n, "task_queue": before["task_queue"] + n}
    for wid, sent in started.items():
        stored = db.execute("SELECT input, tenant_id FROM workflows WHERE id = %s", (wid,)).fetchone()
        assert stored == (json.loads(sent), ALICE), (stored, sent)

    endpoints = {endpoint for endpoint, _ in counts}
    assert {"POST /api/loans", "POST .../documents", "POST .../approve", "GET .../{id}",
            "GET .../{id}/result"} <= endpoints
    assert {status for _, status in counts} >= {400, 401, 404, 405, 409, 413, 415}
    print(f"\nbad-input sweep: {sum(counts.values())} requests, "
          f"{sum(n for (_, s), n in counts.items() if s >= 500)} x 5xx")
    for endpoint in sorted(endpoints):
        by_status = {s: n for (e, s), n in sorted(counts.items()) if e == endpoint}
        print(f"  {endpoint:22} {sum(by_status.values()):4}  " + "  ".join(f"{s}: {n}" for s, n in by_status.items()))
    totals: Counter[int] = Counter()
    for (_, status), n in counts.items():
        totals[status] += n
    print("  by status: " + "  ".join(f"{s}: {n}" for s, n in sorted(totals.items())))
