"""Which ticks a schedule's firing pass starts: the cron in its time zone,
the catch-up policy for missed ticks, the overlap policy while the last
run still runs. Pure: no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

import flows
from flows import schedules
from flows.errors import InvalidInput
from flows.store import schedules as schedule_store

T0 = datetime(2024, 3, 30, 12, 0, 0, tzinfo=UTC)


def row(catch_up: str = "latest", overlap: str = "allow", buffered: datetime | None = None,
        cron: str = "* * * * * *") -> schedule_store.ScheduleRow:
    return schedule_store.ScheduleRow("s", flows.DEFAULT_TENANT_ID, "w", 1, None, cron, "UTC",
                             overlap, catch_up, False, T0, buffered, None, None, 0, 0, T0, T0)


def secs(*n: float) -> list[datetime]:
    return [T0 + timedelta(seconds=s) for s in n]


@pytest.mark.parametrize("policy, started, skips", [
    ("all", secs(0, 1, 2, 3), 0),
    ("latest", secs(3), 3),
    ("1.5", secs(2, 3), 2),
])
def test_catch_up_after_ticks_were_missed(policy: str, started: list[datetime], skips: int) -> None:
    plan = schedules.plan(row(policy), T0 + timedelta(seconds=3.2), last_running=False)
    assert (plan.start, plan.skips, plan.next_fire_at) == (started, skips, T0 + timedelta(seconds=4))


def test_overlap_while_the_last_run_runs() -> None:
    now = T0 + timedelta(seconds=1.1)
    assert schedules.plan(row("all", "allow"), now, True).start == secs(0, 1)
    skip = schedules.plan(row("all", "skip"), now, True)
    assert (skip.start, skip.skips) == ([], 2)
    buffer = schedules.plan(row("all", "buffer_one"), now, True)
    assert (buffer.start, buffer.buffered, buffer.skips) == ([], T0, 1)  # the first kept, the rest skipped
    # the last run ended: the buffered tick starts, and the due ones meet that run
    later = schedules.plan(row("all", "buffer_one", buffered=T0 - timedelta(seconds=1)), now, False)
    assert (later.start, later.buffered, later.skips) == (secs(-1), T0, 1)


def test_ticks_follow_the_schedules_time_zone_across_a_clock_change() -> None:
    # Paris leaves CET (UTC+1) for CEST (UTC+2) in the night of 2024-03-31
    first = schedules.next_tick("0 3 * * *", "Europe/Paris", datetime(2024, 3, 30, 1, 30, tzinfo=UTC))
    assert first == datetime(2024, 3, 30, 2, 0, tzinfo=UTC)  # 03:00 CET
    assert schedules.next_tick("0 3 * * *", "Europe/Paris", first) == datetime(2024, 3, 31, 1, 0, tzinfo=UTC)
    assert schedules.next_tick("0 3 * * *", "UTC", first) == datetime(2024, 3, 30, 3, 0, tzinfo=UTC)


def test_run_ids_are_uuid7_of_the_tick_and_the_same_everywhere() -> None:
    a = schedules.run_id("nightly", T0)
    assert a == schedules.run_id("nightly", T0) and a.version == 7
    assert a != schedules.run_id("nightly", T0 + timedelta(seconds=1)) != schedules.run_id("hourly", T0)
    assert int.from_bytes(a.bytes[:6], "big") == int(T0.timestamp() * 1000)


@flows.workflow("unit-sched")
def sched(ctx: flows.WorkflowContext, n: int) -> int:
    return n


@pytest.mark.parametrize("field, kwargs", [
    ("cron", {"cron": "61 * * * *"}),
    ("timezone", {"timezone": "Mars/Olympus"}),
    ("overlap", {"overlap": "queue"}),
    ("catch_up", {"catch_up": "some"}),
    ("catch_up", {"catch_up": 0}),
    ("schedule_id", {"schedule_id": ""}),
])
def test_bad_definitions_are_refused_naming_the_field(field: str, kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"cron": "0 3 * * *", "schedule_id": "s", "timezone": "UTC", "overlap": "skip",
                               "catch_up": "latest", **kwargs}
    cron = args.pop("cron")
    with pytest.raises(InvalidInput) as err:
        schedules.spec(sched, cron, 1, tenant_id=flows.DEFAULT_TENANT_ID, **args)  # type: ignore[arg-type]
    assert err.value.path == field
