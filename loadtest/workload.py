"""Driving workflows through the public flows API: batches of starts, paced signals."""

from __future__ import annotations

import threading
import time
from typing import Any, Iterable

import flows
from flows import sharding

from loadtest import db

NOTIFY_WAIT_SECONDS = 0.2  # how often the listener thread looks at its stop flag


def start_batch(
    engine: flows.Engine, dsn: str, workflow: Any, inputs: Iterable[Any]
) -> tuple[list[flows.Execution], float]:
    """Start one workflow per input in a single transaction, so the fleet sees
    them all at once; return them and the wall-clock time of the commit."""
    with db.connect(dsn) as conn:
        with conn.transaction():
            runs = [engine.start(workflow, x, conn=conn) for x in inputs]
        committed = time.time()
    return runs, committed


class DoneListener:
    """Records when each ``flows-done`` notification of the given shards
    arrives: (channel, monotonic time). Runs on a thread with its own
    connection, so receipt is not delayed by the sender's work."""

    def __init__(self, dsn: str, shards: list[str]) -> None:
        self.channels = {sharding.channel(s, "flows-done"): s for s in shards}
        self.received: list[tuple[str, float]] = []
        self._conn = db.connect(dsn, autocommit=True)
        for name in self.channels:
            db.listen(self._conn, name)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="loadtest-listener", daemon=True)

    def __enter__(self) -> DoneListener:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2 * NOTIFY_WAIT_SECONDS + 1.0)
        self._conn.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            for note in self._conn.notifies(timeout=NOTIFY_WAIT_SECONDS):
                self.received.append((self.channels.get(note.channel, note.channel), time.monotonic()))

    def match(self, sent: list[tuple[str, float]]) -> list[float | None]:
        """For each (shard, monotonic send time), the delay to the first
        unused notification of that shard received after it (None if none)."""
        by_shard: dict[str, list[float]] = {}
        for shard, at in sorted(self.received, key=lambda r: r[1]):
            by_shard.setdefault(shard, []).append(at)
        out: list[float | None] = []
        for shard, t in sent:
            times = by_shard.get(shard, [])
            i = next((k for k, at in enumerate(times) if at >= t), None)
            out.append(None if i is None else times.pop(i) - t)
        return out
