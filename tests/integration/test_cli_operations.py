"""The operator's commands, run as the real ``flows`` program against the
test's database: list, show, dlq, retry, prune, export, replay, and --help
with an example for every command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import psycopg
import pytest

from flows import Engine, Worker
from tests import console_app as app
from tests.conftest import ROOT
from tests.integration.test_operations import age_by, ended, waiting

FLOWS = str(Path(sys.executable).with_name("flows"))
COMMANDS = ["migrate", "worker", "supervise", "status", "list", "show", "signal", "cancel", "retry", "dlq",
            "dlq list", "dlq retry", "prune", "export", "replay", "devdb"]


def flows_cmd(db_url: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FLOWS, *args], capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "DATABASE_URL": db_url, "FLOWS_LOG_LEVEL": "WARNING", **(env or {})})


@pytest.fixture
def worker(start_worker: Callable[..., Worker], monkeypatch: pytest.MonkeyPatch) -> Worker:
    for key in app.SWITCH:
        monkeypatch.setitem(app.SWITCH, key, False)
    return start_worker(app.WORKFLOWS, app.ACTIVITIES)


def test_every_command_has_help_with_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    from flows import cli

    with pytest.raises(SystemExit):
        cli.main(["--help"])
    listed = capsys.readouterr().out
    for command in COMMANDS:
        with pytest.raises(SystemExit) as exit:
            cli.main([*command.split(), "--help"])
        out = capsys.readouterr().out
        assert exit.value.code == 0, command
        assert "example" in out and f"flows {command.split()[0]}" in out.split("example", 1)[1], command
        assert f"    {command.split()[0]} " in listed, command  # with its one-line help in the list


def test_list_show_and_export_replay(db_url: str, engine: Engine, worker: Worker, tmp_path: Path) -> None:
    run = engine.start(app.path_workflow, "cli")
    waiting(engine, run, "signal:go")
    wid = str(run.workflow_id)

    out = flows_cmd(db_url, "list", "--waiting-for", "signal:go")
    assert out.returncode == 0, out.stderr
    assert wid in out.stdout and "signal:go" in out.stdout and "running: 1" in out.stdout
    listed = json.loads(flows_cmd(db_url, "list", "--json").stdout)
    assert [w["id"] for w in listed["workflows"]] == [wid] and listed["next_cursor"] is None

    out = flows_cmd(db_url, "show", "c-path", wid)
    assert out.returncode == 0, out.stderr
    assert "  why      waiting for signal `go` since " in out.stdout
    assert "activity_completed" in out.stdout and "step 1 c-echo: completed, 1 attempt(s) of 3" in out.stdout
    legacy = json.loads(flows_cmd(db_url, "show", "c-path", wid, "--json").stdout)
    assert legacy["workflow"]["waiting_for"] == "signal:go"
    assert [e["type"] for e in legacy["history"]] == ["workflow_started", "activity_scheduled", "activity_completed"]

    out = flows_cmd(db_url, "signal", "c-path", wid, "go", '"now"')
    assert out.returncode == 0, out.stderr
    engine.result("c-path", run.workflow_id, timeout=15)
    path = tmp_path / "run.json"
    with open(path, "w") as f:
        assert subprocess.run([FLOWS, "export", "c-path", wid], stdout=f, timeout=60, cwd=ROOT,
                              env={**os.environ, "DATABASE_URL": db_url}).returncode == 0
    assert json.loads(path.read_text())["workflow"]["output"] == "cli now"
    out = flows_cmd(db_url, "replay", str(path), "--app", "tests.console_app")
    assert out.returncode == 0 and "replays (completed)" in out.stdout, out.stdout + out.stderr
    out = flows_cmd(db_url, "replay", str(path), "--app", "tests.console_app", env={"CONSOLE_APP_SWITCH": "other_path"})
    assert out.returncode == 1
    assert "DIVERGES: step 1: history recorded activity 'c-echo', the code now asks for activity 'c-fragile'" in out.stdout


def test_dead_letters_retry_and_prune(db_url: str, engine: Engine, worker: Worker,
                                      db: psycopg.Connection[Any]) -> None:
    runs = [engine.start(app.fragile_workflow, f"f{i}") for i in range(2)]
    for run in runs:
        ended(engine, run)
    out = flows_cmd(db_url, "dlq", "list")
    assert out.returncode == 0 and all(str(r.workflow_id) in out.stdout for r in runs), out.stderr
    assert "ActivityFailed: activity c-fragile failed after 2 attempt(s)" in out.stdout

    app.SWITCH["healthy"] = True
    out = flows_cmd(db_url, "retry", "c-fragile", str(runs[0].workflow_id))
    assert out.returncode == 0 and "activity c-fragile (step 2) dropped" in out.stdout, out.stderr
    out = flows_cmd(db_url, "dlq", "retry", "--all", "--name", "c-fragile")
    assert out.returncode == 0 and out.stdout.strip().endswith("1 retried, 0 not"), out.stdout + out.stderr
    for run in runs:
        assert engine.result("c-fragile", run.workflow_id, timeout=15).startswith("before / f")
    assert flows_cmd(db_url, "dlq", "list").stdout.strip() == "no dead letters"
    assert len(json.loads(flows_cmd(db_url, "dlq", "list", "--retried", "--json").stdout)) == 2

    out = flows_cmd(db_url, "retry", "c-fragile", str(runs[0].workflow_id))
    assert out.returncode == 1 and "error: workflow c-fragile/" in out.stderr and "is completed" in out.stderr
    age_by(db, timedelta(days=2))
    out = flows_cmd(db_url, "prune", "--older-than", "1d", "--batch", "1")
    assert out.returncode == 0 and out.stdout.startswith("pruned 2 workflow(s)"), out.stderr
    assert db.execute("SELECT count(*) FROM history_events").fetchone()[0] == 0  # type: ignore[index]


@pytest.mark.parametrize("args, message", [
    (["prune", "--older-than", "30"], "argument --older-than: a duration is a number and a unit"),
    (["prune"], "the following arguments are required: --older-than"),
    (["list", "--limit", "5000"], "argument --limit: must be within 1..1000"),
    (["list", "--status", "stuck"], "argument --status: invalid choice: 'stuck'"),
    (["list", "--from", "yesterday"], "error: created_from is not an ISO 8601 time: 'yesterday'"),
    (["show", "c-path", "not-a-uuid"], "error: workflow_id is not a UUID: 'not-a-uuid'"),
    (["retry", "c-path", "0190f3c2-5a1e-7c3b-9d4e-2f6a8b1c0d9e"], "error: no workflow c-path/"),
    (["dlq", "retry"], "error: give NAME ID, or --all"),
    (["signal", "c-path", "0190f3c2-5a1e-7c3b-9d4e-2f6a8b1c0d9e", "go", "{oops"], "error: PAYLOAD is not JSON"),
    (["replay", "missing.json", "--app", "tests.console_app"], "error: cannot read missing.json"),
    (["replay", "pyproject.toml", "--app", "tests.console_app"], "error: pyproject.toml is not JSON"),
    (["replay", "x.json", "--app", "no.such.module"], "error: --app 'no.such.module' cannot be imported"),
])
def test_bad_arguments_get_a_clear_error(db_url: str, args: list[str], message: str,
                                        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """In-process (the same main() the program runs): a process each would cost a second."""
    from flows import cli

    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.chdir(ROOT)
    try:
        code = cli.main(args)
    except SystemExit as exc:  # argparse's usage errors
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert code in (1, 2) and message in err, err
