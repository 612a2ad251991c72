"""The supervisor's database helper (flows/supervisor/database.py) without a
database: jobs answered on the pipe the loop selects on, failures sorted,
nothing the loop calls ever waiting, and a job past its deadline given up
with its thread while a new thread takes the next. The jobs are stand-ins."""

from __future__ import annotations

import select
import threading
import time
from typing import Any, Iterator

import pytest

from flows.errors import DatabaseError, DatabaseUnavailable, MigrationChanged
from flows.supervisor import database
from flows.supervisor.database import Helper, Job


class _Conn:
    def fileno(self) -> int:
        return -1

    def close(self) -> None:
        pass


def _raise(exc: BaseException) -> Any:
    raise exc


FAILURES = {
    "unavailable": lambda: DatabaseUnavailable("server closed the connection unexpectedly"),
    "database": lambda: DatabaseError("QueryCanceled (57014): canceling statement due to statement timeout"),
    "refused": lambda: MigrationChanged("005_step_functions.sql changed", files=["005_step_functions.sql"]),
    "error": lambda: ZeroDivisionError("a bug"),
}


@pytest.fixture
def helper(monkeypatch: pytest.MonkeyPatch) -> Iterator[Helper]:
    monkeypatch.setattr(database, "JOB_DEADLINE_SECONDS", 0.5)
    monkeypatch.setattr(database.fleet_ops, "connect", lambda dsn, seconds: _Conn())
    release = threading.Event()
    monkeypatch.setitem(database.JOBS, "thread", lambda conn: threading.get_ident())
    monkeypatch.setitem(database.JOBS, "hang", lambda conn: release.wait(30))
    monkeypatch.setitem(database.JOBS, "fail", lambda conn, name: _raise(FAILURES[name]()))
    h = Helper("postgresql://nowhere/never")
    yield h
    release.set()  # the threads given up on end
    h.stop()


def _wait_answers(h: Helper) -> list[database.Answer]:
    ready, _, _ = select.select([h.fileno()], [], [], 5)
    assert ready, "no answer on the pipe"
    return h.read()


def test_jobs_run_one_at_a_time_on_one_thread_and_answer_on_the_pipe(helper: Helper) -> None:
    first, second = Job("thread"), Job("thread")
    helper.submit(first)
    helper.submit(second)
    assert len(helper) == 2
    began = time.monotonic()
    assert helper.pump() == [] and helper.in_flight is first
    assert helper.pump() == []  # one in flight at a time
    assert time.monotonic() - began < 0.1  # handing over never waits
    [a] = _wait_answers(helper)
    assert a.job is first and a.ok and a.value != threading.get_ident()
    helper.pump()
    [b] = _wait_answers(helper)
    assert b.job is second and b.value == a.value and len(helper) == 0  # the same thread, kept


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_failures_are_sorted_and_the_helper_keeps_serving(helper: Helper, failure: str) -> None:
    answer = helper.call(Job("fail", (failure,)))
    assert answer.failure == failure and not answer.ok and answer.error
    assert helper.call(Job("thread")).ok


def test_a_job_past_its_deadline_is_given_up_and_a_new_thread_takes_the_next(helper: Helper) -> None:
    first = helper.call(Job("thread")).value
    stuck = Job("hang")
    helper.submit(stuck)
    helper.pump()
    assert helper.overdue(time.monotonic()) == []  # not yet
    assert helper.read() == []  # nothing in: returns at once
    time.sleep(0.6)
    [late] = helper.overdue(time.monotonic())
    assert late.job is stuck and late.failure == "timeout" and helper.in_flight is None
    again = helper.call(Job("thread"))
    assert again.ok and again.value != first  # a new thread (and connection)


def test_threads_stuck_past_the_limit_make_jobs_fail_at_once(helper: Helper) -> None:
    for _ in range(database.MAX_ABANDONED):
        helper.submit(Job("hang"))
        helper.pump()
        time.sleep(0.55)
        assert helper.overdue(time.monotonic())
    helper.submit(Job("thread"))
    [refused] = helper.pump()
    assert refused.failure == "timeout" and "still stuck" in refused.error


def test_call_gives_up_at_the_deadline(helper: Helper) -> None:
    began = time.monotonic()
    answer = helper.call(Job("hang"))
    assert answer.failure == "timeout" and 0.4 < time.monotonic() - began < 3
