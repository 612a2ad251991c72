"""`flows worker` and the supervisor log in a readable default format (time,
pid, level, logger, message) unless the app module configured logging."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \[\d+\]"
DEFAULT_WORKER_START = re.compile(rf"^{STAMP} INFO flows\.worker: worker-start owner=\S+ shards=", re.MULTILINE)
APP_WORKER_START = re.compile(r"^APP INFO flows\.worker \| worker-start owner=", re.MULTILINE)


def _run_until(args: list[str], db_url: str, log: Path, pattern: re.Pattern[str]) -> str:
    """Run a command until its stderr matches ``pattern``, then SIGTERM it; its stderr."""
    env = {**os.environ, "DATABASE_URL": db_url, "FLOWS_WORKERS": "1"}
    with open(log, "w") as err:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 60
        while not pattern.search(log.read_text()):
            assert proc.poll() is None, f"exited with {proc.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return log.read_text()


def test_flows_worker_logs_time_level_logger_and_message(db_url: str, tmp_path: Path) -> None:
    out = _run_until([sys.executable, "-m", "flows.cli", "worker", "--app", "tests.fleet_app"], db_url,
                     tmp_path / "worker.log", DEFAULT_WORKER_START)
    assert re.search(rf"^{STAMP} INFO flows\.worker: worker-stop owner=", out, re.MULTILINE), out


def test_flows_worker_keeps_the_logging_the_app_set_up(db_url: str, tmp_path: Path) -> None:
    out = _run_until([sys.executable, "-m", "flows.cli", "worker", "--app", "tests.logging_app"], db_url,
                     tmp_path / "worker.log", APP_WORKER_START)
    assert not DEFAULT_WORKER_START.search(out), out


def test_the_supervisor_tags_each_line_with_the_process_role(db_url: str, tmp_path: Path) -> None:
    pattern = re.compile(rf"^{STAMP} \[group=0,1,2\] INFO flows\.worker: worker-start owner=", re.MULTILINE)
    out = _run_until([sys.executable, "-m", "supervisor", "--app", "tests.fleet_app"], db_url,
                     tmp_path / "fleet.log", pattern)
    assert re.search(rf"^{STAMP} \[master\] INFO supervisor: supervisor-start app=tests\.fleet_app", out,
                     re.MULTILINE), out


def test_the_supervisors_workers_keep_the_logging_the_app_set_up(db_url: str, tmp_path: Path) -> None:
    out = _run_until([sys.executable, "-m", "supervisor", "--app", "tests.logging_app"], db_url,
                     tmp_path / "fleet.log", APP_WORKER_START)
    assert re.search(rf"^{STAMP} \[master\] INFO supervisor: supervisor-start", out, re.MULTILINE), out
    assert not re.search(r"\[group=[\d,]+\] INFO flows\.worker", out), out
