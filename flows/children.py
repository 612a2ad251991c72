"""Carrying a step's intents to other shards: child workflows.

A parent and its child live on two shards, and no transaction touches two.
The parent's step writes a `children` row and a `child` task in its own
shard; a worker serving that shard leases the task and carries it: it
starts the child in the child's shard (idempotently: the child's id is
fixed by the parent's step), then drops the task in the parent's. The
child's end leaves a `parent` task in the child's shard, carried the same
way: the end recorded at the parent's step (idempotently), then the task
dropped. A crash between two transactions leaves the task, whose lease runs
out and which is carried again; each transaction is safe to repeat.

When a parent ends while a child with the 'cancel' policy may still run,
its end makes the `child` task due again (and takes the token of a
delivery in flight), so the child is cancelled even if it was being
started at that moment.
"""

from __future__ import annotations

import logging

from flows import metrics, sharding, store
from flows.store import carry as carry_store
from flows.store import client as client_store

log = logging.getLogger("flows.worker")


def carry(conn: store.Conn, task: carry_store.Carry) -> None:
    """Carry one leased `child` or `parent` task; each statement is a
    transaction of its own, on one shard."""
    info = task.info
    if isinstance(info, carry_store.ChildInfo):
        _carry_child(conn, task, info)
    elif isinstance(info, carry_store.EndInfo):
        carry_store.child_ended(conn, parent_shard=info.parent_name, parent_id=info.parent_id, child_id=info.child_id,
                          status=info.status, output=info.output, error=info.error)
        carry_store.parent_told(conn, task)
    else:  # its row is gone (the workflow was deleted by hand): nothing to carry
        if task.type == "child":
            carry_store.child_carried(conn, task, None)
        else:
            carry_store.parent_told(conn, task)


def _carry_child(conn: store.Conn, task: carry_store.Carry, info: carry_store.ChildInfo) -> None:
    parent = (task.shard, info.parent_id, info.step)
    if info.parent_status != "running" and info.parent_close == "cancel" and info.status in ("starting", "running"):
        before = carry_store.cancel_child(
            conn, shard=info.child_name, child_id=info.child_id, tenant_id=info.tenant_id, version=info.version,
            parent=parent, reason=f"cancelled: its parent {sharding.base_name(task.shard)}/{info.parent_id} ended",
        )
        log.info("child-cancelled parent=%s child=%s/%s was=%s", info.parent_id, info.child_name, info.child_id,
                 before)
        carry_store.child_carried(conn, task, "cancelled")
        return
    if info.status != "starting":
        carry_store.child_carried(conn, task, None)
        return
    answer = store.run(conn, client_store.start_workflow(
        shard=info.child_name, workflow_id=info.child_id, tenant_id=info.tenant_id, version=info.version,
        input=bytes(info.input), parent=parent,
    ))
    if answer == "taken":
        error = f"workflow id {info.child_id} is already used by another workflow"
        log.warning("child-start-refused parent=%s child=%s/%s: %s", info.parent_id, info.child_name,
                    info.child_id, error)
        carry_store.child_ended(conn, parent_shard=task.shard, parent_id=info.parent_id, child_id=info.child_id,
                          status="failed", output=None, error=error)
        carry_store.child_carried(conn, task, None)
        return
    if answer == "created":
        metrics.workflow_started(sharding.base_name(info.child_name))
    carry_store.child_carried(conn, task, "running")
