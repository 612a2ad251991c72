"""The processes under test: the supervisor's worker fleet and gunicorn.

Each runs in a session (process group) of its own, so stopping it reaches
its children too and a Ctrl-C in the terminal reaches only the harness,
which then stops them in order: SIGTERM, a deadline, SIGKILL to the group.
Each is started through ``loadtest.orphan``, so it is told to stop even if
the harness is killed outright.
Their output goes to a log file next to the results, not to the terminal.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import psycopg

REPO_ROOT = Path(__file__).resolve().parent.parent
STOP_TIMEOUT_SECONDS = 15.0  # SIGTERM, then SIGKILL to the whole group
READY_POLL_SECONDS = 0.05
CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


class ProcessGroup:
    """A subprocess started in a new session, stopped with its children."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log: IO[bytes] = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "loadtest.orphan", *argv], cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise RuntimeError(f"{self.name} exited with code {self.proc.returncode}; see {self.log_path}")

    def children(self) -> list[int]:
        """The direct children's pids (the fleet's workers)."""
        return child_pids(self.pid)

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> int | None:
        """SIGTERM (graceful), then SIGKILL to the whole group after ``timeout``."""
        try:
            if self.alive():
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    pass
            try:
                os.killpg(self.pid, signal.SIGKILL)  # stragglers of the group, if any
            except ProcessLookupError:
                pass
            self.proc.wait(5.0)
        finally:
            self._log.close()
        return self.proc.returncode


def _cpu_ticks(pid: int, first: int) -> float:
    """Seconds in two adjacent CPU fields of /proc/PID/stat, counted from
    after the command name (0 once the process is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[first]) + int(fields[first + 1])) / CLOCK_TICKS_PER_SECOND


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (0 once it is gone)."""
    return _cpu_ticks(pid, 11)  # utime, stime (fields 14, 15)


def reaped_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of the children a process has reaped: a
    postmaster's ended backends."""
    return _cpu_ticks(pid, 13)  # cutime, cstime (fields 16, 17)


def rss_and_threads(pid: int) -> tuple[float, int] | None:
    """A process's resident memory in MiB and its thread count, from
    /proc/PID/status (None once it is gone)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    try:
        return int(fields["VmRSS"].split()[0]) / 1024.0, int(fields["Threads"])
    except (KeyError, ValueError, IndexError):  # a zombie has no VmRSS
        return None


def server_cpu_seconds(dsn: str) -> float:
    """CPU seconds of the server: its processes running now and those that
    have ended (backends of connections that came and went)."""
    pids = server_pids(dsn)
    return sum(cpu_seconds(p) for p in pids) + (reaped_cpu_seconds(pids[0]) if pids else 0.0)


def server_pids(dsn: str) -> list[int]:
    """The postmaster of the server and its children (the backends)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT current_setting('data_directory')").fetchone()
    assert row is not None
    try:
        postmaster = int(Path(row[0], "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return []
    return [postmaster, *child_pids(postmaster)]


def child_pids(pid: int) -> list[int]:
    """The pids of a process's direct children (none once it is gone)."""
    pids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            pids += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return pids


def base_env(dsn: str, shards: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"DATABASE_URL": dsn, "FLOWS_SHARDS": str(shards), "PYTHONUNBUFFERED": "1"})
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra or {})
    return env


def start_fleet(
    *, app: str, dsn: str, workers: int, shards: int, log_path: Path, env: dict[str, str] | None = None,
    concurrency: int | None = None,
) -> ProcessGroup:
    """``python -m supervisor --app APP --workers N --shards S``."""
    argv = [sys.executable, "-m", "supervisor", "--app", app, "--workers", str(workers), "--shards", str(shards)]
    if concurrency is not None:
        argv += ["--concurrency", str(concurrency)]
    return ProcessGroup("supervisor", argv, base_env(dsn, shards, env), log_path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_web(*, dsn: str, shards: int, port: int, log_path: Path, env: dict[str, str] | None = None) -> ProcessGroup:
    """``gunicorn -c gunicorn.conf.py webapp.wsgi:app`` on ``port``."""
    extra = {"PORT": str(port), "FLOWS_LOG_LEVEL": "warning", **(env or {})}
    argv = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "webapp.wsgi:app"]
    return ProcessGroup("gunicorn", argv, base_env(dsn, shards, extra), log_path)


def wait_http_ok(port: int, path: str, deadline: float, proc: ProcessGroup) -> None:
    """Wait until GET ``path`` answers 200 (or ``deadline``, a monotonic time)."""
    while True:
        proc.check_alive()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2.0)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            conn.close()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{proc.name} did not answer {path} on port {port}; see {proc.log_path}")
        time.sleep(READY_POLL_SECONDS)
