"""Why a workflow is not moving, in one plain sentence.

Built from what the database holds about it (a ``WorkflowDetail``): its
row, its pending tasks (due or not, leased or not, by whom), its
activities' attempts and errors, its pending signals and timers, and which
live workers serve its shard. Pure: no I/O, the database's clock is
``detail.now``.
"""

from __future__ import annotations

from datetime import datetime

from flows.ops.detail import Activity, Task, WorkflowDetail
from flows.ops.fleet import DEFAULT_STALE_SECONDS

# A due task waiting longer than this while a live worker serves its shard
# is worth a remark: a worker claims due work within milliseconds.
SLOW_CLAIM_SECONDS = 5.0


def span(seconds: float) -> str:
    """A duration for people: ``8 ms``, ``2.4 s``, ``12 s``, ``3 min 20 s``, ``3 h 5 min``, ``2 d 4 h``."""
    seconds = abs(seconds)
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 10:
        return f"{seconds:.1f} s"
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min" + (f" {s % 60} s" if s % 60 else "")
    if s < 86400:
        return f"{s // 3600} h" + (f" {s % 3600 // 60} min" if s % 3600 // 60 else "")
    return f"{s // 86400} d" + (f" {s % 86400 // 3600} h" if s % 86400 // 3600 else "")


def clock(at: datetime, now: datetime) -> str:
    """A time for people, in UTC: ``14:02:05`` today, ``2024-05-01 14:02`` otherwise."""
    from datetime import UTC

    at, now = at.astimezone(UTC), now.astimezone(UTC)
    return at.strftime("%H:%M:%S") if at.date() == now.date() else at.strftime("%Y-%m-%d %H:%M")


def _ago(at: datetime, now: datetime) -> str:
    return f"{clock(at, now)} UTC, {span((now - at).total_seconds())} ago"


def _list(items: list[str]) -> str:
    return ", ".join(f"`{i}`" for i in items)


def why(detail: WorkflowDetail, *, stale_seconds: float = DEFAULT_STALE_SECONDS) -> str:
    """The sentence. A worker counts as serving the shard when its heartbeat
    row names the shard and is at most ``stale_seconds`` old."""
    d, now = detail, detail.now
    if d.status == "completed" and d.completed_at is not None:
        took = span((d.completed_at - d.created_at).total_seconds())
        return f"completed at {_ago(d.completed_at, now)}, {took} after it started"
    if d.status == "cancelled" and d.completed_at is not None:
        return f"cancelled at {_ago(d.completed_at, now)}"
    if d.status == "failed":
        at = d.completed_at or d.updated_at
        text = f"failed at {_ago(at, now)}: {d.error}"
        if any(x.retried_at is None for x in d.dead_letters):
            text += "; it is in the dead-letter queue until retried"
        return text
    live = [w.owner for w in d.workers if w.beat_age_seconds <= stale_seconds]
    no_worker = f"no worker serves shard `{d.shard}` (no live heartbeat names it)"
    serving = f"{'worker' if len(live) == 1 else 'workers'} {_list(live)}"

    replay = next((t for t in d.tasks if t.type == "workflow"), None)
    if replay is not None and replay.due_in_seconds <= 0:
        waited = -replay.due_in_seconds
        text = f"a replay step has been due for {span(waited)}"
        if not live:
            return f"{text} but {no_worker}"
        if waited > SLOW_CLAIM_SECONDS:
            return f"{text}; {serving} serve shard `{d.shard}` but have not taken it (busy, or stuck?)"
        return f"a replay step is due now; {serving} should take it at once"

    waiting = d.waiting_for or ""
    if waiting.startswith("activity:"):
        return _activity_sentence(d, waiting.split(":", 1)[1], live, no_worker, serving)
    if waiting.startswith("signal:"):
        return _signal_sentence(d, waiting.split(":", 1)[1], live, no_worker)
    if waiting == "timer":
        return _timer_sentence(d, live, no_worker, serving)
    if d.status == "pending":
        return "pending: not started yet"
    return ("running, but nothing is queued for it (no task, pending activity, awaited signal or timer):"
            " it cannot move on by itself")


def _activity_sentence(d: WorkflowDetail, name: str, live: list[str], no_worker: str, serving: str) -> str:
    now = d.now
    act: Activity | None = next((a for a in reversed(d.activities)
                                 if a.name == name and a.status in ("scheduled", "running")), None)
    if act is None:
        return f"waiting for activity `{name}`, but none is scheduled or running"
    task: Task | None = next((t for t in d.tasks if t.target_id == act.id), None)
    number, of = act.attempt + 1, act.max_attempts
    lead = f"activity `{name}` attempt {number} of {of}"
    if task is None:
        return f"{lead} has no task queued: no worker will run it"
    if task.lease_owner is not None and task.due_in_seconds > 0:
        current = act.attempts[-1] if act.attempts else None
        started = current.started_at if current is not None else None
        since = f" since {_ago(started, now)}" if started is not None else ""
        text = f"{lead} is running on `{task.lease_owner}`{since}; its lease ends in {span(task.due_in_seconds)}"
        if task.lease_owner not in live:
            text += (f", but `{task.lease_owner}` has no live heartbeat: once the lease ends the attempt"
                     " counts as lost and another worker runs it")
        return text
    if task.due_in_seconds > 0:
        failed = [a for a in act.attempts if a.outcome == "failed"]
        if failed:
            last = failed[-1]
            text = (f"activity `{name}` attempt {last.number} of {of} failed: {last.error}; next try in"
                    f" {span(task.due_in_seconds)} (at {clock(task.due_at, now)} UTC)")
        else:
            text = f"{lead} is due in {span(task.due_in_seconds)}"
        return text + (f", but {no_worker}" if not live else "")
    waited = -task.due_in_seconds
    if task.lease_owner is not None:
        text = (f"{lead}: the lease of `{task.lease_owner}` ran out {span(waited)} ago (the worker died, or the"
                " attempt outran its timeout)")
    else:
        text = f"{lead} has been due for {span(waited)}"
    if not live:
        return f"{text}, but {no_worker}"
    if waited > SLOW_CLAIM_SECONDS:
        return f"{text}; {serving} serve the shard but none has taken it (every activity slot busy?)"
    return f"{text}; {serving} should take it at once"


def _signal_sentence(d: WorkflowDetail, name: str, live: list[str], no_worker: str) -> str:
    now = d.now
    pending = d.pending_signals
    mine = [s for s in pending if s.name == name]
    if mine:
        return (f"signal `{name}` arrived at {_ago(mine[0].created_at, now)} but no replay step is queued to"
                " take it")
    text = f"waiting for signal `{name}` since {_ago(d.updated_at, now)}; none pending"
    rejected = [s for s in d.signals if s.name == name and s.rejected]
    if rejected:
        text += (f"; {len(rejected)} rejected, the last at {_ago(rejected[-1].consumed_at or now, now)}:"
                 f" its payload {rejected[-1].rejected}")
    others = sorted({s.name for s in pending})
    if others:
        text += (f" (pending, of other names: {_list(others)}; each waits until the workflow asks for it)")
    return text


def _timer_sentence(d: WorkflowDetail, live: list[str], no_worker: str, serving: str) -> str:
    now = d.now
    timer = next((t for t in reversed(d.timers) if not t.fired), None)
    if timer is None:
        return "waiting for a timer, but none is set"
    left = (timer.fire_at - now).total_seconds()
    if left > 0:
        text = f"sleeping on a durable timer until {clock(timer.fire_at, now)} UTC (in {span(left)})"
        return text + (f", but {no_worker}: it will fire late" if not live else "")
    text = f"the timer was due {span(-left)} ago (at {clock(timer.fire_at, now)} UTC)"
    if not live:
        return f"{text}, but {no_worker}"
    if -left > SLOW_CLAIM_SECONDS:
        return f"{text}; {serving} serve the shard but have not fired it (busy, or stuck?)"
    return f"{text}; {serving} should fire it at once"
