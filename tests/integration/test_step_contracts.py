"""A step function keeps the contract its callers rely on: a worker of an
older release, still running after ``flows migrate`` during a rolling
deploy, records its steps through the name it knows.

Migration 053 made ``flows_record_step_v4`` find the ended attempt's
activity by its step (``activity.seq``), which workers from before 053 do
not send: their steps then updated no activity row, and nothing said so.
056 gives that contract a new name (``flows_record_step_v5``) and v4 takes
both payloads again."""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
import pytest

SHARD = "contract-shard-0"
TENANT = uuid.UUID(int=0)


def workflow_with_running_activity(db: psycopg.Connection[Any]) -> tuple[uuid.UUID, uuid.UUID]:
    """A workflow at step 1, whose activity (step 1) is running."""
    wid, aid = uuid.uuid4(), uuid.uuid4()
    db.execute("INSERT INTO workflows (name, id, tenant_id, status, sequence_num, waiting_for, last_event)"
               " VALUES (%s, %s, %s, 'running', 1, 'activity', 1)", (SHARD, wid, TENANT))
    db.execute("INSERT INTO history_events (workflow_name, id, workflow_id, tenant_id, sequence_num, step,"
               " event_type, event_data) VALUES (%s, %s, %s, %s, 1, 0, 'workflow_started', '{}')",
               (SHARD, uuid.uuid4(), wid, TENANT))
    db.execute("INSERT INTO activities (workflow_name, id, workflow_id, tenant_id, name, sequence_num, status,"
               " max_attempts, started_at) VALUES (%s, %s, %s, %s, 'charge', 1, 'running', 3, now())",
               (SHARD, aid, wid, TENANT))
    return wid, aid


def step(wid: uuid.UUID, aid: uuid.UUID, *, with_seq: bool) -> str:
    """A step recording that the activity completed, as flows/store.py
    encodes it: before 053 the ended attempt carried no ``seq``."""
    ended: dict[str, Any] = {"id": str(aid), "status": "completed", "attempt": 0}
    if with_seq:
        ended["seq"] = 1
    ended["output"] = {"charged": 42}
    return json.dumps({
        "shard": SHARD, "workflow_id": str(wid), "tenant_id": str(TENANT), "version": 1, "status": "running",
        "seq": 1, "waiting_for": "signal:shipped", "activity": ended,
        "events": [{"id": str(uuid.uuid4()), "seq": 1, "kind": "activity_completed",
                    "data": {"name": "charge", "output": {"charged": 42}, "attempt": 0}}],
        "channel": f"flows:{SHARD}",
    })


@pytest.mark.parametrize(("function", "with_seq"), [
    ("flows_record_step_v4", False),  # a worker from before migration 053
    ("flows_record_step_v4", True),  # the previous release (053-055)
    ("flows_record_step_v5", True),  # this release
], ids=["v4-before-053", "v4-previous-release", "v5-current"])
def test_a_recorded_step_completes_its_activity_whichever_caller(
    db: psycopg.Connection[Any], function: str, with_seq: bool
) -> None:
    wid, aid = workflow_with_running_activity(db)
    with db.transaction():
        db.execute("SELECT 1 FROM workflows WHERE name = %s AND id = %s FOR UPDATE", (SHARD, wid))
        row = db.execute(f"SELECT {function}(%s::jsonb)", (step(wid, aid, with_seq=with_seq),)).fetchone()
    assert row is not None and set(json.loads(row[0])) == {"updated_at", "last_event"}
    activity = db.execute("SELECT status, output, completed_at IS NOT NULL FROM activities"
                          " WHERE workflow_name = %s AND id = %s", (SHARD, aid)).fetchone()
    assert activity == ("completed", {"charged": 42}, True), \
        f"{function} called {'with' if with_seq else 'without'} activity.seq left the activity {activity}"
    assert db.execute("SELECT sequence_num, event_type, step FROM history_events WHERE workflow_id = %s"
                      " ORDER BY sequence_num", (wid,)).fetchall() == [
        (1, "workflow_started", 0), (2, "activity_completed", 1)]
    assert db.execute("SELECT waiting_for, last_event FROM workflows WHERE name = %s AND id = %s",
                      (SHARD, wid)).fetchone() == ("signal:shipped", 2)
