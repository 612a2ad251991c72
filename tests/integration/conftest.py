import os
import subprocess
import sys
from typing import Any, Callable, Iterator

import psycopg
import pytest

from flows import Worker, continuation
from tests import engine_app
from tests.conftest import ROOT


@pytest.fixture
def ledger(db: psycopg.Connection[Any], db_url: str, monkeypatch: pytest.MonkeyPatch) -> psycopg.Connection[Any]:
    db.execute(engine_app.LEDGER_SQL)
    monkeypatch.setattr(engine_app, "LEDGER_DSN", db_url)
    return db


@pytest.fixture(params=["replayed", "parked"])
def replay_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test twice: with workflows replayed from their history at each
    step, and with every workflow's code kept parked in memory between steps
    (flows.continuation), which must decide exactly the same."""
    if request.param == "parked":
        monkeypatch.setattr(continuation, "PARK_MIN_EVENTS", 0)
        monkeypatch.setenv("FLOWS_PARK_MIN_EVENTS", "0")  # worker subprocesses
    else:
        monkeypatch.setattr(continuation, "PARK_MIN_EVENTS", 1 << 30)
        monkeypatch.setenv("FLOWS_PARK_MIN_EVENTS", str(1 << 30))
    return str(request.param)


@pytest.fixture
def worker(start_worker: Callable[..., Worker], ledger: Any) -> Iterator[Worker]:
    yield start_worker(engine_app.ALL_WORKFLOWS, engine_app.ALL_ACTIVITIES)


Spawn = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def spawn_worker() -> Iterator[Spawn]:
    """Start ``flows worker --app tests.engine_app`` (or ``app``, with
    ``cli_args`` after it) processes; kill leftovers after the test."""
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(url: str, app: str = "tests.engine_app", cli_args: tuple[str, ...] = (),
              **env: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "worker", "--app", app, *cli_args],
            cwd=ROOT, env={**os.environ, "DATABASE_URL": url, "FLOWS_LOG_LEVEL": "WARNING", **env},
        )
        procs.append(proc)
        return proc

    yield spawn
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
