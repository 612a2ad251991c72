"""The README's run command, ``./dev run``, from a shell without the virtualenv
activated: it serves the loan API and runs the worker, and a Ctrl-C (SIGINT to
its process group, as a terminal sends) stops everything."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.loan_stack import Stack, free_port
from tests.conftest import ROOT

BOOT_TIMEOUT_SECONDS = 40.0


def _plain_path() -> str:
    venv_bin = str(Path(sys.executable).parent)
    return os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != venv_bin)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_dev_run_serves_the_walkthrough_and_stops_on_ctrl_c(db_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "FLOWS_API_KEYS")}
    env.update(PATH=_plain_path(), DATABASE_URL=db_url, PORT=str(port), FLOWS_COMPLIANCE_SLEEP="0.1",
               WEB_CONCURRENCY="1")
    log = tmp_path / "dev-run.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["./dev", "run"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    stack = Stack(f"http://127.0.0.1:{port}", tmp_path)
    try:
        deadline = time.monotonic() + BOOT_TIMEOUT_SECONDS
        while True:
            assert proc.poll() is None, f"./dev run exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
            try:
                if stack.call("GET", "/healthz")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"not healthy:\n{log.read_text()[-3000:]}"
            time.sleep(0.2)

        code, started = stack.call("POST", "/api/loans", {"applicant_name": "Jane Smith", "amount": 20000,
                                                          "purpose": "car"})
        assert code == 201, started
        path = f"/api/loans/loan-application/{started['workflow_id']}"
        for doc_type, doc_id in (("identity", "DL-1"), ("income", "W2-2")):
            assert stack.call("POST", f"{path}/documents", {"document_type": doc_type, "document_id": doc_id})[0] == 200
        body: dict[str, Any] = {}
        deadline = time.monotonic() + 20
        while body.get("Status") != "completed":
            assert time.monotonic() < deadline, body
            body = stack.call("GET", f"{path}/result")[1]
            if body["WaitingFor"] == "signal:manager-approval":
                stack.call("POST", f"{path}/approve", {"approver_role": "manager", "approved": True})
            time.sleep(0.05)
        assert body["Output"]["decision"] == "approved"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
            pytest.fail(f"./dev run did not stop on Ctrl-C:\n{log.read_text()[-3000:]}")
    deadline = time.monotonic() + 10
    while _group_alive(proc.pid):  # gunicorn and the worker are gone too
        assert time.monotonic() < deadline, f"processes left behind:\n{log.read_text()[-3000:]}"
        time.sleep(0.1)
    assert "Traceback" not in log.read_text(), f"a traceback at shutdown:\n{log.read_text()[-3000:]}"
