"""``python -m loadtest.slowclients``: gunicorn's worker classes against slow
clients, and what each costs in throughput.

For each worker class (gunicorn.conf.py, ``FLOWS_WEB_WORKER_CLASS``), on a
fresh database:

1. ``--slow`` clients each open a connection and send a request one header
   line a second for ``--hold`` seconds, while a probe asks ``/healthz``
   every 0.25 s on a new connection (3 s timeout): how many probes were
   answered, and how fast. A slow client the server cuts off reconnects.
2. ``--clients`` keep-alive clients (threads of this process) ask for one
   loan's status as fast as they can for ``--seconds``, then start loans
   for as long: requests/s, latency, and the web processes' CPU time per
   request (user + system, from /proc), the figure a busy machine sways least.

Classes alternate within each repeat, so both see the same machine. All
loops are bounded in time; everything talks to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from loadtest import db, fleet, server

PROBE_INTERVAL_SECONDS = 0.25
PROBE_TIMEOUT_SECONDS = 3.0
LOAN = {"applicant_name": "Jane Smith", "amount": 75000, "purpose": "home renovation"}


@dataclass
class Result:
    worker_class: str
    probes: int = 0
    probes_ok: int = 0
    probe_ms: list[float] = field(default_factory=list)
    slow_cut: int = 0  # slow connections the server closed
    get_rps: float = 0.0
    get_ms: list[float] = field(default_factory=list)
    post_rps: float = 0.0
    post_ms: list[float] = field(default_factory=list)
    get_cpu_ms: float = 0.0  # CPU time of the web processes per request: less swayed by a busy machine
    post_cpu_ms: float = 0.0
    errors: int = 0


def _slow_client(port: int, until: float, opened: threading.Event, cut: list[int]) -> None:
    """A request sent one header line a second until ``until``, never
    finished; when the server cuts the connection, another at once."""
    while time.monotonic() < until:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: slow\r\n")
                opened.set()
                n = 0
                while time.monotonic() < until:
                    time.sleep(1.0)
                    s.sendall(f"X-Slow-{n}: 1\r\n".encode())
                    n += 1
        except OSError:
            cut.append(1)
            opened.set()
            time.sleep(0.1)


def _probe(port: int) -> float | None:
    began = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=PROBE_TIMEOUT_SECONDS)
    try:
        conn.request("GET", "/healthz")
        ok = conn.getresponse().status == 200
    except OSError:
        ok = False
    finally:
        conn.close()
    return (time.monotonic() - began) * 1000 if ok else None


def slow_phase(port: int, slow: int, hold: float, result: Result) -> None:
    until = time.monotonic() + hold
    events = [threading.Event() for _ in range(slow)]
    cut: list[int] = []
    threads = [threading.Thread(target=_slow_client, args=(port, until, e, cut), daemon=True) for e in events]
    for t in threads:
        t.start()
    for e in events:
        e.wait(5)
    time.sleep(1.5)  # every slow client has its connection and is mid-request
    while time.monotonic() < until - PROBE_TIMEOUT_SECONDS:
        result.probes += 1
        ms = _probe(port)
        if ms is not None:
            result.probes_ok += 1
            result.probe_ms.append(ms)
        time.sleep(PROBE_INTERVAL_SECONDS)
    for t in threads:
        t.join(hold + 10)
    result.slow_cut = len(cut)


def _hammer(port: int, method: str, path: str, body: bytes | None, until: float,
            latencies: list[float], errors: list[int]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Content-Type": "application/json"} if body is not None else {}
    try:
        while time.monotonic() < until:
            began = time.monotonic()
            try:
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                if response.status >= 400:
                    errors.append(response.status)
                latencies.append((time.monotonic() - began) * 1000)
            except (OSError, http.client.HTTPException):
                errors.append(0)
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    finally:
        conn.close()


def _web_cpu(proc: fleet.ProcessGroup) -> float:
    return sum(fleet.cpu_seconds(pid) for pid in [proc.pid, *proc.children()])


def load_phase(proc: fleet.ProcessGroup, port: int, clients: int, seconds: float, method: str, path: str,
               body: bytes | None) -> tuple[float, list[float], int, float]:
    """(requests/s, latencies in ms, errors, web CPU ms per request)."""
    cpu_before = _web_cpu(proc)
    latencies: list[float] = []
    errors: list[int] = []
    until = time.monotonic() + seconds
    threads = [threading.Thread(target=_hammer, args=(port, method, path, body, until, latencies, errors))
               for _ in range(clients)]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 30)
    elapsed = time.monotonic() - began
    cpu_ms = (_web_cpu(proc) - cpu_before) * 1000 / max(1, len(latencies))
    return len(latencies) / elapsed, latencies, len(errors), cpu_ms


def measure(srv: db.Server, worker_class: str, args: argparse.Namespace, n: int) -> Result:
    name = f"lt_slowclients_{os.getpid()}_{n}"
    dsn = srv.create_database(name)
    result = Result(worker_class)
    port = fleet.free_port()
    log = fleet.REPO_ROOT / "loadtest" / "results" / "logs" / f"slowclients-{worker_class}.log"
    proc = fleet.start_web(dsn=dsn, shards=3, port=port, log_path=log,
                           env={"FLOWS_WEB_WORKER_CLASS": worker_class, "WEB_CONCURRENCY": str(args.web_workers)})
    try:
        fleet.wait_http_ok(port, "/healthz", time.monotonic() + 30, proc)
        slow_phase(port, args.slow, args.hold, result)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/api/loans", body=json.dumps(LOAN), headers={"Content-Type": "application/json"})
        wid = json.loads(conn.getresponse().read())["workflow_id"]
        conn.close()
        result.get_rps, result.get_ms, get_errors, result.get_cpu_ms = load_phase(
            proc, port, args.clients, args.seconds, "GET", f"/api/loans/loan-application/{wid}", None)
        result.post_rps, result.post_ms, post_errors, result.post_cpu_ms = load_phase(
            proc, port, args.clients, args.seconds, "POST", "/api/loans", json.dumps(LOAN).encode())
        result.errors = get_errors + post_errors
    finally:
        proc.stop()
        srv.drop_database(name)
    return result


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m loadtest.slowclients", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", default="gevent,gthread", help="worker classes, comma-separated")
    p.add_argument("--slow", type=int, default=10, help="slow clients (default %(default)s)")
    p.add_argument("--hold", type=float, default=15.0, help="seconds the slow clients hold on (default %(default)s)")
    p.add_argument("--clients", type=int, default=8, help="load clients (default %(default)s)")
    p.add_argument("--seconds", type=float, default=8.0, help="seconds of each load phase (default %(default)s)")
    p.add_argument("--web-workers", type=int, default=2, help="WEB_CONCURRENCY (default %(default)s)")
    p.add_argument("--repeat", type=int, default=1)
    args = p.parse_args()
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    results: dict[str, list[Result]] = {c: [] for c in classes}
    with server.server_url(own=False) as url:
        srv = db.Server(url)
        try:
            n = 0
            for _ in range(args.repeat):
                for worker_class in classes:
                    n += 1
                    results[worker_class].append(measure(srv, worker_class, args, n))
        finally:
            srv.close()
    print(f"{args.slow} slow clients for {args.hold:g} s; {args.clients} load clients, {args.seconds:g} s a phase;"
          f" {args.web_workers} web processes; medians of {args.repeat} run(s)")
    print(f"{'class':8} {'healthz ok':>11} {'p50 ms':>7} {'max ms':>7} {'cut':>4} | {'GET/s':>6} {'p50':>5}"
          f" {'p99':>6} {'cpu':>5} | {'POST/s':>6} {'p50':>5} {'p99':>6} {'cpu':>5} | errors")
    for worker_class, runs in results.items():
        def med(f: Callable[[Result], float]) -> float:
            return float(statistics.median([f(r) for r in runs]))
        ok = f"{sum(r.probes_ok for r in runs)}/{sum(r.probes for r in runs)}"
        print(f"{worker_class:8} {ok:>11} {med(lambda r: _pct(r.probe_ms, 0.5)):7.1f}"
              f" {med(lambda r: max(r.probe_ms, default=float('nan'))):7.1f} {med(lambda r: r.slow_cut):4.0f}"
              f" | {med(lambda r: r.get_rps):6.0f} {med(lambda r: _pct(r.get_ms, 0.5)):5.1f}"
              f" {med(lambda r: _pct(r.get_ms, 0.99)):6.1f} {med(lambda r: r.get_cpu_ms):5.2f}"
              f" | {med(lambda r: r.post_rps):6.0f} {med(lambda r: _pct(r.post_ms, 0.5)):5.1f}"
              f" {med(lambda r: _pct(r.post_ms, 0.99)):6.1f} {med(lambda r: r.post_cpu_ms):5.2f}"
              f" | {sum(r.errors for r in runs)}")


if __name__ == "__main__":
    main()
