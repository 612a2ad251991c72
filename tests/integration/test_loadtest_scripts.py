"""The load-test harness still runs against today's engine: each script is
run small, as a user would run it, and must finish and report. Its figures
are not checked here (performance is measured by running it, never by
tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ADMIN_URL_ENV, ROOT

pytestmark = pytest.mark.slow


def _run(args: list[str]) -> str:
    env = {**os.environ, "DATABASE_URL": os.environ[ADMIN_URL_ENV]}
    out = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=240)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def _report(stdout: str) -> dict[str, Any]:
    """The JSON report a scenario says it wrote; the files are removed."""
    written = [line.split()[1] for line in stdout.splitlines() if line.startswith("wrote ")]
    assert written, stdout[-2000:]
    report: dict[str, Any] = json.loads(Path(written[0]).read_text())
    Path(written[0]).unlink()
    Path(written[0]).with_suffix(".png").unlink(missing_ok=True)
    return report


def test_the_throughput_scenario_runs_and_writes_its_report() -> None:
    stdout = _run(["loadtest", "throughput", "--workflows", "20", "--fleets", "1", "--pgbench-seconds", "0",
                   "--timeout", "200"])
    assert "w1_steps_per_s" in stdout
    metrics = _report(stdout)["metrics"]
    assert metrics["w1_failed"] == 0
    assert metrics["w1_steps_per_s"] > 0


def test_the_console_list_script_runs() -> None:
    stdout = _run(["loadtest.console_list", "--workflows", "300", "--repeat", "2"])
    assert "first page" in stdout


def test_the_floor_scenario_runs_the_step_writes_and_counts_their_cpu() -> None:
    metrics = _report(_run(["loadtest", "floor", "--seconds", "1", "--timeout", "200"]))["metrics"]
    assert metrics["floor_steps_per_s"] > 0
    # pgbench's backends have ended when the CPU is read, and their time
    # counts all the same: while pgbench runs they keep the server busy
    # (more than a fifth of a core; the harness alone uses a few ms a second).
    assert metrics["floor_server_cpu_ms_per_step"] * metrics["floor_steps_per_s"] > 200
    assert metrics["pgbench_server_cpu_ms_per_xact"] * metrics["pgbench_tps"] > 200


def test_the_fairness_scenario_times_tenant_b_quiet_and_during_a_burst() -> None:
    metrics = _report(_run(["loadtest", "fairness", "--burst", "300", "--quiet-seconds", "2", "--rate", "10",
                            "--timeout", "200"]))["metrics"]
    assert metrics["b_quiet"] >= 15 and metrics["b_during_burst"] >= 1
    assert metrics["b_quiet_p99_ms"] > 0 and metrics["b_burst_p99_ms"] > 0
    assert metrics["b_p99_ratio"] == metrics["b_burst_p99_ms"] / metrics["b_quiet_p99_ms"]
