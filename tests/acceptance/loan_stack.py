"""The loan app as it runs in production: the Procfile's ``web`` and
``worker`` commands as real subprocesses on the test's database.

Test modules import the ``loan_stack`` fixture from here."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.conftest import ROOT

BOOT_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 15.0


def procfile() -> dict[str, str]:
    """The Procfile's process types and their commands."""
    entries = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, command = line.partition(":")
            entries[name.strip()] = command.strip()
    return entries


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Stack:
    base_url: str
    logs: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
             data: bytes | None = None) -> tuple[int, Any]:
        """One HTTP request; returns (status, decoded JSON body)."""
        if body is not None:
            data = json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def output(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.read_text(errors='replace')[-4000:]}"
                         for p in sorted(self.logs.glob("*.log")))

    def stop(self) -> dict[str, int]:
        """SIGTERM each process group, as honcho does on Ctrl-C; return exit codes."""
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        codes = {}
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                codes[name] = proc.wait(5)
        return codes


def start_stack(db_url: str, logs: Path, **env: str) -> Stack:
    port = free_port()
    stack = Stack(f"http://127.0.0.1:{port}", logs)
    venv_bin = str(Path(sys.executable).parent)
    environment = {
        **os.environ, "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""), "DATABASE_URL": db_url,
        "PORT": str(port), "WEB_CONCURRENCY": "2", "FLOWS_COMPLIANCE_SLEEP": "0.2", "PYTHONUNBUFFERED": "1",
        **env,
    }
    if "FLOWS_API_KEYS" not in env:  # a developer's own setting must not leak in
        environment.pop("FLOWS_API_KEYS", None)
    logs.mkdir(parents=True, exist_ok=True)
    commands = procfile()
    for name in ("web", "worker"):
        with open(logs / f"{name}.log", "wb") as out:
            stack.procs[name] = subprocess.Popen(
                ["bash", "-c", "exec " + commands[name]], cwd=ROOT, env=environment, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
    deadline = time.monotonic() + BOOT_TIMEOUT_SECONDS
    while True:
        for name, proc in stack.procs.items():
            if proc.poll() is not None:
                stack.stop()
                pytest.fail(f"{name} exited with {proc.returncode} while booting\n{stack.output()}")
        try:
            if stack.call("GET", "/healthz")[0] == 200:
                return stack
        except (urllib.error.URLError, ConnectionError, json.JSONDecodeError):
            pass
        if time.monotonic() > deadline:
            stack.stop()
            pytest.fail(f"the web process did not become healthy\n{stack.output()}")
        time.sleep(0.1)


@pytest.fixture
def loan_stack(db_url: str, tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """``loan_stack(**env)`` starts web + worker; all are stopped after the test
    (their logs go to stderr, which pytest shows when the test failed)."""
    stacks: list[Stack] = []

    def start(**env: str) -> Stack:
        stack = start_stack(db_url, tmp_path / f"stack{len(stacks)}", **env)
        stacks.append(stack)
        return stack

    yield start
    for stack in stacks:
        stack.stop()
        sys.stderr.write(stack.output())
