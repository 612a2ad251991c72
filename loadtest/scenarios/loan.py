"""``loan``: loan applications end to end through the HTTP API.

gunicorn serves the API and the fleet runs ``webapp.loans``. A pool of
client threads each carries loans through: POST the application, POST its
documents at once (the workflow keeps a document that arrives early), then
GET its status until it completes, approving it when it waits for a
manager's review. Applicants are picked with credit scores that pass, and
amounts cycle so that some loans need the proof of address and the
underwriter. End-to-end latency is the workflow's completed_at - created_at
(database clock); the clients' own view (POST to seeing it completed)
includes their polling interval.
"""

from __future__ import annotations

import argparse
import http.client
import json
import threading
import time
from typing import Any

import flows
from webapp import loans

from loadtest import db, stats
from loadtest.report import Measurement, Target
from loadtest.session import Run

HELP = "N loans through the HTTP API (gunicorn + fleet), documents and approvals sent automatically"
DEFAULT_LOANS = 200
DEFAULT_CLIENTS = 16  # loans in flight at once
DEFAULT_COMPLIANCE_SLEEP_SECONDS = 0.2
POLL_SECONDS = 0.1  # a client's status polls for one loan
AMOUNTS = (20_000, 75_000, 250_000)  # 2 documents; 3 documents; 3 documents and the underwriter
HTTP_TIMEOUT_SECONDS = 30.0
APP = "webapp.loans"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--loans", type=int, default=DEFAULT_LOANS, help="loan applications")
    p.add_argument("--clients", type=int, default=DEFAULT_CLIENTS, help="client threads (loans in flight)")
    p.add_argument("--compliance-sleep", type=float, default=DEFAULT_COMPLIANCE_SLEEP_SECONDS,
                   help="FLOWS_COMPLIANCE_SLEEP for the fleet (seconds)")


def targets(args: argparse.Namespace) -> list[Target]:
    return [Target("failed", "<=", 0), Target("client_errors", "<=", 0)]


def applicants(n: int) -> list[str]:
    """Names whose demo credit score passes the underwriter's bar too."""
    names: list[str] = []
    i = 0
    while len(names) < n:
        name = f"Load Tester {i}"
        if loans.credit_score(name) >= loans.UNDERWRITER_CREDIT_SCORE:
            names.append(name)
        i += 1
    return names


class Client:
    """One keep-alive HTTP connection to the API, JSON in and out."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT_SECONDS)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body)
        headers = {} if body is None else {"Content-Type": "application/json"}
        self.conn.request(method, path, data, headers)
        resp = self.conn.getresponse()
        payload = resp.read()
        if resp.status >= 300:
            raise RuntimeError(f"{method} {path}: {resp.status} {payload[:200]!r}")
        return json.loads(payload)

    def close(self) -> None:
        self.conn.close()


def carry(client: Client, name: str, amount: int, index: int, deadline: float) -> float:
    """Take one loan from application to decision; return the client-side seconds."""
    started = time.monotonic()
    body = client.call("POST", "/api/loans", {"applicant_name": name, "amount": amount, "purpose": "load test"})
    path = f"/api/loans/{body['workflow_name']}/{body['workflow_id']}"
    for doc in loans.required_documents(amount):
        client.call("POST", f"{path}/documents", {"document_type": doc, "document_id": f"{doc[:3].upper()}-{index}-1"})
    approved = False
    while time.monotonic() < deadline:
        status = client.call("GET", path)
        if status["Status"] != "running":
            return time.monotonic() - started
        if status["WaitingFor"] == "signal:manager-approval" and not approved:
            client.call("POST", f"{path}/approve", {"approver_role": "manager", "approved": True})
            approved = True  # the status may still say so until the worker takes the signal
            continue
        time.sleep(POLL_SECONDS)
    raise TimeoutError(f"loan {index} still running at the deadline")


def drive(port: int, n: int, clients: int, deadline: float) -> tuple[list[float], list[str]]:
    """Carry ``n`` loans on ``clients`` threads; return client-side seconds and errors."""
    names = applicants(n)
    lock = threading.Lock()
    next_index = iter(range(n))
    seconds: list[float] = []
    errors: list[str] = []

    def worker() -> None:
        client = Client(port)
        try:
            while True:
                with lock:
                    i = next(next_index, None)
                if i is None or time.monotonic() > deadline:
                    return
                try:
                    took = carry(client, names[i], AMOUNTS[i % len(AMOUNTS)], i, deadline)
                    with lock:
                        seconds.append(took)
                except (OSError, RuntimeError, TimeoutError, http.client.HTTPException) as exc:
                    with lock:
                        errors.append(str(exc))
                    client.close()
                    client = Client(port)
        finally:
            client.close()

    threads = [threading.Thread(target=worker, name=f"loan-client-{k}", daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return seconds, errors


def measure(run: Run, args: argparse.Namespace) -> Measurement:
    n = args.loans
    env = {"FLOWS_COMPLIANCE_SLEEP": str(args.compliance_sleep)}
    with run.database() as dsn, run.fleet(APP, dsn, args.workers, env) as proc, run.web(dsn, env) as port:
        shards = flows.Engine(dsn, shards=run.shards).shard_names(loans.WORKFLOW_NAME)
        monitor = db.Monitor(dsn)
        try:
            run.reset_statements(dsn)
            result: dict[str, Any] = {}
            driver = threading.Thread(
                target=lambda: result.update(zip(("seconds", "errors"), drive(port, n, args.clients, run.deadline))),
                name="loan-driver", daemon=True,
            )
            driver.start()
            run.wait_for("loans decided", n, lambda: monitor.ended(shards)[0], procs=(proc,))
            driver.join(max(0.0, run.remaining()))
            times = monitor.workflow_times(shards)
            decisions = monitor.decisions(shards)
            statements = run.statements(dsn, n, "loan")
        finally:
            monitor.close()
    ended = [(created, done, status) for _, created, done, status in times if done is not None]
    e2e = [done - created for created, done, _ in ended]
    first = min((c for c, _, _ in ended), default=0.0)
    last = max((d for _, d, _ in ended), default=0.0)
    client_s = result.get("seconds", [])
    errors = result.get("errors", [])
    for e in errors[:3]:
        run.note(f"client error: {e}")
    metrics: dict[str, float | int | None] = {
        "loans": len(ended),
        "loans_per_s": len(ended) / (last - first) if last > first else None,
        "failed": sum(1 for *_, status in ended if status == "failed"),
        "client_errors": len(errors),
        **{f"decision_{k}": v for k, v in decisions.items()},
        **{f"e2e_{k}": v for k, v in stats.summary_ms(e2e).items()},
        "client_p50_ms": stats.percentile([s * 1000.0 for s in client_s], 50),
        "client_p99_ms": stats.percentile([s * 1000.0 for s in client_s], 99),
    }
    run.note(f"compliance sleep {args.compliance_sleep}s; {args.clients} clients polling every {POLL_SECONDS}s")
    return Measurement(
        metrics,
        statements={"per loan (API and fleet)": statements} if statements else {},
        series={"loans decided": stats.rate_series([d for _, d, _ in ended], first)},
        latencies_ms={"end to end (db)": [x * 1000.0 for x in e2e]},
        series_title="loans decided per second",
        latency_title="end-to-end latency (ms)",
    )
