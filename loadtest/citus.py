"""A local Citus cluster for tests and load tests: a coordinator and two
worker nodes on loopback, each a PostgreSQL server with its own data folder
and port, started from an installed Citus (docs/citus.md says how to build it).

    python -m loadtest.citus start    # start (or find running); print the URLs
    python -m loadtest.citus status   # print the URLs; exit 3 unless all nodes run
    python -m loadtest.citus stop

``start`` also prepares a database (``flows`` by default) on every node with
the ``citus`` extension and the workers registered with the coordinator, so
``DATABASE_URL`` (or ``FLOWS_TEST_CITUS``) can name the coordinator's URL
as printed. PostgreSQL refuses to run as root: run as root, the servers run
as ``--user`` (default ``postgres``, the user Debian's packages create).
The nodes trust every loopback connection: a development cluster only.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

DEFAULT_DATA_DIR = Path(__file__).resolve().parent / "results" / "citus"
DEFAULT_PORT = 9700  # coordinator; the workers take the next ports
DEFAULT_DATABASE = "flows"
DEFAULT_USER = "postgres"
PG_BIN_ENV = "FLOWS_CITUS_PG_BIN"
HOST = "127.0.0.1"
SETTINGS_FILE = "loadtest_citus.conf"  # included by each node's postgresql.conf; rewritten by start
WORKERS = 2
EXIT_NOT_RUNNING = 3
START_TIMEOUT_SECONDS = 60
CLOSE_TIMEOUT_SECONDS = 30
CLOSE_POLL_SECONDS = 0.05
# citus first (it must be); pg_stat_statements for counting statements and
# PREPARE TRANSACTIONs; logical WAL for shard moves (rebalancing);
# max_prepared_transactions > 0 for Citus' two-phase commits; workers for
# the maintenance daemon Citus runs in each database (tests make many).
SETTINGS = {
    "listen_addresses": f"'{HOST}'",
    "unix_socket_directories": "''",
    "shared_preload_libraries": "'citus,pg_stat_statements'",
    "max_connections": "300",
    "max_prepared_transactions": "200",
    "max_worker_processes": "64",  # Citus runs a maintenance worker per database that has it
    "wal_level": "logical",
    "fsync": "off",  # a throw-away cluster; loadtest figures note it
}


@dataclass(frozen=True)
class Node:
    role: str  # "coordinator" or "worker"
    name: str  # the data folder's name
    port: int
    folder: Path

    def url(self, database: str, user: str) -> str:
        return f"postgresql://{user}@{HOST}:{self.port}/{database}"


def nodes(data_dir: Path, port: int) -> list[Node]:
    coordinator = Node("coordinator", "coordinator", port, data_dir / "coordinator")
    workers = [Node("worker", f"worker{i}", port + i, data_dir / f"worker{i}") for i in range(1, WORKERS + 1)]
    return [coordinator, *workers]


def find_pg_bin() -> Path:
    """The bin folder of a PostgreSQL whose library folder holds citus.so:
    $FLOWS_CITUS_PG_BIN, else the newest of Debian's /usr/lib/postgresql/*."""
    if os.environ.get(PG_BIN_ENV):
        return Path(os.environ[PG_BIN_ENV])
    found = []
    for pg_config in Path("/usr/lib/postgresql").glob("*/bin/pg_config"):
        libdir = subprocess.run([str(pg_config), "--pkglibdir"], capture_output=True, text=True).stdout.strip()
        if (Path(libdir) / "citus.so").exists():
            found.append(pg_config.parent)
    if not found:
        raise SystemExit(f"no PostgreSQL with Citus installed (set {PG_BIN_ENV}); see docs/citus.md to build it")
    return max(found, key=lambda p: int(p.parent.name))


class Runner:
    """Runs the PostgreSQL programs as the server's user (not root)."""

    def __init__(self, pg_bin: Path, user: str) -> None:
        self.pg_bin = pg_bin
        self.as_root = os.geteuid() == 0
        self.user = user if self.as_root else pwd.getpwuid(os.geteuid()).pw_name

    def run(self, program: str, *args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        extra: dict[str, Any] = {}
        if self.as_root:
            entry = pwd.getpwnam(self.user)
            # HOME too: the servers' libpq (Citus' connections between nodes)
            # reads ~/.postgresql, which must not be root's.
            extra = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": [],
                     "env": {**os.environ, "HOME": entry.pw_dir, "USER": self.user, "LOGNAME": self.user}}
        return subprocess.run([str(self.pg_bin / program), *args], cwd=cwd, capture_output=True, text=True,
                              check=check, **extra)

    def own(self, path: Path) -> None:
        if self.as_root:
            shutil.chown(path, self.user, pwd.getpwnam(self.user).pw_gid)


