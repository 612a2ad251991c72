"""Running a real supervisor (``python -m supervisor --app tests.fleet_app``)
in a subprocess: its log, its workers, and signals to both."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import psycopg
import pytest

from flows import Engine
from tests import fleet_app
from tests.conftest import ROOT

SPAWN = re.compile(r"worker-spawn pid=(\d+) group=(\S+) generation=(\d+)")
READY = re.compile(r"worker-ready pid=(\d+) group=(\S+) generation=(\d+) owner=(\S+)")
EXIT = re.compile(r"worker-exit pid=(\d+) group=(\S+) generation=(\d+) (.*) uptime=")


def wait_until(check: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.05)
    return value


def children_of(pid: int) -> set[int]:
    try:
        return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except (FileNotFoundError, ProcessLookupError):  # gone before the open, or between open and read
        return set()


def alive(pid: int) -> bool:
    """Running and not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):  # a process exiting as we read: ESRCH
        return False


class Fleet:
    """One supervisor process, with its stderr collected line by line."""

    def __init__(self, db_url: str, *args: str, **env: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor", "--app", "tests.fleet_app", *args],
            cwd=ROOT, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "DATABASE_URL": db_url, "FLOWS_LOG_LEVEL": "INFO", "FLOWS_GRACEFUL_TIMEOUT": "10",
                 **env},
        )
        self.pid = self.proc.pid
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    def log(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def matches(self, pattern: re.Pattern[str]) -> list[re.Match[str]]:
        with self._lock:
            return [m for line in self.lines if (m := pattern.search(line))]

    def wait_log(self, pattern: re.Pattern[str] | str, count: int = 1, timeout: float = 20.0) -> list[re.Match[str]]:
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        try:
            return wait_until(lambda: len(found := self.matches(rx)) >= count and found, timeout, rx.pattern)
        except AssertionError:
            raise AssertionError(f"{rx.pattern!r} x{count} not logged; log:\n{self.log()}") from None

    def ready_workers(self) -> dict[int, str]:
        """Live workers that announced themselves: pid -> shard group."""
        exited = {int(m[1]) for m in self.matches(EXIT)}
        live = children_of(self.pid)
        return {int(m[1]): m[2] for m in self.matches(READY)
                if int(m[1]) not in exited and int(m[1]) in live and alive(int(m[1]))}

    def wait_ready(self, count: int, timeout: float = 20.0) -> dict[int, str]:
        try:
            return wait_until(lambda: len(w := self.ready_workers()) == count and w, timeout, f"{count} workers")
        except AssertionError:
            raise AssertionError(f"not {count} ready workers; log:\n{self.log()}") from None

    def wait_groups(self, groups: list[str], timeout: float = 20.0) -> dict[int, str]:
        """Wait until the live, booted workers serve exactly these shard groups."""
        try:
            return wait_until(lambda: sorted((w := self.ready_workers()).values()) == sorted(groups) and w,
                              timeout, f"workers for {groups}")
        except AssertionError:
            raise AssertionError(f"workers not {groups}; log:\n{self.log()}") from None

    def send(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def close(self) -> None:
        """Kill the supervisor and every worker it left (a failed test must not leak processes)."""
        workers = children_of(self.pid)
        if self.proc.poll() is None:
            self.proc.kill()
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(10)
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        print(f"--- supervisor {self.pid} log ---\n{self.log()}")  # shown for failed tests (or with -rP)


@pytest.fixture
def fleets() -> Iterator[Callable[..., Fleet]]:
    """Start supervisors; whatever is left running is killed after the test."""
    started: list[Fleet] = []

    def start(db_url: str, *args: str, **env: str) -> Fleet:
        fleet = Fleet(db_url, *args, **env)
        started.append(fleet)
        return fleet

    yield start
    for fleet in started:
        fleet.close()


@pytest.fixture
def ledger(db: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    db.execute(fleet_app.LEDGER_SQL)
    return db


def kill_random_worker(fleet: Fleet, rng: random.Random) -> int | None:
    """SIGKILL one of the supervisor's booted workers; return its pid."""
    workers = fleet.ready_workers()
    if not workers:
        return None
    pid = rng.choice(sorted(workers))
    if pid not in children_of(fleet.pid):  # it died meanwhile: never kill a recycled pid
        return None
    os.kill(pid, signal.SIGKILL)
    return pid


def start_orders(engine: Engine, count: int, **kwargs: Any) -> list[tuple[Any, fleet_app.Order]]:
    runs = []
    for n in range(count):
        o = fleet_app.Order(n, **kwargs)
        runs.append((engine.start(fleet_app.order, o), o))
    return runs


def signal_all(engine: Engine, runs: list[tuple[Any, fleet_app.Order]]) -> None:
    """Send "go" to every order (kept until the workflow waits for it)."""
    for run, o in runs:
        if o.signal:
            engine.send_signal(run.workflow_name, run.workflow_id, "go", {"n": o.n})


def assert_all_completed(engine: Engine, db: psycopg.Connection[Any], runs: list[tuple[Any, fleet_app.Order]],
                         timeout: float = 60.0) -> None:
    """Every order completed with its expected output, each activity step
    completed once, and the ledger shows exactly one effect per step."""
    for run, o in runs:
        out = engine.result(run.workflow_name, run.workflow_id, timeout=timeout)
        assert out == fleet_app.expected_output(o, {"n": o.n} if o.signal else None)
    ids = [run.workflow_id for run, _ in runs]
    twice = db.execute(
        "SELECT workflow_id, step, count(*) FROM history_events"
        " WHERE workflow_id = ANY(%s) AND event_type = 'activity_completed'"
        " GROUP BY 1, 2 HAVING count(*) > 1", (ids,)).fetchall()
    assert twice == []
    completed = db.execute(
        "SELECT count(*) FROM activities WHERE workflow_id = ANY(%s) AND status = 'completed'", (ids,)).fetchone()
    assert completed == (3 * len(runs),)
    effects = db.execute("SELECT n, step FROM fleet_ledger ORDER BY n, step").fetchall()
    assert effects == sorted((o.n, step) for _, o in runs for step in ("charge", "reserve", "ship"))
    assert db.execute("SELECT count(*) FROM task_queue").fetchone() == (0,)
