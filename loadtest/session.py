"""One run of the harness: its deadline, its databases and its processes.

Everything a run creates is a context manager, so it is cleaned up in
reverse order however the run ends (success, failure, the deadline, Ctrl-C
or SIGTERM): the processes stop before their database is dropped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Iterator

from loadtest import db, fleet
from loadtest.fleet import ProcessGroup
from loadtest.progress import Progress

RESULTS_DIR = Path(__file__).resolve().parent / "results"
FLEET_READY_TIMEOUT_SECONDS = 30.0
WAIT_POLL_SECONDS = 0.5  # progress polls: one query each, counted and left out of the deltas
READY_POLL_SECONDS = 0.05
TOP_STATEMENTS = 40
DATABASE_PREFIX = "lt_"  # lt_<scenario>_<pid>_<n>


class RunTimeout(Exception):
    """The run's --timeout ran out."""


class Run:
    """Deadline, resources and naming of one ``python -m loadtest`` run."""

    def __init__(
        self, scenario: str, server_url: str, timeout_seconds: float, shards: int, fleet_app: str | None = None,
        *, own_server: bool = False,
    ) -> None:
        self.scenario = scenario
        self.own_server = own_server  # nothing else writes there: server-wide counters are ours
        self.fleet_app = fleet_app  # replaces each scenario's app module (experiments)
        self.server_url = server_url
        self.shards = shards
        self.started = time.time()
        self.timeout_seconds = timeout_seconds
        self.deadline = time.monotonic() + timeout_seconds
        self.tag = f"{scenario}_{os.getpid()}"
        self.stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(self.started))
        self.server = db.Server(server_url)
        self.notes: list[str] = []  # what the report should say about how it measured
        self._databases = 0

    # -- lifetime -------------------------------------------------------------

    def __enter__(self) -> Run:
        self._old_term = signal.signal(signal.SIGTERM, _interrupt)
        self._drop_leftovers()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.close()
        signal.signal(signal.SIGTERM, self._old_term)

    def _drop_leftovers(self) -> None:
        """Drop the databases of runs that were killed outright (SIGKILL):
        named for a pid that no longer runs here, and with nobody connected."""
        for name in self.server.idle_databases(DATABASE_PREFIX):
            parts = name.split("_")
            pid = int(parts[-2]) if len(parts) >= 4 and parts[-2].isdigit() else None
            if pid is not None and not _alive(pid):
                self.server.drop_database(name)

    def restart_clock(self) -> None:
        """Each repeat gets the whole --timeout."""
        self.deadline = time.monotonic() + self.timeout_seconds

    def extend_deadline(self, seconds: float) -> None:
        """Push the deadline ``seconds`` further: a scenario whose length is
        asked for (soak's --minutes) adds it, so --timeout bounds the rest."""
        self.deadline += seconds

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def check_deadline(self) -> None:
        if time.monotonic() > self.deadline:
            raise RunTimeout(f"{self.scenario}: the run's --timeout ran out")

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def log_path(self, name: str) -> Path:
        return RESULTS_DIR / "logs" / f"{self.scenario}-{self.stamp}-{name}.log"

    # -- resources (context managers: they clean up however the block ends) ---

    @contextlib.contextmanager
    def database(self, *, migrated: bool = True) -> Iterator[str]:
        """A fresh database ``lt_<scenario>_<pid>_<n>`` (migrated unless told
        otherwise), dropped when the block ends; yields its DSN."""
        self._databases += 1
        name = f"{DATABASE_PREFIX}{self.tag}_{self._databases}"
        try:
            yield self.server.create_database(name, migrated=migrated)
        finally:
            self.server.drop_database(name)

    @contextlib.contextmanager
    def fleet(
        self, app: str, dsn: str, workers: int, env: dict[str, str] | None = None
    ) -> Iterator[ProcessGroup]:
        """The supervisor with ``workers`` worker processes, yielded once each
        worker listens (it then claims); stopped when the block ends."""
        proc = fleet.start_fleet(
            app=self.fleet_app or app, dsn=dsn, workers=workers, shards=self.shards,
            log_path=self.log_path(f"fleet-w{workers}"), env=env,
        )
        try:
            deadline = min(self.deadline, time.monotonic() + FLEET_READY_TIMEOUT_SECONDS)
            dbname = db.dbname_of(dsn)
            while self.server.listening_backends(dbname) < workers:
                proc.check_alive()
                if time.monotonic() > deadline:
                    raise RunTimeout(f"the fleet did not come up; see {proc.log_path}")
                time.sleep(READY_POLL_SECONDS)
            yield proc
        finally:
            proc.stop()

    @contextlib.contextmanager
    def web(self, dsn: str, env: dict[str, str] | None = None) -> Iterator[int]:
        """gunicorn serving the loan API on a free port, yielded once /healthz
        answers; stopped when the block ends."""
        port = fleet.free_port()
        proc = fleet.start_web(dsn=dsn, shards=self.shards, port=port, log_path=self.log_path("gunicorn"), env=env)
        try:
            ready_by = min(self.deadline, time.monotonic() + FLEET_READY_TIMEOUT_SECONDS)
            fleet.wait_http_ok(port, "/healthz", ready_by, proc)
            yield port
        finally:
            proc.stop()

    # -- pg_stat_statements, where the server preloads it (--own-server) -------

    def reset_statements(self, dsn: str) -> bool:
        """Start counting the statements of ``dsn``'s database afresh; False
        when the server cannot count them."""
        if not self.server.enable_statements():
            return False
        self.server.reset_statements(db.dbname_of(dsn))
        return True

    def statements(self, dsn: str, units: int, unit: str) -> list[dict[str, Any]]:
        """The statements counted since ``reset_statements``, most frequent
        first, each with ``per``: its calls per ``unit`` (``units`` of them)."""
        if not self.server.enable_statements():
            return []
        rows = self.server.top_statements(db.dbname_of(dsn), TOP_STATEMENTS)
        return [{**r, "per": r["calls"] / max(1, units), "per_unit": unit} for r in rows]

    # -- waiting ----------------------------------------------------------------

    def wait_for(
        self, what: str, total: int, count: Callable[[], int], *, procs: tuple[ProcessGroup, ...] = ()
    ) -> int:
        """Poll ``count()`` with a progress line until it reaches ``total``;
        fail on the deadline or if a process under test died."""
        progress = Progress(what, total)
        try:
            while True:
                done = count()
                progress.update(done)
                if done >= total:
                    return done
                for p in procs:
                    p.check_alive()
                self.check_deadline()
                time.sleep(WAIT_POLL_SECONDS)
        finally:
            progress.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # SIGTERM stops the harness the way Ctrl-C does: the exception unwinds
    # through every clean-up registered so far (the harness is no daemon:
    # there is no loop to hand the signal to).
    raise KeyboardInterrupt(f"signal {signum}")
