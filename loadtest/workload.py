"""Starting workflows through the public flows API: all at once, or paced."""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Sequence

import flows

from loadtest import db


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


PACED_BATCH_SECONDS = 0.1  # paced starts go in one small transaction per this much time


def start_paced(
    engine: flows.Engine, dsn: str, workflow: Any, inputs: Sequence[Any], per_second: float,
    check: Callable[[], None],
) -> list[flows.Execution]:
    """Start the workflows at ``per_second``, a small transaction every
    PACED_BATCH_SECONDS; ``check()`` runs between batches (the deadline)."""
    size = max(1, round(per_second * PACED_BATCH_SECONDS))
    runs: list[flows.Execution] = []
    begin = time.monotonic()
    with db.connect(dsn) as conn:
        for k in range(0, len(inputs), size):
            pause = begin + k / per_second - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            with conn.transaction():
                runs += [engine.start(workflow, x, conn=conn) for x in inputs[k:k + size]]
            check()
    return runs
