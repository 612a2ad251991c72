"""The operator's side: what an operator (the console, the ``flows`` CLI,
the metrics endpoint, the supervisor) asks of a running system.

- ``workflows``: list and count workflows and dead letters, retry a failed
  one, prune old ones;
- ``detail``: one workflow in full (history, attempts, signals, timers,
  tasks), and its export;
- ``fleet``: the workers and the shards' queues, the metrics' gauges, and
  the supervisor's database work (a dead worker's leases, stale workers).

Each function takes what it reads from: an Engine (anything with
``shards`` and a ``connection()``, see ``Database``), or a connection of
the caller's. These, the engine and the worker are the only modules that
talk to the store (docs/layout.md).
"""

from __future__ import annotations

from typing import Any, ContextManager, Protocol


class Database(Protocol):
    """What the operator's functions need of an Engine: its shard count and
    a pooled connection (committed at the end of the block)."""

    shards: int

    def connection(self, timeout: float | None = None) -> ContextManager[Any]: ...
