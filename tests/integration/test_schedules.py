"""Schedules fired by real worker processes: two fleets on one database
start one run per tick; a fleet down across ticks catches up per policy;
the Engine's and the CLI's schedule commands."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta
from typing import Any

import pytest

import flows
from flows import Engine, cli, schedules
from tests.integration.test_crashes import wait_until
from tests.integration.conftest import Spawn
from tests.primitives_app import tick

APP = "tests.primitives_app"


def run_ticks(db: Any) -> list[datetime]:
    """The tick each scheduled run was started for (its id's UUIDv7 time)."""
    rows = db.execute("SELECT id, (SELECT now()) FROM workflows WHERE name LIKE 'p-tick-shard-%'").fetchall()
    zone = rows[0][1].tzinfo if rows else None
    return sorted(datetime.fromtimestamp(int.from_bytes(wid.bytes[:6], "big") / 1000, zone) for wid, _ in rows)


def consecutive(ticks: list[datetime]) -> bool:
    return all(b - a == timedelta(seconds=1) for a, b in zip(ticks, ticks[1:]))


@pytest.mark.slow
def test_two_fleets_start_one_run_per_tick(engine: Engine, db_url: str, db: Any, spawn_worker: Spawn) -> None:
    for _ in range(2):
        spawn_worker(db_url, APP)
    wait_until(lambda: db.execute("SELECT count(*) FROM worker_heartbeats").fetchone() == (2,), timeout=30)
    info = engine.schedule(tick, "* * * * * *", "beat", schedule_id="every-second", overlap="allow")
    time.sleep(5.5)
    paused = engine.pause_schedule("every-second")
    ticks = run_ticks(db)
    expected = []
    at = info.next_fire_at
    while at <= paused.updated_at:
        expected.append(at)
        at = schedules.next_tick(info.cron, info.timezone, at)
    assert len(ticks) == len(set(ticks)) >= 5
    assert ticks == expected[:len(ticks)] and len(ticks) >= len(expected) - 1  # a tick due as it paused may go
    assert paused.starts == len(ticks)
    runs = db.execute("SELECT status, count(*) FROM workflows WHERE name LIKE 'p-tick-shard-%' GROUP BY 1")
    assert dict(runs.fetchall()).keys() <= {"running", "completed"}


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["all", "latest"])
def test_a_fleet_down_across_ticks_catches_up_per_policy(
    engine: Engine, db_url: str, db: Any, spawn_worker: Spawn, policy: str
) -> None:
    info = engine.schedule(tick, "* * * * * *", "beat", schedule_id="catch-up", overlap="allow", catch_up=policy)
    time.sleep(2.5)  # no worker: two ticks or more pass unfired
    spawn_worker(db_url, APP)
    up = db.execute("SELECT now()").fetchone()[0]
    wait_until(lambda: (ticks := run_ticks(db)) and ticks[-1] > up, timeout=30)  # caught up, then on time
    paused = engine.pause_schedule("catch-up")
    ticks = run_ticks(db)
    assert consecutive(ticks)
    if policy == "all":
        assert ticks[0] == info.next_fire_at and len(ticks) >= 3  # every missed tick started
        assert paused.skips == 0
    else:
        assert ticks[0] >= info.next_fire_at + timedelta(seconds=1)  # only the latest of the missed ticks
        assert paused.skips == (ticks[0] - info.next_fire_at).total_seconds()


def test_schedules_from_the_engine_and_the_cli(
    engine: Engine, db_url: str, db: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", db_url)
    engine.schedule(tick, "0 3 * * *", "nightly", schedule_id="nightly", timezone="Europe/Paris")
    assert cli.main(["--shards", "3", "schedules", "list"]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert (listed["schedule_id"], listed["cron"], listed["timezone"], listed["paused"]) == \
        ("nightly", "0 3 * * *", "Europe/Paris", False)
    assert cli.main(["--shards", "3", "schedules", "pause", "nightly"]) == 0
    assert json.loads(capsys.readouterr().out)["paused"] is True
    assert cli.main(["--shards", "3", "schedules", "trigger", "nightly"]) == 0
    started = json.loads(capsys.readouterr().out)
    assert engine.query(tick.name, started["workflow_id"]).input == "nightly"
    assert engine.resume_schedule("nightly").paused is False
    assert cli.main(["--shards", "3", "schedules", "delete", "nightly"]) == 0
    assert capsys.readouterr().out == "deleted\n" and engine.list_schedules() == []
    assert cli.main(["--shards", "3", "schedules", "pause", "nightly"]) == 1
    assert "no schedule 'nightly'" in capsys.readouterr().err
    with pytest.raises(flows.InvalidInput, match="cron"):
        engine.schedule(tick, "every day", "x", schedule_id="bad")
    assert db.execute("SELECT count(*) FROM schedules").fetchone() == (0,)
