"""The embedded server's sessions: `./dev test`, `./dev run` and `./dev
python` start the server if need be, share it, and the last of them to end
stops it if one of them started it; a server started otherwise is left alone.
Each test has a data folder of its own (FLOWS_PGDATA), never the checkout's."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import psycopg
import pytest

from flows import embedded
from tests.acceptance.loan_stack import free_port
from tests.conftest import ROOT

pytestmark = pytest.mark.slow

HOLD = """
import sys
from contextlib import contextmanager
from pathlib import Path
from flows import embedded
with embedded.session(Path(sys.argv[1])) as url:
    print(url, flush=True)
    sys.stdin.read()  # until the test closes our stdin
"""


@pytest.fixture(scope="module")
def data_dir() -> Iterator[Path]:
    """One data folder for the module (initdb once); each test starts stopped."""
    data = Path(tempfile.mkdtemp(prefix="flows-test-sessions-")) / "pg"
    yield data
    embedded.stop(data)
    shutil.rmtree(data.parent, ignore_errors=True)


@pytest.fixture
def stopped(data_dir: Path) -> Path:
    embedded.stop(data_dir)
    assert not embedded.is_running(data_dir)
    return data_dir


def _answers(url: str) -> bool:
    with psycopg.connect(url, connect_timeout=5) as conn:
        return conn.execute("SELECT 1").fetchone() == (1,)


@contextmanager
def _holder(data: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Another process inside a session, until its stdin closes."""
    with subprocess.Popen([sys.executable, "-c", HOLD, str(data)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True) as proc:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url, "the holder did not start its session"
        try:
            yield proc, url
        finally:
            proc.kill()


def _clean_env(data: Path) -> dict[str, str]:
    """The environment of a user's shell: no test-run settings, no DATABASE_URL."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_", "FLOWS_TEST_")) and k not in ("DATABASE_URL", "VIRTUAL_ENV")}
    env["FLOWS_PGDATA"] = str(data)
    return env


def test_a_session_stops_the_server_it_started(stopped: Path) -> None:
    with embedded.session(stopped) as url:
        assert _answers(url)
    assert not embedded.is_running(stopped)


def test_a_server_started_outside_sessions_keeps_running(stopped: Path) -> None:
    url = embedded.start(stopped)  # as `flows devdb start` does
    with embedded.session(stopped) as inside:
        assert inside == url
    assert embedded.is_running(stopped) and _answers(url)


def test_the_last_of_overlapping_sessions_stops_the_server(stopped: Path) -> None:
    with _holder(stopped) as (first, url):  # starts the server
        with embedded.session(stopped) as inside:
            assert inside == url
        assert _answers(url), "a session stopped the server while another still used it"
        assert first.stdin is not None
        first.stdin.close()
        assert first.wait(30) == 0
    assert not embedded.is_running(stopped)


def test_a_killed_session_leaves_the_stop_to_the_next_one(stopped: Path) -> None:
    with _holder(stopped) as (killed, url):
        killed.kill()  # SIGKILL: no clean-up; the kernel drops its lock
        killed.wait()
    assert _answers(url)
    with embedded.session(stopped):
        pass
    assert not embedded.is_running(stopped)


def test_python_m_flows_embedded_runs_a_command_and_passes_sigterm_on(stopped: Path) -> None:
    script = "import os, signal, sys, time; print(os.environ['DATABASE_URL'], flush=True); time.sleep(60)"
    with subprocess.Popen([sys.executable, "-m", "flows.embedded", sys.executable, "-c", script],
                          env=_clean_env(stopped), stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert _answers(url)
        proc.send_signal(signal.SIGTERM)  # as a process manager stops it: the command gets it, then the server stops
        assert proc.wait(30) == 128 + signal.SIGTERM  # as a shell reports a command killed by it
    assert not embedded.is_running(stopped)


def test_dev_python_runs_the_quickstart_and_stops_the_server(stopped: Path) -> None:
    out = subprocess.run([str(ROOT / "dev"), "python", "examples/quickstart.py"], cwd=ROOT, env=_clean_env(stopped),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "'approved_by': 'alice'" in out.stdout
    assert (stopped / "PG_VERSION").exists(), "it did not use the embedded server of FLOWS_PGDATA"
    assert not embedded.is_running(stopped)


HOLD_PLUGIN = """
import os, time
from pathlib import Path

def pytest_sessionfinish(session):
    release, deadline = Path(os.environ["HOLD_UNTIL"]), time.monotonic() + 120
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
"""


@pytest.mark.timeout(300)
def test_two_dev_test_runs_at_once_share_the_server_and_stop_it(stopped: Path) -> None:
    """The longer run still has its server when the shorter one ends first.
    The longer run is held at its end (a plugin waits for a file) so the
    order does not depend on how busy the machine is."""
    (stopped.parent / "hold_plugin.py").write_text(HOLD_PLUGIN)
    release = stopped.parent / "release"
    env = {**_clean_env(stopped), "FLOWS_TEST_WORKERS": "1"}
    logs = [stopped.parent / "long.log", stopped.parent / "short.log"]
    with open(logs[0], "w") as out:
        long = subprocess.Popen([str(ROOT / "dev"), "test", "-q", "-p", "hold_plugin", "tests/unit/test_sharding.py"],
                                cwd=ROOT, env={**env, "PYTHONPATH": str(stopped.parent), "HOLD_UNTIL": str(release)},
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not embedded.is_running(stopped):
            assert long.poll() is None and time.monotonic() < deadline, logs[0].read_text()
            time.sleep(0.1)
        with open(logs[1], "w") as out:
            short = subprocess.run([str(ROOT / "dev"), "test", "-q", "tests/unit/test_sharding.py"], cwd=ROOT,
                                   env=env, stdout=out, stderr=subprocess.STDOUT, timeout=120)
        assert short.returncode == 0, logs[1].read_text()
        assert long.poll() is None, f"the longer run ended before it was released:\n{logs[0].read_text()}"
        assert embedded.is_running(stopped), "the shorter run stopped the server under the longer one"
    finally:
        release.touch()
    assert long.wait(180) == 0, logs[0].read_text()
    assert not embedded.is_running(stopped)


def test_dev_run_on_the_embedded_server_stops_it_on_ctrl_c(stopped: Path) -> None:
    port = free_port()
    env = {**_clean_env(stopped), "PORT": str(port), "WEB_CONCURRENCY": "1", "FLOWS_WORKERS": "1"}
    log = stopped.parent / "dev-run.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(ROOT / "dev"), "run"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"./dev run exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"not healthy:\n{log.read_text()[-3000:]}"
            time.sleep(0.2)
        assert embedded.is_running(stopped)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C, to the whole process group as a terminal sends it
        try:
            proc.wait(40)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
            pytest.fail(f"./dev run did not stop on Ctrl-C:\n{log.read_text()[-3000:]}")
    assert not embedded.is_running(stopped), log.read_text()[-3000:]
