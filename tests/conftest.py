"""Test databases: one server (embedded unless DATABASE_URL is set), one
template database per xdist worker built from migrations/, and a fresh copy
of it for every test.

With FLOWS_TEST_CITUS set to a Citus coordinator's URL, the server is that
cluster: each template and test database is made on the coordinator and on
every worker node (FLOWS_TEST_CITUS_WORKERS, comma-separated URLs, else the
nodes registered in the coordinator URL's database), with the extension and
the nodes registered, so migrations distribute the tables (docs/citus.md)."""

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
from loadtest import citus

ROOT = Path(__file__).resolve().parent.parent
ADMIN_URL_ENV = "FLOWS_TEST_ADMIN_URL"
CITUS_ENV = "FLOWS_TEST_CITUS"
CITUS_WORKERS_ENV = "FLOWS_TEST_CITUS_WORKERS"
CITUS_HOWTO = f"set {CITUS_ENV}=<coordinator URL> to run on a Citus cluster: see docs/citus.md"


RUN_ENV = "FLOWS_TEST_RUN"
_server_session = contextlib.ExitStack()


def pytest_configure(config: pytest.Config) -> None:
    # Start the server once, before xdist forks its workers (they inherit the
    # env); name this run's databases apart from any other run's on the server.
    # The embedded server is held as a session: stopped when the run ends if
    # the run started it and no other run or `./dev` command still uses it.
    if os.environ.get(CITUS_ENV) and not os.environ.get(CITUS_WORKERS_ENV):
        os.environ[CITUS_WORKERS_ENV] = ",".join(citus.worker_urls(os.environ[CITUS_ENV]))
    if not os.environ.get(ADMIN_URL_ENV):
        url = os.environ.get(CITUS_ENV) or os.environ.get("DATABASE_URL") or _server_session.enter_context(
            embedded.session(Path(os.environ.get(embedded.PGDATA_ENV) or ROOT / ".pgdata"))
        )
        os.environ[ADMIN_URL_ENV] = url
    os.environ.setdefault(RUN_ENV, f"{os.getpid():x}")


def pytest_unconfigure(config: pytest.Config) -> None:
    _server_session.close()


def on_citus() -> bool:
    return bool(os.environ.get(CITUS_ENV))


def _citus_workers() -> list[str]:
    return [url for url in os.environ.get(CITUS_WORKERS_ENV, "").split(",") if url]


def _admin() -> psycopg.Connection[Any]:
    return psycopg.connect(os.environ[ADMIN_URL_ENV], autocommit=True)


def _url(dbname: str) -> str:
    return make_conninfo(os.environ[ADMIN_URL_ENV], dbname=dbname)


def _drop(conn: psycopg.Connection[Any], name: str) -> None:
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def create_database(name: str) -> str:
    """Create an empty database ``name`` (afresh), on every node under Citus
    (with the extension and the nodes registered); return its URL."""
    drop_database(name)
    if on_citus():
        return citus.create_database(os.environ[ADMIN_URL_ENV], _citus_workers(), name)
    with _admin() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return _url(name)


def drop_database(name: str) -> None:
    if on_citus():
        citus.drop_database(os.environ[ADMIN_URL_ENV], _citus_workers(), name)
        return
    with _admin() as conn:
        _drop(conn, name)


@pytest.fixture(scope="session")
def template_db(worker_id: str) -> Iterator[str]:
    name = f"flows_tmpl_{os.environ[RUN_ENV]}_{worker_id}"
    migrate.migrate(create_database(name))
    if on_citus():
        citus.seal_template(os.environ[ADMIN_URL_ENV], _citus_workers(), name)
    yield name
    drop_database(name)


_counter = itertools.count()


@pytest.fixture
def db_url(template_db: str, worker_id: str) -> Iterator[str]:
    """A fresh, migrated database for this test alone."""
    name = f"flows_{os.environ[RUN_ENV]}_{worker_id}_{next(_counter)}"
    if on_citus():
        # A copy of the template on every node (the same shards on the same
        # nodes): as fast as TRUNCATE of the seven tables between tests, and
        # each test still starts from a database of its own.
        citus.clone_database(os.environ[ADMIN_URL_ENV], _citus_workers(), template_db, name)
    else:
        with _admin() as conn:
            _drop(conn, name)
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template_db)))
    yield _url(name)
    drop_database(name)


@pytest.fixture
def blank_url(worker_id: str) -> Iterator[str]:
    """An empty database (not migrated) for this test alone (on every node,
    with the extension, under Citus)."""
    name = f"flows_blank_{os.environ[RUN_ENV]}_{worker_id}_{next(_counter)}"
    yield create_database(name)
    drop_database(name)


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