def is_running(runner: Runner, node: Node) -> bool:
    if not (node.folder / "PG_VERSION").exists():
        return False
    return runner.run("pg_ctl", "status", "-D", str(node.folder), cwd=node.folder, check=False).returncode == 0


def _init(runner: Runner, node: Node) -> None:
    node.folder.mkdir(parents=True, exist_ok=True)
    runner.own(node.folder)
    node.folder.chmod(0o700)
    runner.run("initdb", "-D", str(node.folder), "-U", runner.user, "--auth=trust", "--encoding=UTF8",
               "--locale=C.UTF-8", cwd=node.folder)
    with open(node.folder / "postgresql.conf", "a") as conf:
        conf.write(f"\ninclude_if_exists = '{SETTINGS_FILE}'\n")


def _write_settings(runner: Runner, node: Node) -> bool:
    """Write this script's settings for the node; True if they changed."""
    path = node.folder / SETTINGS_FILE
    text = "".join(f"{name} = {value}\n" for name, value in {**SETTINGS, "port": str(node.port)}.items())
    if path.exists() and path.read_text() == text:
        return False
    path.write_text(text)
    runner.own(path)
    return True


def _start_node(runner: Runner, node: Node) -> None:
    if not (node.folder / "PG_VERSION").exists():
        _init(runner, node)
    changed = _write_settings(runner, node)
    if is_running(runner, node):
        if not changed:
            return
        runner.run("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(node.folder), cwd=node.folder)
    out = runner.run("pg_ctl", "start", "-w", "-t", str(START_TIMEOUT_SECONDS), "-D", str(node.folder),
                     "-l", str(node.folder / "server.log"), cwd=node.folder, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{node.name} did not start ({out.returncode}): {out.stderr.strip() or out.stdout.strip()};"
                         f" see {node.folder / 'server.log'}")


def _connect(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True)


def _host_port(url: str) -> tuple[str, int]:
    info = conninfo_to_dict(url)
    return str(info.get("host") or HOST), int(str(info.get("port") or 5432))


NODE_REGISTRATION_LOCK = 0x666C6F77  # "flow": pg_advisory_lock key of node registrations


def create_database(coordinator: str, workers: Sequence[str], name: str) -> str:
    """Create database ``name`` on the coordinator and on every worker node
    (given by any URL of theirs), with the ``citus`` extension in each and the
    workers registered with the coordinator's; return its coordinator URL.
    Citus 12.1 propagates neither CREATE DATABASE nor node registration:
    each database is a cluster of its own."""
    for url in (coordinator, *workers):
        with _connect(url) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        with _connect(make_conninfo(url, dbname=name)) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS citus")
    url = make_conninfo(coordinator, dbname=name)
    # Adding a node copies the roles to it (ALTER ROLE on the node's shared
    # catalog): two databases registering the same node at once fail with
    # "tuple concurrently updated" there. One registration at a time,
    # under an advisory lock of the coordinator's own database.
    with _connect(coordinator) as guard, _connect(url) as conn:
        guard.execute("SELECT pg_advisory_lock(%s)", (NODE_REGISTRATION_LOCK,))
        conn.execute("SELECT citus_set_coordinator_host(%s, %s)", _host_port(coordinator))
        known = set(conn.execute("SELECT nodename, nodeport FROM pg_dist_node").fetchall())
        for worker in workers:
            if _host_port(worker) not in known:
                conn.execute("SELECT citus_add_node(%s, %s)", _host_port(worker))
    return url


def _each(urls: Sequence[str], action: Callable[[str], None]) -> None:
    """Run ``action`` on each node at once (creating a database from a
    template takes about as long on each)."""
    with ThreadPoolExecutor(len(urls)) as pool:
        list(pool.map(action, urls))


def seal_template(coordinator: str, workers: Sequence[str], name: str) -> None:
    """Make database ``name`` a template on every node: refuse connections
    and end the sessions in it, which CREATE DATABASE ... TEMPLATE needs."""
    _each([coordinator, *workers], lambda url: _close(url, name))


def _close(url: str, name: str) -> None:
    """Refuse connections to database ``name`` on this node and end the
    sessions in it, Citus' maintenance daemon included: the nodes' daemons
    connect to each other's database, and a connection arriving at a node
    restarts its daemon, a background worker that neither CREATE DATABASE
    ... TEMPLATE nor DROP DATABASE ... WITH (FORCE) waits for or ends."""
    with _connect(url) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            return
        conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(sql.Identifier(name)))
        # A daemon being started as connections were refused can still come
        # up: end sessions until none is left.
        deadline = time.monotonic() + CLOSE_TIMEOUT_SECONDS
        while conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s",
                           (name,)).fetchone() != (0,):
            if time.monotonic() > deadline:
                raise RuntimeError(f"sessions in database {name} at {url} do not end")
            time.sleep(CLOSE_POLL_SECONDS)


