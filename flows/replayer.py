"""Replay an exported run against the code at hand, with no database.

The check before a deploy ("does my change break workflows in flight?"):
export runs with ``flows export`` (or ``Engine.export``), then replay them
with ``flows replay run.json --app MODULE`` (or ``replay_export``). The
replay is ``flows.context.replay`` over the recorded history, exactly what a
worker would do on the run's next wake-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable
from uuid import UUID

import msgspec

from flows import context, sharding
from flows.definitions import WorkflowDefinition, registered_workflows
from flows.errors import InvalidInput
from flows.ops.detail import EXPORT_FORMAT, event_step

_encoder = msgspec.json.Encoder()


@dataclass(frozen=True)
class ReplayReport:
    """The outcome of replaying one run. ``divergence`` (None when the code
    replays the run) is the first place the code parts from the record in
    a way that would fail the run in production; ``notes`` are differences
    that would not (a completed run whose output would now differ)."""

    workflow_name: str
    workflow_id: UUID
    recorded_status: str
    steps: int
    replay_status: str
    divergence: str | None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.divergence is None

    def describe(self) -> str:
        head = f"{self.workflow_name}/{self.workflow_id} ({self.recorded_status}, {self.steps} steps recorded)"
        if self.divergence is not None:
            return f"{head}: DIVERGES: {self.divergence}"
        text = f"{head}: replays ({self.replay_status})"
        return text + "".join(f"; note: {n}" for n in self.notes)


def _field(doc: dict[str, Any], key: str, kind: type) -> Any:
    value = doc.get(key)
    if not isinstance(value, kind):
        raise InvalidInput(f"not a flows export: {key!r} is missing or not a {kind.__name__}", path=key)
    return value


def replay_export(
    document: dict[str, Any], workflows: Iterable[WorkflowDefinition[Any, Any]] | None = None
) -> ReplayReport:
    """Replay an export (``Engine.export``'s document) against the workflow
    definitions given (default: every registered one). Raises InvalidInput
    when the document is not an export or its workflow is not defined."""
    if not isinstance(document, dict) or document.get("format") != EXPORT_FORMAT:
        raise InvalidInput(f"not a flows export (expected \"format\": \"{EXPORT_FORMAT}\")", path="format")
    row = _field(document, "workflow", dict)
    rows = _field(document, "history", list)
    try:
        shard, wid, tenant = row["name"], UUID(row["id"]), UUID(row["tenant_id"])
        recorded_status, version = row["status"], int(row["version"])
        events = [(event_step(e), e["event_type"], _encoder.encode(e["event_data"])) for e in rows]
        db_now = datetime.fromisoformat(document.get("exported_at") or rows[-1]["created_at"])
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise InvalidInput(f"not a flows export: a field is missing or malformed ({exc!r})") from None
    name = sharding.base_name(shard)
    definitions = {w.name: w for w in (registered_workflows() if workflows is None else workflows)}
    definition = definitions.get(name)
    if definition is None:
        raise InvalidInput(f"no workflow {name!r} is defined here (pass --app with the module that defines it;"
                           f" defined: {', '.join(sorted(definitions)) or 'none'})")
    steps = len({seq for seq, kind, _ in events if kind not in ("workflow_started", "workflow_completed",
                                                                 "workflow_failed", "workflow_cancelled")})

    def report(replay_status: str, divergence: str | None, notes: list[str] | None = None) -> ReplayReport:
        return ReplayReport(name, wid, recorded_status, steps, replay_status, divergence, notes or [])

    if version != definition.version:
        return report("not replayed", f"the run was recorded under version {version}, the code is version"
                                      f" {definition.version}")
    outcome = context.replay(
        definition, workflow_id=wid, workflow_name=shard, tenant_id=tenant,
        input=None if row.get("input") is None else _encoder.encode(row["input"]),
        events=events, signals=[], db_now=db_now,
    )
    error = outcome.error or ""
    if outcome.status == "failed" and error.startswith("NonDeterminismError"):
        return report("failed", error.split(": ", 1)[1])
    if outcome.status == "failed":
        if recorded_status == "failed":
            same = error == row.get("error")
            return report("failed", None, [] if same else [f"it fails otherwise now: {error}"])
        return report("failed", f"the replay fails after step {outcome.last_seq}: {error}")
    if recorded_status == "completed":
        if outcome.status == "running":
            return report("running", f"the run completed after step {max([0, *(s for s, _, _ in events)])}; the"
                                     f" code now goes on to step {outcome.last_seq} ({outcome.waiting_for})")
        recorded = _encoder.encode(row.get("output"))
        replayed = _encoder.encode(msgspec.json.decode(outcome.output or b"null"))
        notes = [] if recorded == replayed else [f"its output would now be {replayed.decode()[:200]}"]
        return report("completed", None, notes)
    notes = []
    if recorded_status == "running" and outcome.status == "running" and outcome.waiting_for != row.get("waiting_for"):
        notes.append(f"it waited for {row.get('waiting_for')}, the code now waits for {outcome.waiting_for}"
                     " (a step not recorded yet: allowed)")
    if recorded_status == "failed":
        notes.append(f"the run failed ({row.get('error')}); the code now gets past it ({outcome.status}):"
                     " `flows retry` would run it on")
    return report(outcome.status, None, notes)
