"""The spec's walkthrough (spec/loan-demo.md) over HTTP against the Procfile's
real gunicorn and worker processes, checking after each step the rows the
spec shows."""

from __future__ import annotations

import http.client
import json
import time
import uuid
from datetime import timedelta
from typing import Any, Callable
from urllib.parse import urlsplit

import psycopg

from tests.acceptance.loan_stack import Stack, loan_stack  # noqa: F401 - fixture
from webapp import loans

BASE = "/api/loans"
DEFAULT_TENANT = "00000000-0000-0000-0000-000000000000"
COMPLIANCE_SLEEP_SECONDS = 1.5  # long enough to see the timer pending


def wait_for(check: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return value


def rows(db: psycopg.Connection[Any], query: str, *params: Any) -> list[tuple[Any, ...]]:
    return db.execute(query, params).fetchall()


def waiting(stack: Stack, path: str, want: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        code, body = stack.call("GET", path)
        assert code == 200, body
        assert body["Status"] == "running" or want == "", body
        return body if body["WaitingFor"] == want else None

    return wait_for(check, what=f"WaitingFor={want!r}")  # type: ignore[no-any-return]


def test_spec_walkthrough(loan_stack: Callable[..., Stack], db: psycopg.Connection[Any]) -> None:
    stack = loan_stack(FLOWS_COMPLIANCE_SLEEP=str(COMPLIANCE_SLEEP_SECONDS))

    # 3. Submit a loan application
    code, started = stack.call("POST", BASE, {"applicant_name": "Jane Smith", "amount": 75000,
                                              "purpose": "home renovation"})
    assert code == 201, started
    wid = started["workflow_id"]
    assert uuid.UUID(wid).version == 7
    assert started["workflow_name"] == "loan-application"
    shard = started["message"].removeprefix("Loan application started successfully (shard: ").removesuffix(")")
    assert shard in ("loan-application-shard-0", "loan-application-shard-1", "loan-application-shard-2")
    path = f"{BASE}/loan-application/{wid}"

    assert rows(db, "SELECT id::text, name, status, tenant_id::text, input FROM workflows WHERE id = %s", wid) == [
        (wid, shard, "running", DEFAULT_TENANT,
         {"applicant_name": "Jane Smith", "amount": 75000, "purpose": "home renovation"}),
    ]
    credit = wait_for(lambda: rows(
        db, "SELECT id, name, status, sequence_num, input FROM activities WHERE workflow_id = %s", wid))
    assert len(credit) == 1
    activity_id, name, state, seq, inp = credit[0]
    assert (name, seq, inp) == ("check-credit-score", 1, {"applicant_name": "Jane Smith"})
    assert state in ("scheduled", "running", "completed")
    if state != "completed":  # the worker may be quicker than this query
        tasks = rows(db, "SELECT task_type, workflow_id::text FROM task_queue WHERE workflow_id = %s"
                         " AND target_id = %s", wid, activity_id)
        assert tasks in ([("activity", wid)], [])

    # 4. Check status: after the credit check it waits for the first document
    body = waiting(stack, path, "signal:document-identity")
    assert body == {"ID": wid, "TenantID": DEFAULT_TENANT, "Name": shard, "Version": 1, "Status": "running",
                    "Error": "", "WaitingFor": "signal:document-identity"}
    [(name, state, output, attempt)] = rows(
        db, "SELECT name, status, output, attempt FROM activities WHERE workflow_id = %s"
            " AND name = 'check-credit-score'", wid)
    assert (name, state, attempt) == ("check-credit-score", "completed", 0)
    assert output["score"] == loans.credit_score("Jane Smith") and 300 <= output["score"] <= 850
    assert output["provider"] == "Demo Credit Bureau" and output["checked_at"]
    history = rows(db, "SELECT sequence_num, step, event_type FROM history_events WHERE workflow_id = %s"
                       " ORDER BY sequence_num", wid)
    assert history[:3] == [(1, 0, "workflow_started"), (2, 1, "activity_scheduled"), (3, 1, "activity_completed")]

    # 5. Submit the documents (identity, income, and address above $50k)
    for doc_type, doc_id in (("identity", "DL-987654321"), ("income", "W2-2023-456"),
                             ("address", "UTIL-202401-789")):
        code, body = stack.call("POST", f"{path}/documents", {"document_type": doc_type, "document_id": doc_id})
        assert code == 200, body
        assert body["signal_name"] == f"document-{doc_type}"

    # 6. The compliance timer, while it is pending
    waiting(stack, path, "timer")
    [(timer_id, fire_at, fired, seq, created_at)] = rows(
        db, "SELECT id, fire_at, fired, sequence_num, created_at FROM timers WHERE workflow_id = %s", wid)
    assert (fired, seq) == (False, 8)
    assert abs((fire_at - created_at) - timedelta(seconds=COMPLIANCE_SLEEP_SECONDS)) < timedelta(seconds=0.5)
    timer_task = rows(db, "SELECT task_type, visibility_timeout FROM task_queue WHERE workflow_id = %s"
                          " AND task_type = 'timer'", wid)
    assert timer_task in ([("timer", fire_at)], [])  # [] only if it fired meanwhile

    # The signals were consumed, in order, each verified by an activity
    signals = rows(db, "SELECT signal_name, payload, consumed FROM signals WHERE workflow_id = %s"
                       " ORDER BY signal_name", wid)
    assert [(n, p["document_type"], p["document_id"], c) for n, p, c in signals] == [
        ("document-address", "address", "UTIL-202401-789", True),
        ("document-identity", "identity", "DL-987654321", True),
        ("document-income", "income", "W2-2023-456", True),
    ]
    assert all(p["uploaded_at"] for _, p, _ in signals)
    verified = rows(db, "SELECT sequence_num, status, input->>'document_type', output->>'valid' FROM activities"
                        " WHERE workflow_id = %s AND name = 'verify-document' ORDER BY sequence_num", wid)
    assert verified == [(3, "completed", "identity", "true"), (5, "completed", "income", "true"),
                        (7, "completed", "address", "true")]

    # 7. The random review decision, recorded
    random_event = wait_for(lambda: rows(
        db, "SELECT step, event_data FROM history_events WHERE workflow_id = %s"
            " AND event_type = 'random_generated'", wid))
    [(seq, data)] = random_event
    assert seq == 9 and data["num_bytes"] == 8 and len(data["random_bytes"]) == 8
    reviewed = int.from_bytes(bytes(data["random_bytes"]), "big") / 2**64 < loans.REVIEW_PROBABILITY
    assert rows(db, "SELECT fired FROM timers WHERE id = %s", timer_id) == [(True,)]
    if reviewed:
        waiting(stack, path, "signal:manager-approval")
        code, body = stack.call("POST", f"{path}/approve", {"approver_role": "manager", "approved": True,
                                                             "comments": "Application looks good, approve"})
        assert code == 200, body
        [(payload, consumed)] = wait_for(lambda: rows(
            db, "SELECT payload, consumed FROM signals WHERE workflow_id = %s"
                " AND signal_name = 'manager-approval' AND consumed", wid))
        assert payload["approver_role"] == "manager" and payload["approved"] is True and payload["approved_at"]

    # 10. The final result
    def final() -> dict[str, Any] | None:
        code, body = stack.call("GET", f"{path}/result")
        assert code == 200 and body["Status"] in ("running", "completed"), body
        return body if body["Status"] == "completed" else None

    result = wait_for(final, what="completion")
    output = result.pop("Output")
    assert result == {"ID": wid, "TenantID": DEFAULT_TENANT, "Name": shard, "Version": 1, "Status": "completed",
                      "Error": "", "WaitingFor": ""}
    assert output["application_id"] == wid
    assert (output["decision"], output["approved_amount"], output["reason"]) == (
        "approved", 75000, "All checks passed successfully")

    # 9. The disbursement, idempotent by the activity's key
    [(state, inp, out, seq)] = rows(db, "SELECT status, input, output, sequence_num FROM activities"
                                        " WHERE workflow_id = %s AND name = 'disburse-loan'", wid)
    assert state == "completed"
    assert inp == {"application_id": wid, "applicant_name": "Jane Smith", "amount": 75000}
    assert out["amount"] == 75000 and out["disbursed_at"]
    assert out["transaction_id"] == loans.transaction_id_for(f"{wid}:{seq}")
    assert not rows(db, "SELECT 1 FROM activities WHERE workflow_id = %s AND name = 'get-underwriter-approval'", wid)

    # Final database state
    [(status, db_output, final_seq, activity_results)] = rows(
        db, "SELECT status, output, sequence_num, activity_results FROM workflows WHERE id = %s", wid)
    assert status == "completed"
    assert db_output == {**output}
    assert db_output["processed_at"].endswith("Z")
    activities = rows(db, "SELECT name, status, sequence_num, output FROM activities WHERE workflow_id = %s"
                          " ORDER BY sequence_num", wid)
    assert [(n, s) for n, s, _, _ in activities] == [
        ("check-credit-score", "completed"), ("verify-document", "completed"), ("verify-document", "completed"),
        ("verify-document", "completed"), ("disburse-loan", "completed"),
    ]
    assert activity_results == {str(seq): out for _, _, seq, out in activities}
    assert rows(db, "SELECT bool_and(consumed) FROM signals WHERE workflow_id = %s", wid) == [(True,)]
    assert rows(db, "SELECT fired FROM timers WHERE workflow_id = %s", wid) == [(True,)]
    assert rows(db, "SELECT count(*) FROM task_queue WHERE workflow_id = %s", wid) == [(0,)]

    # The audit trail: events numbered 1, 2, 3... in the order they happened,
    # each with the replay step it belongs to (0: none).
    history = rows(db, "SELECT sequence_num, step, event_type FROM history_events WHERE workflow_id = %s"
                       " ORDER BY sequence_num", wid)
    assert [seq for seq, _, _ in history] == list(range(1, len(history) + 1))
    review = [(10, "signal_received")] if reviewed else []
    n = 11 if reviewed else 10
    assert [(step, kind) for _, step, kind in history] == [
        (0, "workflow_started"),
        (1, "activity_scheduled"), (1, "activity_completed"),
        (2, "signal_awaited"), (2, "signal_received"),  # the identity document's wait has a timeout
        (3, "activity_scheduled"), (3, "activity_completed"),
        (4, "signal_received"), (5, "activity_scheduled"), (5, "activity_completed"),
        (6, "signal_received"), (7, "activity_scheduled"), (7, "activity_completed"),
        (8, "timer_started"), (8, "timer_fired"),
        (9, "random_generated"),
        *review,
        (n, "activity_scheduled"), (n, "activity_completed"),
        (n + 1, "time_recorded"),
        (0, "workflow_completed"),
    ]
    assert final_seq == n + 2

    # Signals to the ended workflow are refused
    code, body = stack.call("POST", f"{path}/documents", {"document_type": "identity", "document_id": "DL-1"})
    assert code == 409 and body["error"] == "workflow has ended"


def test_large_loan_goes_to_the_underwriter(loan_stack: Callable[..., Stack], db: psycopg.Connection[Any]) -> None:
    stack = loan_stack()
    code, started = stack.call("POST", BASE, {"applicant_name": "Jane Smith", "amount": 150000,
                                              "purpose": "business expansion"})
    assert code == 201, started
    wid = started["workflow_id"]
    path = f"{BASE}/loan-application/{wid}"
    for doc_type, doc_id in (("address", "UTIL-1"), ("identity", "DL-2"), ("income", "W2-3")):  # any order
        assert stack.call("POST", f"{path}/documents", {"document_type": doc_type, "document_id": doc_id})[0] == 200

    def settled() -> dict[str, Any] | None:
        body = stack.call("GET", path)[1]
        if body["WaitingFor"] == "signal:manager-approval":  # the 30% review: approve it
            assert stack.call("POST", f"{path}/approve", {"approver_role": "manager", "approved": True})[0] == 200
        return body if body["Status"] != "running" else None

    body = wait_for(settled, what="completion")
    assert body["Status"] == "completed" and body["Output"]["decision"] == "approved"
    assert body["Output"]["approved_amount"] == 150000
    [(state, inp, out)] = rows(db, "SELECT status, input, output FROM activities WHERE workflow_id = %s"
                                   " AND name = 'get-underwriter-approval'", wid)
    assert state == "completed"
    assert inp == {"application_id": wid, "amount": 150000, "credit_score": loans.credit_score("Jane Smith")}
    assert out["approved"] is True and out["reason"].startswith("Excellent credit history")


def test_bad_input_and_oversized_chunked_bodies_under_gunicorn(
    loan_stack: Callable[..., Stack], db: psycopg.Connection[Any]
) -> None:
    stack = loan_stack()
    code, body = stack.call("POST", BASE, data=b'{"applicant_name": "Jane", "amount": "lots"}')
    assert code == 400 and body["field"] == "amount"
    # Bodies without Content-Length (chunked) are held to 64 KiB as well: one byte
    # more is refused, exactly 64 KiB is read whole (and judged on its content).
    url = urlsplit(stack.base_url)
    prefix, suffix = b'{"applicant_name": "', b'", "amount": 1, "purpose": "p"}'
    for size, status, error in ((64 * 1024 + 1, 413, "request body too large"),
                                (64 * 1024, 400, "invalid request body")):
        filler = size - len(prefix) - len(suffix)
        chunks = iter([prefix + b"x" * (filler // 2), b"y" * (filler - filler // 2) + suffix])
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        conn.request("POST", BASE, body=chunks, headers={"Content-Type": "application/json"}, encode_chunked=True)
        resp = conn.getresponse()
        body = json.loads(resp.read())
        conn.close()
        assert (resp.status, body["error"]) == (status, error), body
    assert rows(db, "SELECT count(*) FROM workflows") == [(0,)]


def test_stops_cleanly_on_sigterm(loan_stack: Callable[..., Stack]) -> None:
    stack = loan_stack()
    code, started = stack.call("POST", BASE, {"applicant_name": "Jane Smith", "amount": 1000, "purpose": "bike"})
    assert code == 201
    # Once the worker has taken the workflow a step, it is in its loop (signal
    # handlers installed): SIGTERM then means a graceful stop, exit code 0.
    waiting(stack, f"{BASE}/loan-application/{started['workflow_id']}", "signal:document-identity")
    assert stack.stop() == {"web": 0, "worker": 0}
