"""What an operator asks of a running system: list and inspect workflows,
retry failed ones, prune old ones, export a run.

These are the bodies of the ``Engine`` methods of the same names (the
console and the ``flows`` CLI call them there). Reads take ``tenant_id``:
``ANY_TENANT`` (an operator's view of every tenant) or one tenant's id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final
from uuid import UUID

import msgspec
import uuid6

from flows import codec, sharding, store
from flows.errors import InvalidInput, WorkflowNotFailed, WorkflowNotFound

if TYPE_CHECKING:
    from flows.engine import Engine


class _AnyTenant:
    def __repr__(self) -> str:
        return "ANY_TENANT"


ANY_TENANT: Final[Any] = _AnyTenant()
"""Pass as ``tenant_id`` to see every tenant's workflows (an operator's view)."""

STATUSES = ("pending", "running", "completed", "failed", "cancelled")
ENDED = ("completed", "failed", "cancelled")
MAX_PAGE = 1000
EXPORT_FORMAT = "flows-export/1"
DEFAULT_STALE_SECONDS = 30.0  # as the supervisor's FLOWS_STALE_SECONDS


def tenant_filter(tenant_id: object) -> UUID | None:
    """``ANY_TENANT`` -> None (no filter); None -> the default tenant; else the UUID."""
    from flows.engine import DEFAULT_TENANT_ID, parse_uuid

    if tenant_id is ANY_TENANT:
        return None
    return DEFAULT_TENANT_ID if tenant_id is None else parse_uuid(tenant_id, "tenant_id")


def base_name(name: object) -> str:
    """A workflow's base name, also from its sharded name (``x-shard-2``)."""
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"workflow name must be a non-empty string, got {name!r}")
    return sharding.base_name(name)


# -- the list ----------------------------------------------------------------------


@dataclass(frozen=True)
class WorkflowPage:
    """One page of ``Engine.list_workflows``; pass ``next_cursor`` as
    ``after`` for the next (None: this was the last)."""

    workflows: list[store.WorkflowSummary]
    next_cursor: str | None


def encode_cursor(row: store.WorkflowSummary) -> str:
    return f"{row.created_at.isoformat()}_{row.id}"


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    at, _, wid = cursor.rpartition("_")
    try:
        return datetime.fromisoformat(at), UUID(wid)
    except ValueError:
        raise InvalidInput(f"after is not a cursor from a previous page: {cursor!r}") from None


def check_status(status: str | None) -> str | None:
    if status is not None and status not in STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
    return status


def check_time(value: object, what: str) -> datetime | None:
    """A timezone-aware datetime (an ISO 8601 string is parsed; without an
    offset it is taken as UTC)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidInput(f"{what} is not an ISO 8601 time: {value!r}") from None
    if not isinstance(value, datetime):
        raise InvalidInput(f"{what} must be a datetime, got {value!r}")
    if value.tzinfo is None:
        from datetime import UTC

        value = value.replace(tzinfo=UTC)
    return value


def check_limit(limit: object, maximum: int = MAX_PAGE) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= maximum:
        raise InvalidInput(f"limit must be an integer within 1..{maximum}, got {limit!r}")
    return limit


def shards_for(engine: Engine, conn: Any, name: str | None) -> list[str]:
    """The shard names to read: the name's shards, or every name in use."""
    if name is None or name == "":
        return store.shard_names(conn)
    return sharding.all_shard_names(base_name(name), engine.shards)


# -- one workflow, in full ---------------------------------------------------------


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
    """A WorkflowDetail from the JSON of ``store.workflow_document`` (also
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


def workflow_document(engine: Engine, name: str, workflow_id: object, tenant_id: object) -> dict[str, Any]:
    from flows.engine import parse_uuid

    base = base_name(name)
    wid = parse_uuid(workflow_id)
    tenant = tenant_filter(tenant_id)
    with store.wrapped(), engine.connection() as conn:
        text = store.workflow_document(conn, engine.shard_of(base, wid), wid, tenant)
    if text is None:
        raise WorkflowNotFound(f"no workflow {base}/{wid}")
    return msgspec.json.decode(text)  # type: ignore[no-any-return]


# -- export ---------------------------------------------------------------------------


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


# -- the fleet ------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardState:
    """One shard's queue and who serves it."""

    shard: str
    tasks: int
    due: int
    leased: int
    oldest_due_seconds: float | None
    workers: list[str]  # owners of live workers serving it


@dataclass(frozen=True)
class Fleet:
    now: datetime
    stale_seconds: float
    workers: list[store.FleetWorker]
    shards: list[ShardState]

    def alive(self, worker: store.FleetWorker) -> bool:
        return worker.beat_age_seconds <= self.stale_seconds


def fleet(engine: Engine, stale_seconds: float) -> Fleet:
    with store.wrapped(), engine.connection() as conn:
        now = store.database_now(conn)
        workers = store.fleet_workers(conn)
        names = sorted(set(store.shard_names(conn)) | {s for w in workers for s in w.shards})
        queues = store.shard_queues(conn, names)
    serving: dict[str, list[str]] = {}
    for w in workers:
        if w.beat_age_seconds <= stale_seconds:
            for s in w.shards:
                serving.setdefault(s, []).append(w.owner)
    shards = [ShardState(q.shard, q.tasks, q.due, q.leased, q.oldest_due_seconds, serving.get(q.shard, []))
              for q in queues]
    return Fleet(now, stale_seconds, workers, shards)


