"""One workflow in full: what ``Engine.describe`` and ``flows show`` print,
the console's workflow page, and the export ``flows replay`` reads.

Everything is read in one statement per table (``store.ops.workflow_document``)
as whole rows, so columns added later show up (in ``extra``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import msgspec

from flows import codec, sharding, store
from flows.errors import WorkflowNotFound
from flows.ids import base_name, parse_uuid, tenant_filter
from flows.ops import Database
from flows.store import ops as ops_store
from flows.store import steps as step_store

EXPORT_FORMAT = "flows-export/1"


@dataclass(frozen=True)
class Event:
    """A history event. ``seq`` is its ``sequence_num``; ``step`` the replay
    step it belongs to (the ``step`` column where the schema has one)."""

    id: UUID
    seq: int
    step: int
    type: str
    data: Any
    created_at: datetime
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Attempt:
    """One attempt of an activity. ``started_at`` is when it was due for a
    retried attempt (or the recorded start where the schema keeps one)."""

    number: int  # 1-based
    outcome: str  # scheduled | running | failed | completed | cancelled
    started_at: datetime | None
    ended_at: datetime | None
    error: str | None = None
    retry_at: datetime | None = None  # when the next attempt is due, after a failure

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None or self.ended_at is None:
            return None
        return (self.ended_at - self.started_at).total_seconds()


@dataclass(frozen=True)
class Activity:
    id: UUID
    name: str
    seq: int
    status: str
    input: Any
    output: Any
    error: str | None
    attempt: int  # failed attempts so far (the activities.attempt column)
    max_attempts: int
    next_retry_at: datetime | None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    attempts: list[Attempt]
    extra: dict[str, Any] = field(default_factory=dict)  # columns added since (heartbeat details...)


@dataclass(frozen=True)
class Signal:
    id: UUID
    name: str
    payload: Any
    consumed: bool
    consumed_seq: int | None
    created_at: datetime
    consumed_at: datetime | None
    rejected: str | None = None  # why its wait could not take it (then consumed by no step)


@dataclass(frozen=True)
class Timer:
    id: UUID
    seq: int
    fire_at: datetime
    fired: bool
    fired_at: datetime | None
    created_at: datetime


@dataclass(frozen=True)
class Task:
    id: UUID
    type: str  # workflow | activity | timer
    target_id: UUID | None
    due_at: datetime
    due_in_seconds: float  # < 0: due for that long
    lease_owner: str | None
    deliveries: int
    created_at: datetime


@dataclass(frozen=True)
class ShardWorker:
    owner: str
    host: str
    pid: int
    last_beat: datetime
    beat_age_seconds: float


@dataclass(frozen=True)
class DeadLetterEntry:
    id: UUID
    error: str
    created_at: datetime
    retried_at: datetime | None


@dataclass(frozen=True)
class WorkflowDetail:
    """Everything recorded about one workflow, read in one statement, with
    the database's clock at that moment (``now``)."""

    name: str  # the base name
    shard: str
    id: UUID
    tenant_id: UUID
    version: int
    status: str
    input: Any
    output: Any
    error: str | None
    waiting_for: str | None
    sequence_num: int
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    now: datetime
    history: list[Event]
    activities: list[Activity]
    signals: list[Signal]
    timers: list[Timer]
    tasks: list[Task]
    dead_letters: list[DeadLetterEntry]
    workers: list[ShardWorker]  # workers whose heartbeat row names this shard (alive or not)

    @property
    def pending_signals(self) -> list[Signal]:
        return [s for s in self.signals if not s.consumed]


def _time(value: Any) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _take(row: dict[str, Any], known: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in known}


_EVENT_COLUMNS = ("workflow_name", "id", "workflow_id", "tenant_id", "sequence_num", "step", "event_type",
                  "event_data", "created_at")
_ACTIVITY_COLUMNS = ("workflow_name", "id", "workflow_id", "tenant_id", "name", "sequence_num", "status", "input",
                     "output", "error", "attempt", "max_attempts", "next_retry_at", "created_at", "updated_at",
                     "completed_at")


def event_step(row: dict[str, Any]) -> int:
    """The replay step an event row belongs to: its ``step`` column where
    the schema has one, else ``sequence_num`` (which was the step)."""
    step = row.get("step")
    return int(row["sequence_num"] if step is None else step)


def _event(row: dict[str, Any]) -> Event:
    return Event(UUID(row["id"]), int(row["sequence_num"]), event_step(row), row["event_type"], row["event_data"],
                 datetime.fromisoformat(row["created_at"]), _take(row, _EVENT_COLUMNS))


def _attempts(row: dict[str, Any], events: list[Event]) -> list[Attempt]:
    """The attempts of one activity, from its row and the history events of
    its step: each ``activity_retrying`` event is a failed attempt (with its
    error and the delay before the next)."""
    step = int(row["sequence_num"])
    mine = [e for e in events if e.step == step and isinstance(e.data, dict) and e.data.get("name") == row["name"]]
    scheduled = next((e.created_at for e in mine if e.type == "activity_scheduled"), _time(row["created_at"]))
    attempts: list[Attempt] = []
    start: datetime | None = scheduled
    for e in mine:
        if e.type != "activity_retrying":
            continue
        retry_at = e.created_at + timedelta(seconds=float(e.data.get("retry_in_seconds", 0)))
        ran = e.data.get("duration_seconds")  # as its worker measured, where recorded
        began = start if ran is None else e.created_at - timedelta(seconds=float(ran))
        attempts.append(Attempt(len(attempts) + 1, "failed", began, e.created_at, e.data.get("error"), retry_at))
        start = retry_at
    status = row["status"]
    started = next((_time(v) for k, v in row.items() if k not in _ACTIVITY_COLUMNS and k.endswith("started_at")
                    and isinstance(v, str)), None)
    if status == "running":
        start = started or _time(row["updated_at"])  # marked running when claimed
    if status in ("completed", "failed"):
        ended = _time(row["completed_at"])
        error = row["error"] if status == "failed" else None
        last = next((e for e in mine if e.type == f"activity_{status}"), None)
        ran = None if last is None else last.data.get("duration_seconds")
        began = started or (start if ran is None or ended is None else ended - timedelta(seconds=float(ran)))
        attempts.append(Attempt(len(attempts) + 1, status, began, ended, error))
    elif status in ("scheduled", "running"):
        attempts.append(Attempt(len(attempts) + 1, status, start, None))
    elif status == "cancelled":
        attempts.append(Attempt(len(attempts) + 1, status, start, _time(row["updated_at"])))
    return attempts


