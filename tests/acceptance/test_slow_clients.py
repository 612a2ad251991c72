"""Slow clients cannot starve the web tier: with the Procfile's gunicorn and
its default configuration (gunicorn.conf.py, 2 processes), /healthz and the
API answer while 10 clients each send a request one header line a second
(and reconnect at once when the server cuts them off)."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from typing import Callable

from tests.acceptance.loan_stack import Stack, loan_stack  # noqa: F401 - fixture

SLOW_CLIENTS = 10
HOLD_SECONDS = 12.0
PROBE_TIMEOUT_SECONDS = 5.0  # far longer than an answer takes; a starved server never answers


def slow_client(port: int, until: float, connected: threading.Event, lines: list[int]) -> None:
    """Keep a connection open sending a request a header line a second until
    ``until``, opening another whenever the server drops it."""
    while time.monotonic() < until:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: slow\r\n")
                connected.set()
                while time.monotonic() < until:
                    time.sleep(1.0)
                    s.sendall(f"X-Slow-{len(lines)}: 1\r\n".encode())
                    lines.append(1)
        except OSError:  # cut off: come back
            time.sleep(0.1)


def test_healthz_answers_while_ten_slow_clients_hold_connections(loan_stack: Callable[..., Stack]) -> None:
    stack = loan_stack()
    port = int(stack.base_url.rsplit(":", 1)[1])
    until = time.monotonic() + HOLD_SECONDS
    events = [threading.Event() for _ in range(SLOW_CLIENTS)]
    sent: list[int] = []
    clients = [threading.Thread(target=slow_client, args=(port, until, e, sent), daemon=True) for e in events]
    for c in clients:
        c.start()
    assert all(e.wait(10) for e in events)
    time.sleep(2.0)  # every slow client is mid-request, as a starving server would have them

    answered = 0
    while time.monotonic() < until - PROBE_TIMEOUT_SECONDS:
        with urllib.request.urlopen(stack.base_url + "/healthz", timeout=PROBE_TIMEOUT_SECONDS) as r:
            assert r.status == 200
        answered += 1
        time.sleep(0.5)
    code, body = stack.call("POST", "/api/loans", {"applicant_name": "Jane Smith", "amount": 5000, "purpose": "car"})
    assert code == 201, body
    assert answered >= 5
    assert all(c.is_alive() for c in clients)  # the slow clients were still holding on throughout
    for c in clients:
        c.join(HOLD_SECONDS + 10)
    assert len(sent) >= SLOW_CLIENTS * 5  # and kept sending their header lines