def clone_database(coordinator: str, workers: Sequence[str], template: str, name: str) -> str:
    """Create database ``name`` from the sealed ``template`` on every node;
    return its coordinator URL. The copies stay one cluster: Citus' metadata
    names nodes by host and port, and a node reaches the others' database
    of its own name."""
    def clone(url: str) -> None:
        with _connect(url) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
                sql.Identifier(name), sql.Identifier(template)))
    _each([coordinator, *workers], clone)
    return make_conninfo(coordinator, dbname=name)


def drop_database(coordinator: str, workers: Sequence[str], name: str) -> None:
    """Drop database ``name`` on every node (connections refused and ended
    on all of them first)."""
    def drop(url: str) -> None:
        with _connect(url) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    _each([coordinator, *workers], lambda url: _close(url, name))
    _each([coordinator, *workers], drop)


def worker_urls(coordinator: str) -> list[str]:
    """The worker nodes registered in the coordinator database of
    ``coordinator``, as URLs of the same database and user."""
    with _connect(coordinator) as conn:
        rows = conn.execute(
            "SELECT nodename, nodeport FROM pg_dist_node WHERE noderole = 'primary' AND groupid <> 0"
            " ORDER BY nodeid").fetchall()
    return [make_conninfo(coordinator, host=host, port=port) for host, port in rows]


def start(data_dir: Path, port: int, runner: Runner, database: str) -> list[str]:
    data_dir.mkdir(parents=True, exist_ok=True)
    cluster = nodes(data_dir, port)
    for node in cluster:
        _start_node(runner, node)
    admin = [node.url("postgres", runner.user) for node in cluster]
    create_database(admin[0], admin[1:], database)
    return [node.url(database, runner.user) for node in cluster]


def stop(data_dir: Path, port: int, runner: Runner) -> None:
    # Workers first: a coordinator stopping first would only log lost connections.
    for node in reversed(nodes(data_dir, port)):
        if is_running(runner, node):
            runner.run("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(node.folder), cwd=node.folder)


def print_urls(cluster: list[Node], urls: list[str]) -> None:
    for node, url in zip(cluster, urls):
        print(f"{node.role} {url}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.citus", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["start", "stop", "status"])
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                   help="the nodes' data folders go under it (default %(default)s)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"the coordinator's port; the workers take the next {WORKERS} (default %(default)s)")
    p.add_argument("--database", default=DEFAULT_DATABASE, help="the database start prepares (default %(default)s)")
    p.add_argument("--user", default=DEFAULT_USER, help="the servers' user when run as root (default %(default)s)")
    args = p.parse_args(argv)
    data_dir = args.data_dir.resolve()
    runner = Runner(find_pg_bin(), args.user)
    cluster = nodes(data_dir, args.port)
    if args.command == "start":
        print_urls(cluster, start(data_dir, args.port, runner, args.database))
        return 0
    if args.command == "stop":
        stop(data_dir, args.port, runner)
        return 0
    running = [is_running(runner, node) for node in cluster]
    for node, up in zip(cluster, running):
        print(f"{node.role} {node.url(args.database, runner.user)} {'running' if up else 'stopped'}")
    return 0 if all(running) else EXIT_NOT_RUNNING


if __name__ == "__main__":
    sys.exit(main())