def _activity(row: dict[str, Any], events: list[Event]) -> Activity:
    return Activity(
        UUID(row["id"]), row["name"], int(row["sequence_num"]), row["status"], row["input"], row["output"],
        row["error"], int(row["attempt"]), int(row["max_attempts"]), _time(row["next_retry_at"]),
        datetime.fromisoformat(row["created_at"]), datetime.fromisoformat(row["updated_at"]),
        _time(row["completed_at"]), _attempts(row, events), _take(row, _ACTIVITY_COLUMNS),
    )


def detail_from_document(doc: dict[str, Any]) -> WorkflowDetail:
    """A WorkflowDetail from the JSON of ``workflow_document`` (also
    the shape of an export)."""
    w = doc["workflow"]
    events = [_event(e) for e in doc.get("history", [])]
    return WorkflowDetail(
        name=sharding.base_name(w["name"]), shard=w["name"], id=UUID(w["id"]), tenant_id=UUID(w["tenant_id"]),
        version=int(w["version"]), status=w["status"], input=w.get("input"), output=w.get("output"),
        error=w.get("error"), waiting_for=w.get("waiting_for"), sequence_num=int(w["sequence_num"]),
        created_at=datetime.fromisoformat(w["created_at"]), updated_at=datetime.fromisoformat(w["updated_at"]),
        completed_at=_time(w.get("completed_at")), now=datetime.fromisoformat(doc["now"]), history=events,
        activities=[_activity(a, events) for a in doc.get("activities", [])],
        signals=[Signal(UUID(s["id"]), s["signal_name"], s.get("payload"), bool(s["consumed"]), s.get("consumed_seq"),
                        datetime.fromisoformat(s["created_at"]), _time(s.get("consumed_at")), s.get("rejected"))
                 for s in doc.get("signals", [])],
        timers=[Timer(UUID(t["id"]), int(t["sequence_num"]), datetime.fromisoformat(t["fire_at"]), bool(t["fired"]),
                      _time(t.get("fired_at")), datetime.fromisoformat(t["created_at"]))
                for t in doc.get("timers", [])],
        tasks=[Task(UUID(q["id"]), q["task_type"], None if q.get("target_id") is None else UUID(q["target_id"]),
                    datetime.fromisoformat(q["visibility_timeout"]), float(q["due_in_seconds"]), q.get("lease_owner"),
                    int(q.get("deliveries") or 0), datetime.fromisoformat(q["created_at"]))
               for q in doc.get("tasks", [])],
        dead_letters=[DeadLetterEntry(UUID(d["id"]), d["error"], datetime.fromisoformat(d["created_at"]),
                                      _time(d.get("retried_at")))
                      for d in doc.get("dead_letters", [])],
        workers=[ShardWorker(h["owner"], h["host"], int(h["pid"]), datetime.fromisoformat(h["last_beat"]),
                             float(h["beat_age_seconds"]))
                 for h in doc.get("workers", [])],
    )


def workflow_document(db: Database, name: str, workflow_id: object, tenant_id: object) -> dict[str, Any]:
    """Everything recorded about one workflow, as the JSON document the
    store reads (WorkflowNotFound if this tenant (ANY_TENANT: any) has none)."""
    base = base_name(name)
    wid = parse_uuid(workflow_id)
    tenant = tenant_filter(tenant_id)
    with store.wrapped(), db.connection() as conn:
        text = ops_store.workflow_document(conn, sharding.sharded_name(base, wid, db.shards), wid, tenant)
    if text is None:
        raise WorkflowNotFound(f"no workflow {base}/{wid}")
    return msgspec.json.decode(text)  # type: ignore[no-any-return]


def describe(db: Database, name: str, workflow_id: object, tenant_id: object) -> WorkflowDetail:
    """``Engine.describe``."""
    return detail_from_document(workflow_document(db, name, workflow_id, tenant_id))


def recorded_events(db: Database, shard: str, workflow_id: UUID) -> list[tuple[int, str, Any]]:
    """The current run's history as its replay reads it: (step, type, data)
    in the order written (``flows show --json``)."""
    with store.wrapped(), db.connection() as conn:
        state = step_store.replay_state(conn, shard, workflow_id)
    return [(seq, kind, codec.decode(data)) for seq, kind, data in (state.events if state is not None else None) or []]


def export_document(doc: dict[str, Any]) -> dict[str, Any]:
    """The export of a run: its workflow row, history, activities, signals
    and timers, whole rows as the database holds them."""
    return {
        "format": EXPORT_FORMAT,
        "exported_at": doc["now"],
        "workflow": doc["workflow"],
        "history": doc["history"],
        "activities": doc["activities"],
        "signals": doc["signals"],
        "timers": doc["timers"],
    }


def export(db: Database, name: str, workflow_id: object, tenant_id: object) -> dict[str, Any]:
    """``Engine.export``."""
    return export_document(workflow_document(db, name, workflow_id, tenant_id))
