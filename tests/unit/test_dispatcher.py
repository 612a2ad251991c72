"""The worker loop's decisions (flows.wakeups.Dispatcher), on a clock the
test moves: which shard to claim, how many tasks at once, when to look
again, how long to sleep."""

from __future__ import annotations

from flows.wakeups import ACTIVITY, BUSY_RECHECK_SECONDS, NEVER, REPLAY, Dispatcher, Wake


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def dispatcher(clock: Clock, shards: tuple[str, ...] = ("a", "b", "c"), **kwargs: object) -> Dispatcher:
    return Dispatcher(shards, clock=clock, **kwargs)  # type: ignore[arg-type]


def test_every_shard_is_looked_at_first_then_only_where_work_is_due() -> None:
    clock = Clock()
    d = dispatcher(clock)
    assert d.survey_due() and d.sleep_seconds([REPLAY]) == 0
    survey = d.survey()
    d.learn_survey(survey, REPLAY, {"b": 5.0})  # a: nothing queued, b: due in 5 s, c: nothing
    d.learn_survey(survey, ACTIVITY, {})
    assert d.take(REPLAY) is None and not d.due_now(REPLAY)
    assert d.sleep_seconds([REPLAY, ACTIVITY], margin=0.001) == 5.001
    clock.now += 5.0
    ticket = d.take(REPLAY)
    assert ticket is not None and ticket.shard == "b"


def test_a_notification_during_a_claim_is_not_lost_to_the_claims_answer() -> None:
    clock = Clock()
    d = dispatcher(clock)
    d.learn_survey(d.survey(), REPLAY, {})
    d.announce(REPLAY, ["a"])
    ticket = d.take(REPLAY)
    assert ticket is not None
    d.announce(REPLAY, ["a"])  # a NOTIFY arrives while the claim runs
    d.learn(ticket, None)  # the claim saw nothing more (it began before that task committed)
    assert d.due_now(REPLAY)  # so the shard is still looked at


def test_the_shard_due_longest_is_claimed_first() -> None:
    clock = Clock()
    d = dispatcher(clock)
    survey = d.survey()
    d.learn_survey(survey, REPLAY, {"a": 3.0, "b": 1.0, "c": 2.0})
    clock.now += 10
    order = []
    while (ticket := d.take(REPLAY)) is not None:
        order.append(ticket.shard)
        d.learn(ticket, None)
    assert order == ["b", "c", "a"]


def test_a_backlog_is_claimed_in_batches_until_a_claim_finds_nothing_due() -> None:
    clock = Clock()
    d = dispatcher(clock, claim_batch=8)
    assert d.batch_size("a") == 1
    ticket = d.take(REPLAY)
    assert ticket is not None
    d.learn(ticket, 0.0, claimed=True)  # took one and another is due already
    assert d.batch_size(ticket.shard) == 8
    d.learn(d.take(REPLAY) or ticket, 0.0, claimed=True)
    assert d.batch_size(ticket.shard) == 8
    d.learn(ticket, 2.0, claimed=True)  # the next is due later: one at a time again
    assert d.batch_size(ticket.shard) == 1
    d.learn(ticket, 0.0, claimed=False)  # due but held elsewhere: no backlog of ours
    assert d.batch_size(ticket.shard) == 1
    d.learn(ticket, 0.0, claimed=True)
    d.leave_backlog(ticket.shard)  # a batch failed
    assert d.batch_size(ticket.shard) == 1


def test_tasks_held_by_our_own_claims_are_looked_at_again_when_the_last_ends() -> None:
    clock = Clock()
    d = dispatcher(clock)
    d.learn_survey(d.survey(), REPLAY, {})
    d.claim_started("a")
    d.claim_started("a")
    assert d.held_elsewhere("a") == BUSY_RECHECK_SECONDS  # the second claim found a's due tasks held
    ticket = d.take(REPLAY, now=clock.now)
    assert ticket is None
    d.claim_ended("a")
    assert not d.due_now(REPLAY)  # one of ours still runs
    d.claim_ended("a")
    assert d.due_now(REPLAY)  # the last looks again at once, not after the recheck delay


def test_held_by_another_worker_is_looked_at_again_soon() -> None:
    clock = Clock()
    d = dispatcher(clock)
    d.learn_survey(d.survey(), REPLAY, {})
    d.announce(REPLAY, ["a"])
    ticket = d.take(REPLAY)
    assert ticket is not None
    d.claim_started("a")
    d.learn(ticket, d.held_elsewhere("a"))
    d.claim_ended("a")
    assert not d.due_now(REPLAY)
    assert d.sleep_seconds([REPLAY]) == BUSY_RECHECK_SECONDS


def test_without_heartbeats_every_shard_is_surveyed_each_safety_poll() -> None:
    clock = Clock()
    d = dispatcher(clock, survey_every=30.0)
    d.learn_survey(d.survey(), REPLAY, {})
    assert not d.survey_due() and d.sleep_seconds([REPLAY]) == 30.0
    clock.now += 30.0
    assert d.survey_due()
    heartbeats = dispatcher(clock, survey_every=NEVER)
    heartbeats.learn_survey(heartbeats.survey(), REPLAY, {})
    clock.now += 1e6
    assert not heartbeats.survey_due() and heartbeats.sleep_seconds([REPLAY]) == 3600.0


def test_a_retry_due_later_wakes_the_loop_then() -> None:
    clock = Clock()
    woken: list[Wake] = []
    d = dispatcher(clock, notify=woken.append)
    d.learn_survey(d.survey(), ACTIVITY, {})
    d.announce(ACTIVITY, ["c"], in_seconds=2.5)
    d.wake(Wake.NEWS)
    assert woken == [Wake.NEWS]
    assert d.take(ACTIVITY) is None and d.sleep_seconds([ACTIVITY]) == 2.5
    clock.now += 2.5
    assert (ticket := d.take(ACTIVITY)) is not None and ticket.shard == "c"


def test_in_a_backlog_the_shard_whose_work_is_oldest_is_claimed_first() -> None:
    """Claims answer how overdue a shard's next task is: a worker serving
    several shards with a backlog claims in due order across them, and one
    just announced does not jump ahead of work due for seconds."""
    clock = Clock()
    d = dispatcher(clock, shards=("a", "b", "c", "d"))
    d.learn_survey(d.survey(), REPLAY, {"a": -3.0, "b": -20.0, "c": -7.0})  # due since 3, 20 and 7 s
    d.announce(REPLAY, ["d"])  # new work right now
    answers = {"b": [-1.0, None], "c": [30.0], "a": [-2.0, None], "d": [None]}  # each claim's next due
    taken = []
    while (ticket := d.take(REPLAY)) is not None:
        taken.append(ticket.shard)
        d.learn(ticket, answers[ticket.shard].pop(0), claimed=True)
    # b (20 s), c (7 s), a (3 s), a again (its next, 2 s, before b's 1 s), b, then d (just now)
    assert taken == ["b", "c", "a", "a", "b", "d"]
