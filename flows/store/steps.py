"""The worker's step: claims of replays, the wire format of what a step
writes (``Step``, sent whole to ``flows_record_step_v5``), and its record.

A step is one transaction (``statements.StepTransaction``): the claim
begins it, the record commits it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Sequence
from uuid import UUID

import msgspec
import psycopg
import uuid6

from flows import codec, history, sharding
from flows.codec import Json
from flows.store.carry import Carry, leased
from flows.store.client import WorkflowRow
from flows.store.connections import ANY_WORK, Conn
from flows.store.leases import ActivityTask
from flows.store.statements import Deferred, StepTransaction, int_array


class ReplayState(msgspec.Struct, frozen=True):
    """A locked workflow and what its replay reads: ``task`` is the claimed
    (task id, task type, target id, seconds until the next task of the
    claimer's versions in the shard is due (None if none), the task's
    lease_seconds (a timeout task's length)), None when recording an
    activity's end. ``events`` are (step, type, data) in the order written."""

    task: tuple[UUID, str, UUID | None, float | None, float | None] | None
    now: datetime
    workflow: WorkflowRow
    events: list[tuple[int, str, msgspec.Raw]] | None
    signals: list[tuple[UUID, str, msgspec.Raw]] | None
    tail: bool = False  # events are only those written after workflow.last_event

    @property
    def stamp(self) -> tuple[datetime, int | None]:
        """What the latest step left on the workflow row (see flows.continuation)."""
        return self.workflow.updated_at, self.workflow.last_event


class Claimed(msgspec.Struct, frozen=True):
    """What a replay claim found: the replay ``state`` (None: nothing
    claimable, or a task to carry, ``carry``) and seconds until the shard's
    next task is due (None: none; <= 0: one is due now, perhaps held by
    another worker)."""

    state: ReplayState | None
    next_due: float | None
    carry: Carry | None = None


class _CarryAnswer(msgspec.Struct, frozen=True):
    id: UUID
    type: str
    token: int
    info: msgspec.Raw = msgspec.Raw(b"null")


class _ClaimAnswer(msgspec.Struct, frozen=True):
    task: tuple[UUID, str, UUID | None, float | None, float | None] | None = None
    carry: _CarryAnswer | None = None
    now: datetime | None = None
    workflow: WorkflowRow | None = None
    events: list[tuple[int, str, msgspec.Raw]] | None = None
    signals: list[tuple[UUID, str, msgspec.Raw]] | None = None
    tail: bool = False
    next: float | None = None


_replay_state = msgspec.json.Decoder(ReplayState)
_claim_answer = msgspec.json.Decoder(_ClaimAnswer)


def _carry(c: _CarryAnswer, shard: str) -> Carry:
    return leased(c.id, c.type, c.token, c.info, shard)


def _state(row: tuple[Any, ...] | None) -> ReplayState | None:
    return None if row is None or row[0] is None else _replay_state.decode(row[0])


def claim_replay(
    tx: StepTransaction, shard: str, versions: list[int], whole_below: int = 1 << 30, owner: str = ""
) -> Claimed:
    """Claim one due workflow, timer or timeout task of ``shard`` for a
    worker running these ``versions`` of its workflow (deleted, its timer
    fired) and lock its workflow row, both skipping rows another transaction
    holds: two replays of one workflow never overlap, and a claim never
    waits. The history comes whole when its run has fewer than
    ``whole_below`` events, else only the events since the latest step
    (``tail``). A due `child` or `parent` task is leased to ``owner``
    instead and returned as ``carry``. One statement
    (``flows_claim_replay_v4``, migration 040)."""
    row = tx.begin_with(
        "SELECT flows_claim_replay_v4(%s, %s::integer[], %s, %s, %s, %s)",
        (shard, int_array(tuple(versions)), uuid6.uuid7(), sharding.channel(shard), whole_below, owner),
    )
    assert row is not None and row[0] is not None
    got = _claim_answer.decode(row[0])
    if got.carry is not None:
        return Claimed(None, got.next, _carry(got.carry, shard))
    if got.task is None or got.workflow is None or got.now is None:
        return Claimed(None, got.next)
    return Claimed(ReplayState(got.task, got.now, got.workflow, got.events, got.signals, got.tail), got.task[3])


class _Claims(msgspec.Struct, frozen=True):
    states: list[ReplayState]
    next: float | None = None
    carry: _CarryAnswer | None = None


_claims = msgspec.json.Decoder(_Claims)


def claim_replays(
    tx: StepTransaction, shard: str, versions: list[int], whole_below: int, limit: int, owner: str = ""
) -> tuple[list[ReplayState], float | None, Carry | None]:
    """Up to ``limit`` claims of ``claim_replay`` in one statement
    (``flows_claim_replays_v2``, migration 040), for a worker that found a
    backlog in ``shard``; also seconds until its next task is due. A due
    `child` or `parent` task ends the batch, leased to ``owner`` and
    returned as the carry."""
    row = tx.begin_with(
        "SELECT flows_claim_replays_v2(%s, %s::integer[], %s::uuid[], %s, %s, %s, %s)",
        (shard, int_array(tuple(versions)), [uuid6.uuid7() for _ in range(limit)], sharding.channel(shard),
         whole_below, limit, owner),
    )
    assert row is not None and row[0] is not None
    got = _claims.decode(row[0])
    return got.states, got.next, None if got.carry is None else _carry(got.carry, shard)


def lock_workflow(tx: StepTransaction, shard: str, workflow_id: UUID) -> tuple[UUID, str, int, int] | None:
    """Lock a workflow row, waiting for a step in progress; return its
    (tenant_id, status, version, sequence_num), None if there is none."""
    row = tx.begin_with(
        "SELECT tenant_id, status, version, sequence_num FROM workflows WHERE name = %s AND id = %s FOR UPDATE",
        (shard, workflow_id),
    )
    return None if row is None else (row[0], row[1], row[2], row[3])


def lock_activity(
    tx: StepTransaction, task: ActivityTask, owner: str, stamp: tuple[datetime, int | None] | None = None
) -> ReplayState | None:
    """Lock the workflow row to record the end of an activity attempt and
    delete our leased task. None if this delivery no longer holds the lease
    (its attempt timed out and was recorded so, or another worker took the
    task, or the workflow ended and dropped it).

    With the ``stamp`` the worker remembers of the workflow's latest step
    still on its row, only the events written since come back (``tail``)."""
    updated_at, last_event = stamp if stamp is not None else (None, None)
    return _state(tx.begin_with(
        "SELECT flows_lock_activity_v3(%s, %s, %s, %s, %s, %s, %s::integer)",
        (task.shard, task.workflow_id, task.task_id, owner, task.token, updated_at, last_event),
    ))


def lock_activities(
    tx: StepTransaction, tasks: Sequence[tuple[ActivityTask, tuple[datetime, int | None] | None]], owner: str
) -> list[ReplayState | None]:
    """``lock_activity`` for several attempts (of different workflows) in one
    round trip, which begins the transaction; in the order given."""
    cur = psycopg.ClientCursor(tx.conn)
    params: list[Any] = []
    for task, stamp in tasks:
        updated_at, last_event = stamp if stamp is not None else (None, None)
        params += [task.shard, task.workflow_id, task.task_id, owner, task.token, updated_at, last_event]
    cur.execute("BEGIN; " + "; ".join(
        ["SELECT flows_lock_activity_v3(%s, %s, %s, %s, %s, %s, %s::integer)"] * len(tasks)), tuple(params))
    states: list[ReplayState | None] = []
    for _ in tasks:
        cur.nextset()
        states.append(_state(cur.fetchone()))
    return states


def load_state(tx: StepTransaction, shard: str, workflow_id: UUID, now: datetime) -> ReplayState:
    """The replay state with the current run's whole history, inside a step
    whose claim sent only a tail the worker cannot use."""
    row = tx.conn.execute("SELECT flows_state_v3(%s, %s, NULL, NULL, %s)", (shard, workflow_id, now)).fetchone()
    state = _state(row)
    assert state is not None
    return state


def replay_state(conn: Conn, shard: str, workflow_id: UUID) -> ReplayState | None:
    """The workflow with its history and unconsumed signals, unlocked (for inspection)."""
    return _state(conn.execute(
        "SELECT flows_state_v3(%s, %s, NULL, NULL, now())", (shard, workflow_id)).fetchone())


class ActivityEnd(msgspec.Struct, omit_defaults=True):
    """The attempt whose end a step records: completed with ``output`` or
    failed (no attempts left) with ``error``; ``details``: the attempt's
    last heartbeat details, when it beat."""

    id: UUID
    status: str
    attempt: int
    seq: int  # its step: the update names both unique keys of the row (see migration 053)
    output: msgspec.Raw | None = None
    error: str | None = None
    details: msgspec.Raw | None = None


class NewActivity(msgspec.Struct):
    id: UUID
    task_id: UUID
    name: str
    seq: int
    input: msgspec.Raw
    max_attempts: int
    lease_seconds: float
    lease_owner: str | None  # leased at once to this worker, which runs it next


class NewTimer(msgspec.Struct):
    id: UUID
    task_id: UUID
    seq: int
    fire_at: datetime


class NewEvent(msgspec.Struct):
    id: UUID
    seq: int  # the step it belongs to (0: none)
    kind: str
    data: msgspec.Raw  # the event Struct's JSON, encoded once: sent as is, and kept in a worker's copy


class NewChild(msgspec.Struct):
    id: UUID
    name: str  # the child's sharded name
    version: int
    seq: int
    input: msgspec.Raw
    parent_close: str


class ConsumedSignal(msgspec.Struct):
    id: UUID
    seq: int


def reject_signals(tx: StepTransaction, shard: str, workflow_id: UUID, rejects: list[tuple[UUID, str]]) -> None:
    """Mark signals (id, reason) rejected by a wait, in the step's
    transaction (begun by its claim): consumed by no step, so no replay
    sees them again."""
    tx.conn.execute(
        "UPDATE signals s SET consumed = true, consumed_at = now(), rejected = r.reason"
        " FROM unnest(%s::uuid[], %s::text[]) AS r(id, reason)"
        " WHERE s.workflow_name = %s AND s.workflow_id = %s AND s.id = r.id AND NOT s.consumed",
        ([i for i, _ in rejects], [reason for _, reason in rejects], shard, workflow_id),
    )


class Retry(msgspec.Struct, omit_defaults=True):
    """A failed attempt with attempts left: the activity goes back to
    ``scheduled`` and a task for the next attempt is due ``delay`` seconds on."""

    id: UUID
    attempt: int  # failed attempts after this one
    error: str
    delay: float
    task_id: UUID
    name: str
    lease_seconds: float
    event: NewEvent
    details: msgspec.Raw | None = None


class Step(msgspec.Struct, omit_defaults=True):
    """Everything one replay of a locked workflow writes (see
    ``flows_record_step_v3`` in migration 010 and ``flows_record_step_v4``
    in 040 for each field)."""

    shard: str
    workflow_id: UUID
    tenant_id: UUID
    version: int
    status: str | None  # None: no replay (an attempt to retry); continued: the next run starts
    seq: int
    waiting_for: str | None = None
    activity: ActivityEnd | None = None
    retry: Retry | None = None
    activities: list[NewActivity] = []
    signals: list[ConsumedSignal] = []
    timers: list[NewTimer] = []
    cancel_timers: list[UUID] = []
    children: list[NewChild] = []
    events: list[NewEvent] = []
    output: msgspec.Raw | None = None
    next_input: msgspec.Raw | None = None  # continued: the next run's input
    next_task_id: UUID | None = None
    start_event: NewEvent | None = None
    error: str | None = None
    dlq_id: UUID | None = None
    end_event: NewEvent | None = None
    wake_channel: str | None = None
    wake_work: str = ANY_WORK  # the NOTIFY payload: which kind of task is new
    done_channel: str | None = None
    channel: str | None = None  # the shard's wake-up channel, for what an end sets going


_step_encoder = msgspec.json.Encoder()


def _encode_event(data: msgspec.Struct) -> bytes:
    # Its values passed the size limit on their own; the NUL check stays.
    return codec.encode(data, "history event", limit=1 << 31)


def event(seq: int, data: msgspec.Struct) -> NewEvent:
    """A history event of step ``seq`` with a fresh id, for ``Step.events``."""
    return NewEvent(uuid6.uuid7(), seq, history.event_type(data), msgspec.Raw(_encode_event(data)))


class Stamp(msgspec.Struct, frozen=True):
    updated_at: datetime
    last_event: int


_stamp = msgspec.json.Decoder(Stamp)


def record_step(tx: StepTransaction, step: Step) -> tuple[datetime, int]:
    """Write a replay's decisions in one statement (``flows_record_step_v5``)
    and commit: the attempt that ended (or is retried), new activities (those
    leased to a worker are not due until their lease runs out), consumed
    signals, new and cancelled timers, new children, history, and the
    workflow row; NOTIFY the shard when new work is due now. Returns the
    stamp the step left on the row (updated_at, last_event)."""
    row = tx.commit_with("SELECT flows_record_step_v5(%s)", (Json(_step_encoder.encode(step)),))
    assert row is not None
    stamp = _stamp.decode(row[0])
    return stamp.updated_at, stamp.last_event


def record_steps(tx: StepTransaction, steps: list[Step]) -> list[tuple[datetime, int]]:
    """Write several steps (of workflows this transaction locked) and
    commit, in one round trip; returns each step's stamp."""
    rows = tx.commit_all(["SELECT flows_record_step_v5(%s)"] * len(steps),
                         tuple(Json(_step_encoder.encode(step)) for step in steps))
    stamps = []
    for row in rows:
        assert row is not None
        got = _stamp.decode(row[0])
        stamps.append((got.updated_at, got.last_event))
    return stamps


def woken_at(
    tx: StepTransaction, shard: str, now: datetime, signal_ids: list[UUID], timer_id: UUID | None = None
) -> Deferred:
    """Seconds before ``now`` (a claim's database time) that the latest of
    these signals arrived, or this timer fell due: read with the step's
    COMMIT (for the metrics of the step they woke)."""
    return tx.defer(
        "SELECT extract(epoch FROM %s::timestamptz - greatest("
        "(SELECT max(created_at) FROM signals WHERE workflow_name = %s AND id = ANY(%s::uuid[])),"
        " (SELECT fire_at FROM timers WHERE workflow_name = %s AND id = %s)))::float8",
        (now, shard, signal_ids, shard, timer_id),
    )
