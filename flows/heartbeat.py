"""A worker's heartbeat: its row in worker_heartbeats, kept fresh from a
thread and a database connection of its own, so it beats on while the loop
is busy, every pooled connection is in use, or activities finish at
shutdown: a live worker is never taken for dead for being busy.

Each beat is one statement that also says whether another worker serves the
same shards (then our steps NOTIFY them), whether some worker has been
silent past the stale limit (then its leases are released here, so a fleet
without a supervisor recovers a dead worker's work too), and whether a task
of ours is due that no notification announced (the safety net).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any, Callable

from flows import metrics, store
from flows.store import fleet as fleet_store
from flows.store import leases as lease_store

log = logging.getLogger("flows.worker")

# How often a worker refreshes its heartbeat (0 = never); a worker silent for
# FLOWS_STALE_SECONDS is taken for dead, by supervisors and by other workers.
HEARTBEAT_SECONDS = float(os.environ.get("FLOWS_HEARTBEAT_SECONDS", "10"))
STALE_SECONDS = float(os.environ.get("FLOWS_STALE_SECONDS", "30"))
HOST = socket.gethostname()
# A beat's statements are cut short well within the stale limit.
BEAT_STATEMENT_TIMEOUT_SECONDS = 5.0


class Heartbeat:
    """Beats every ``seconds`` for ``owner`` until ``stop()``.

    ``on_due`` is called when a task of ours is due that may not have been
    announced; ``alone`` tells whether no other live worker shares our shards."""

    def __init__(
        self,
        *,
        owner: str,
        serves: lease_store.Serves,
        shard_group: str,
        seconds: float,
        stale_seconds: float,
        on_due: Callable[[], None],
    ) -> None:
        self.owner = owner
        self.serves = serves
        self.shard_group = shard_group
        self.seconds = seconds
        self.stale_seconds = stale_seconds
        self.on_due = on_due
        self.alone = False  # no other registered worker serves our shards
        self.was_alone = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: Any = None

    def start(self, dsn: str) -> None:
        if self.seconds > 0:
            # One connection of its own (a pool of one: it reconnects by itself).
            self._pool = store.open_pool(
                dsn, min_size=1, max_size=1, name="flows-heartbeat", timeout=max(1.0, self.stale_seconds / 3),
                statement_timeout=min(BEAT_STATEMENT_TIMEOUT_SECONDS, max(0.5, self.stale_seconds / 3)),
            )
            self._thread = threading.Thread(target=self._loop, name="flows-heartbeat", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        registered = failing = False
        while True:
            try:
                with self._pool.connection() as conn:
                    beat = (fleet_store.beat_worker(conn, self.owner, self.serves, self.stale_seconds)
                            if registered else None)
                    if beat is None:
                        shared = fleet_store.register_worker(
                            conn, owner=self.owner, pid=os.getpid(), host=HOST, shard_group=self.shard_group,
                            shards=list(self.serves.shards),
                        )
                        registered = True
                    else:
                        shared = beat.shared
                        if beat.stale:
                            self._release_stale(conn)
                        if beat.due:  # a notification may have been missed: the loop looks now
                            self.on_due()
                self.alone = not shared and not self._stop.is_set()
                self.was_alone = self.was_alone or self.alone
                failing = False
            except Exception as exc:  # noqa: BLE001 - the loop reports the database; keep beating
                if not failing:
                    log.warning("heartbeat-failed owner=%s error=%s", self.owner, type(exc).__name__)
                failing = True
            if self._stop.wait(self.seconds):
                return

    def _release_stale(self, conn: Any) -> None:
        for owner, released in fleet_store.release_stale_workers(conn, self.stale_seconds, [self.owner]):
            log.warning("stale-worker-released owner=%s leases=%s by=%s", owner, released, self.owner)
            metrics.leases_released(released, "stale")

    def stop(self) -> None:
        """Stop beating and drop our row (the worker is leaving)."""
        self.alone = False
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(5.0)
        try:
            with self._pool.connection(timeout=5.0) as conn:
                fleet_store.unregister_worker(conn, self.owner)
        except Exception as exc:  # noqa: BLE001 - a supervisor or another worker sweeps the stale row later
            log.warning("heartbeat-unregister-failed owner=%s error=%s", self.owner, type(exc).__name__)
        finally:
            self._pool.close()
