"""Test databases: one server (embedded unless DATABASE_URL is set), one
template database per xdist worker built from migrations/, and a fresh copy
of it for every test."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from flows import Engine, Worker, embedded, migrate

ROOT = Path(__file__).resolve().parent.parent
ADMIN_URL_ENV = "FLOWS_TEST_ADMIN_URL"


RUN_ENV = "FLOWS_TEST_RUN"
_server_session = contextlib.ExitStack()


def pytest_configure(config: pytest.Config) -> None:
    # Start the server once, before xdist forks its workers (they inherit the
    # env); name this run's databases apart from any other run's on the server.
    # The embedded server is held as a session: stopped when the run ends if
    # the run started it and no other run or `./dev` command still uses it.
    if not os.environ.get(ADMIN_URL_ENV):
        url = os.environ.get("DATABASE_URL") or _server_session.enter_context(
            embedded.session(Path(os.environ.get(embedded.PGDATA_ENV) or ROOT / ".pgdata"))
        )
        os.environ[ADMIN_URL_ENV] = url
    os.environ.setdefault(RUN_ENV, f"{os.getpid():x}")


def pytest_unconfigure(config: pytest.Config) -> None:
    _server_session.close()


def _admin() -> psycopg.Connection[Any]:
    return psycopg.connect(os.environ[ADMIN_URL_ENV], autocommit=True)


def _url(dbname: str) -> str:
    return make_conninfo(os.environ[ADMIN_URL_ENV], dbname=dbname)


def _drop(conn: psycopg.Connection[Any], name: str) -> None:
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def template_db(worker_id: str) -> Iterator[str]:
    name = f"flows_tmpl_{os.environ[RUN_ENV]}_{worker_id}"
    with _admin() as conn:
        _drop(conn, name)
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    migrate.migrate(_url(name))
    yield name
    with _admin() as conn:
        _drop(conn, name)


_counter = itertools.count()


@pytest.fixture
def db_url(template_db: str, worker_id: str) -> Iterator[str]:
    """A fresh, migrated database for this test alone."""
    name = f"flows_{os.environ[RUN_ENV]}_{worker_id}_{next(_counter)}"
    with _admin() as conn:
        _drop(conn, name)
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template_db)))
    yield _url(name)
    with _admin() as conn:
        _drop(conn, name)


@pytest.fixture
def blank_url(worker_id: str) -> Iterator[str]:
    """An empty database (not migrated) for this test alone."""
    name = f"flows_blank_{os.environ[RUN_ENV]}_{worker_id}_{next(_counter)}"
    with _admin() as conn:
        _drop(conn, name)
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield _url(name)
    with _admin() as conn:
        _drop(conn, name)


@pytest.fixture
def private_server() -> Iterator[tuple[Path, str]]:
    """A migrated PostgreSQL server of this test's own, free to stop and
    restart. Its data folder is outside pytest's tmp_path, which another
    pytest run on the machine may prune while this one still uses it."""
    data = Path(tempfile.mkdtemp(prefix="flows-test-pg-")) / "pg"
    url = embedded.start(data)
    migrate.migrate(url)
    yield data, url
    embedded.stop(data)
    shutil.rmtree(data.parent, ignore_errors=True)


@pytest.fixture
def db(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the test's database, to check rows."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    with Engine(db_url, shards=3) as eng:
        yield eng


@pytest.fixture
def start_worker(engine: Engine) -> Iterator[Callable[..., Worker]]:
    """Run Workers in background threads; all are stopped after the test."""
    running: list[tuple[Worker, threading.Thread]] = []

    def start(*args: Any, **kwargs: Any) -> Worker:
        kwargs.setdefault("graceful_timeout", 5.0)
        worker = Worker(engine, *args, **kwargs)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        running.append((worker, thread))
        return worker

    yield start
    for worker, _ in running:
        worker.stop()
    for _, thread in running:
        thread.join(10)
