"""A connection string that cannot work, or a server that does not answer,
gives a flows.DatabaseError naming the host (never the password) and what to
check, wherever the connection is made: the Engine, migrate, the CLI and the
supervisor's start-up check."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from typing import Any, Callable
from uuid import UUID

import pytest
from psycopg.conninfo import make_conninfo

import flows
from flows import migrate, store
from tests import fleet_app
from tests.conftest import ROOT

PASSWORD = "s3cret-pw"
MALFORMED = "postgresql://..."  # a placeholder pasted as is
SOME_ID = UUID("01900000-0000-7000-8000-000000000000")
MALFORMED_MESSAGE = r"names an invalid host '\.\.\.'\. Check DATABASE_URL"

_ = fleet_app  # the app the supervisor and `flows worker` are given


@pytest.fixture
def refused() -> str:
    """A DSN with a password, to a local port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"postgresql://app:{PASSWORD}@127.0.0.1:{port}/orders"


def _refused_message(dsn: str) -> str:
    port = dsn.rsplit(":", 1)[1].split("/")[0]
    return rf"cannot connect to the database at host '127\.0\.0\.1' port {port} \(database 'orders', user 'app'\):" \
           r" .*Connection refused\. Check DATABASE_URL \(or the connection string given to flows\.Engine\), and" \
           r" that the server runs there"


def _cli(dsn: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": dsn}
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _supervisor(dsn: str, wait_seconds: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": dsn, "FLOWS_STARTUP_DB_WAIT_SECONDS": wait_seconds}
    return subprocess.run([sys.executable, "-m", "supervisor", "--app", "tests.fleet_app"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=30)


def test_a_malformed_dsn_fails_when_the_engine_is_made() -> None:
    with pytest.raises(flows.DatabaseError, match=MALFORMED_MESSAGE) as info:
        flows.Engine(MALFORMED)
    assert not isinstance(info.value, flows.DatabaseUnavailable)  # no retry will mend it


@pytest.mark.parametrize("connect", [migrate.migrate, lambda dsn: store.connect(dsn)], ids=["migrate", "store.connect"])
def test_a_malformed_dsn_fails_in_migrate_and_connect(connect: Callable[[str], Any]) -> None:
    with pytest.raises(flows.DatabaseError, match=MALFORMED_MESSAGE):
        connect(MALFORMED)


@pytest.mark.parametrize("dsn, problem", [
    ("not a dsn", r"cannot be parsed \(missing \"=\" after \"not\""),
    (f"host=db.example.com password=my {PASSWORD}", r"cannot be parsed\. Check"),  # a password with a space
    (f"postgresql://app:{PASSWORD}@db.example.com:99999/orders", "names an invalid port '99999'"),
    (f"host=db.example.com port=x password={PASSWORD}", "names an invalid port 'x'"),
])
def test_other_malformed_dsns_say_what_is_wrong_without_the_password(dsn: str, problem: str) -> None:
    with pytest.raises(flows.DatabaseError, match=problem) as info:
        flows.Engine(dsn)
    assert PASSWORD not in str(info.value)


@pytest.mark.parametrize("call", [
    lambda e: e.query("order", SOME_ID),
    lambda e: e.send_signal("order", SOME_ID, "approved"),
    lambda e: e.cancel("order", SOME_ID),
    lambda e: e.result("order", SOME_ID, timeout=1),
    lambda e: e.migrate(),
    lambda e: e.ping(),
], ids=["query", "send_signal", "cancel", "result", "migrate", "ping"])
def test_a_refused_connection_names_the_host_and_not_the_password(refused: str, call: Callable[[Any], Any]) -> None:
    with flows.Engine(refused) as engine:
        with pytest.raises(flows.DatabaseUnavailable, match=_refused_message(refused)) as info:
            call(engine)
    assert PASSWORD not in str(info.value)


def test_migrate_on_a_refused_connection(refused: str) -> None:
    with pytest.raises(flows.DatabaseUnavailable, match=_refused_message(refused)):
        migrate.migrate(refused)


def test_a_database_that_does_not_exist_says_so(db_url: str) -> None:
    with flows.Engine(make_conninfo(db_url, dbname="flows_no_such_database")) as engine:
        with pytest.raises(flows.DatabaseError, match=r"\(database 'flows_no_such_database', user 'postgres'\): .*"
                                                        r"database \"flows_no_such_database\" does not exist\. Check DATABASE_URL"):
            engine.ping()


@pytest.mark.parametrize("args", [["migrate"], ["status"], ["worker", "--app", "tests.fleet_app"]],
                         ids=["migrate", "status", "worker"])
def test_the_cli_prints_one_line_naming_the_problem(refused: str, args: list[str]) -> None:
    for dsn, message in ((MALFORMED, MALFORMED_MESSAGE), (refused, _refused_message(refused))):
        out = _cli(dsn, *args)
        assert out.returncode == 1, out.stderr
        assert "Traceback" not in out.stderr, out.stderr
        last = out.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and re.search(message, last), out.stderr
        assert PASSWORD not in out.stderr


def test_the_supervisor_refuses_a_malformed_dsn_at_once(refused: str) -> None:
    out = _supervisor(MALFORMED, wait_seconds="120")  # no waiting for a server that cannot exist
    assert out.returncode == 4, out.stderr
    assert "database-unreachable error=the database connection string names an invalid host '...'" in out.stderr


def test_the_supervisor_names_the_host_it_could_not_reach(refused: str) -> None:
    out = _supervisor(refused, wait_seconds="1")
    assert out.returncode == 4, out.stderr
    assert re.search("database-unreachable error=" + _refused_message(refused), out.stderr), out.stderr
    assert PASSWORD not in out.stderr
