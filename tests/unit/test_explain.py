"""The "why is it not moving" sentence, built from plain data; and the
pure parts of retry, prune and list paging."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest

from flows.errors import InvalidInput
from flows.explain import span, why
from flows.ops.detail import Activity, Attempt, DeadLetterEntry, ShardWorker, Signal, Task, Timer, WorkflowDetail
from flows.ops.workflows import decode_cursor, parse_duration, plan_retry

NOW = datetime(2024, 5, 1, 17, 2, 0, tzinfo=UTC)
SHARD = "loan-application-shard-2"
ACT = UUID(int=7)


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def worker(owner: str = "host:1", age: float = 3.0) -> ShardWorker:
    return ShardWorker(owner, "host", 1, ago(age), age)


def detail(**kw: object) -> WorkflowDetail:
    base = WorkflowDetail(
        name="loan-application", shard=SHARD, id=UUID(int=1), tenant_id=UUID(int=0), version=1, status="running",
        input={}, output=None, error=None, waiting_for=None, sequence_num=3, created_at=ago(4 * 3600),
        updated_at=ago(3 * 3600), completed_at=None, now=NOW, history=[], activities=[], signals=[], timers=[],
        tasks=[], dead_letters=[], workers=[worker()],
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def task(kind: str, due_in: float, target: UUID | None = None, owner: str | None = None) -> Task:
    return Task(UUID(int=99), kind, target, NOW + timedelta(seconds=due_in), due_in, owner, 1, ago(60))


def activity(status: str, attempts: list[Attempt], failed: int) -> Activity:
    return Activity(ACT, "verify-document", 4, status, {}, None, None, failed, 5, None, ago(600), ago(30), None,
                    attempts)


def test_waiting_for_a_signal_says_since_when_and_that_none_is_pending() -> None:
    d = detail(waiting_for="signal:document-income")
    assert why(d) == "waiting for signal `document-income` since 14:02:00 UTC, 3 h ago; none pending"


def test_waiting_for_a_signal_names_pending_signals_of_other_names() -> None:
    other = Signal(UUID(int=5), "document-address", {}, False, None, ago(60), None)
    d = detail(waiting_for="signal:document-income", signals=[other])
    assert why(d).endswith("none pending (pending, of other names: `document-address`; each waits until the"
                           " workflow asks for it)")


def test_a_failed_attempt_gives_its_error_and_the_next_try() -> None:
    attempts = [Attempt(n, "failed", ago(300 - n), ago(290 - n), "TimeoutError: bureau slow", ago(200))
                for n in (1, 2, 3)] + [Attempt(4, "scheduled", None, None)]
    d = detail(waiting_for="activity:verify-document", activities=[activity("scheduled", attempts, 3)],
               tasks=[task("activity", 40, ACT)])
    assert why(d) == ("activity `verify-document` attempt 3 of 5 failed: TimeoutError: bureau slow; next try in"
                      " 40 s (at 17:02:40 UTC)")


def test_a_due_task_on_a_shard_no_live_worker_serves() -> None:
    d = detail(waiting_for="signal:document-income", tasks=[task("workflow", -12)], workers=[worker(age=90)])
    assert why(d) == ("a replay step has been due for 12 s but no worker serves shard `loan-application-shard-2`"
                      " (no live heartbeat names it)")
    assert why(d, stale_seconds=120).startswith("a replay step has been due for 12 s; worker `host:1` serve")


def test_a_running_attempt_names_its_worker_and_lease() -> None:
    attempts = [Attempt(1, "running", ago(20), None)]
    d = detail(waiting_for="activity:verify-document", activities=[activity("running", attempts, 0)],
               tasks=[task("activity", 10, ACT, owner="host:1")])
    assert why(d) == ("activity `verify-document` attempt 1 of 5 is running on `host:1` since 17:01:40 UTC, 20 s"
                      " ago; its lease ends in 10 s")
    dead = replace(d, workers=[])
    assert "but `host:1` has no live heartbeat" in why(dead)


def test_an_expired_lease_is_called_so() -> None:
    d = detail(waiting_for="activity:verify-document",
               activities=[activity("running", [Attempt(1, "running", ago(60), None)], 0)],
               tasks=[task("activity", -8, ACT, owner="host:9")], workers=[])
    assert why(d).startswith("activity `verify-document` attempt 1 of 5: the lease of `host:9` ran out 8.0 s ago")
    assert why(d).endswith("but no worker serves shard `loan-application-shard-2` (no live heartbeat names it)")


def test_a_timer_says_when_it_fires() -> None:
    timer = Timer(UUID(int=3), 5, NOW + timedelta(seconds=200), False, None, ago(10))
    d = detail(waiting_for="timer", timers=[timer], tasks=[task("timer", 200)])
    assert why(d) == "sleeping on a durable timer until 17:05:20 UTC (in 3 min 20 s)"
    late = replace(d, timers=[replace(timer, fire_at=ago(30))], workers=[])
    assert why(late).startswith("the timer was due 30 s ago (at 17:01:30 UTC), but no worker serves shard")


def test_ended_workflows() -> None:
    done = detail(status="completed", completed_at=ago(120))
    assert why(done) == "completed at 17:00:00 UTC, 2 min ago, 3 h 58 min after it started"
    failed = detail(status="failed", completed_at=ago(5), error="ValueError: boom",
                    dead_letters=[DeadLetterEntry(UUID(int=4), "ValueError: boom", ago(5), None)])
    assert why(failed) == ("failed at 17:01:55 UTC, 5.0 s ago: ValueError: boom; it is in the dead-letter queue"
                           " until retried")


def test_nothing_queued_is_called_stuck() -> None:
    assert "cannot move on by itself" in why(detail())


def test_span() -> None:
    assert [span(s) for s in (0.0084, 2.42, 12, 200, 3 * 3600 + 300, 2 * 86400 + 4 * 3600)] == [
        "8 ms", "2.4 s", "12 s", "3 min 20 s", "3 h 5 min", "2 d 4 h"]


# -- retry planning -------------------------------------------------------------------


def row(i: int, step: int, kind: str, data: dict[str, object], **extra: object) -> dict[str, object]:
    return {"id": str(UUID(int=i)), "sequence_num": step, "event_type": kind, "event_data": data, **extra}


HISTORY = [
    row(1, 0, "workflow_started", {"version": 1}),
    row(2, 1, "activity_scheduled", {"name": "a", "activity_id": str(UUID(int=101))}),
    row(3, 1, "activity_completed", {"name": "a"}),
    row(4, 2, "activity_scheduled", {"name": "b", "activity_id": str(UUID(int=102))}),
    row(5, 2, "activity_retrying", {"name": "b", "attempt": 0, "error": "x", "retry_in_seconds": 1}),
    row(6, 2, "activity_failed", {"name": "b", "error": "x", "attempts": 2}),
    row(7, 3, "workflow_failed", {"error": "ActivityFailed: ..."}),
]


def test_a_failed_activity_drops_its_step_and_the_end() -> None:
    events, activities, step, _ = plan_retry("ActivityFailed: activity b failed after 2 attempt(s): x", HISTORY)
    assert sorted(e.int for e in events) == [4, 5, 6, 7]
    assert activities == [UUID(int=102)] and step == 2


def test_an_exception_or_nondeterminism_drops_only_the_end() -> None:
    for error in ("ValueError: bug", "NonDeterminismError: step 2: history recorded activity 'b', the code now asks"
                                     " for activity 'c'"):
        events, activities, step, _ = plan_retry(error, HISTORY)
        assert [e.int for e in events] == [7] and activities == [] and step is None


def test_a_handled_failure_before_the_last_step_is_kept() -> None:
    later = [*HISTORY[:-1], row(8, 3, "random_generated", {"random_bytes": [1], "num_bytes": 1}),
             row(9, 4, "workflow_failed", {"error": "ActivityFailed"})]
    events, activities, _, _ = plan_retry("ActivityFailed: activity b failed after 2 attempt(s): x", later)
    assert [e.int for e in events] == [9] and activities == []


def test_retry_reads_the_step_column_when_the_schema_has_one() -> None:
    counted = [dict(r, sequence_num=i, step=r["sequence_num"]) for i, r in enumerate(HISTORY)]
    events, _, step, _ = plan_retry("ActivityFailed: activity b failed after 2 attempt(s): x", counted)
    assert sorted(e.int for e in events) == [4, 5, 6, 7] and step == 2


def test_durations_and_cursors_refuse_garbage() -> None:
    assert parse_duration("30d") == 30 * 86400 and parse_duration("1.5h") == 5400
    for bad in ("30", "d", "-1d", "30 days"):
        with pytest.raises(InvalidInput, match="a duration is a number and a unit"):
            parse_duration(bad)
    with pytest.raises(InvalidInput, match="not a cursor"):
        decode_cursor("yesterday")