# -- retry ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryResult:
    """What ``Engine.retry`` did: the history events it dropped (the end,
    and the failed activity's step when an activity's failure ended it)."""

    workflow_id: UUID
    workflow_name: str
    dropped_events: int
    dropped_step: int | None  # the failed activity's step, re-run from scratch
    reason: str


_ACTIVITY_FAILED_ERROR = re.compile(r"^ActivityFailed: activity (.+) failed after \d+ attempt")


def plan_retry(error: str | None, events: list[dict[str, Any]]) -> tuple[list[UUID], list[UUID], int | None, str]:
    """Which events and activities a retry drops, from a failed workflow's
    error and history rows: (event ids, activity ids, dropped step, why).

    - The end event (``workflow_failed``) always goes.
    - When the failure is an activity that ran out of attempts (the error
      is that ``ActivityFailed`` and the last step recorded is that
      activity's failure), that step goes too, with its activity row: the
      replay schedules it again with fresh attempts.
    - Otherwise (an exception in workflow code, a NonDeterminismError)
      nothing else goes: the replay runs the recorded history again under
      the code deployed now, which either gets past the failure (a fixed
      bug, a compatible change) or fails again the same way."""
    drop_events = [UUID(e["id"]) for e in events if e["event_type"] == "workflow_failed"]
    steps = [e for e in events if e["event_type"] not in ("workflow_failed", "workflow_started")]
    match = _ACTIVITY_FAILED_ERROR.match(error or "")
    if match and steps:
        last = max(event_step(e) for e in steps)
        at_last = [e for e in steps if event_step(e) == last]
        failed = [e for e in at_last if e["event_type"] == "activity_failed"]
        if failed and failed[-1]["event_data"].get("name") == match.group(1):
            activity_ids = [UUID(e["event_data"]["activity_id"]) for e in at_last
                            if e["event_type"] == "activity_scheduled"]
            drop_events += [UUID(e["id"]) for e in at_last]
            return drop_events, activity_ids, last, (
                f"activity {match.group(1)} (step {last}) dropped: it runs again with fresh attempts")
    if (error or "").startswith("NonDeterminismError"):
        return drop_events, [], None, "history kept: the code deployed now replays it again"
    return drop_events, [], None, "history kept: the workflow code runs again from its last recorded step"


def retry(engine: Engine, name: str, workflow_id: object, tenant_id: object) -> RetryResult:
    from flows.engine import parse_uuid

    base = base_name(name)
    wid = parse_uuid(workflow_id)
    tenant = tenant_filter(tenant_id)
    shard = engine.shard_of(base, wid)
    with store.wrapped(), engine.connection() as conn, conn.transaction():
        found = store.get_workflow_for_update(conn, shard, wid, tenant)
        if found is None:
            raise WorkflowNotFound(f"no workflow {base}/{wid}")
        owner_tenant, status, error, version = found
        if status != "failed":
            raise WorkflowNotFailed(f"workflow {base}/{wid} is {status}; only a failed workflow can be retried")
        events, activities, step, reason = plan_retry(error, store.history_rows(conn, shard, wid))
        store.delete_events(conn, shard, wid, events)
        if activities:
            store.delete_activities(conn, shard, wid, activities)
        store.reopen_workflow(conn, shard, wid)
        store.mark_dead_letters_retried(conn, shard, wid)
        store.enqueue_workflow_task(conn, shard, wid, owner_tenant, uuid6.uuid7(), version)
    return RetryResult(wid, base, len(events), step, reason)


# -- prune --------------------------------------------------------------------------------


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` as seconds."""
    match = _DURATION.match(text or "")
    if not match:
        raise InvalidInput(f"a duration is a number and a unit (s, m, h, d, w), like 30d or 12h; got {text!r}")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def prune(engine: Engine, older_than_seconds: float, name: str | None, batch_size: int) -> int:
    if isinstance(older_than_seconds, bool) or not isinstance(older_than_seconds, (int, float)) \
            or not older_than_seconds >= 0:
        raise InvalidInput(f"older_than_seconds must be a number >= 0, got {older_than_seconds!r}")
    check_limit(batch_size, 100_000)
    total = 0
    with store.wrapped(), engine.connection() as conn:
        for shard in shards_for(engine, conn, name):
            while True:  # one transaction a batch: never a long lock
                n = store.prune_batch(conn, shard, older_than_seconds=float(older_than_seconds), limit=batch_size)
                total += n
                if n < batch_size:
                    break
    return total


def decode_json(text: str, what: str) -> Any:
    """JSON typed by a person (a signal body): InvalidInput naming it if malformed."""
    try:
        return codec.decode(text)
    except InvalidInput as exc:
        raise InvalidInput(f"{what} is not JSON: {exc}", path=what) from None

