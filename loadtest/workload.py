"""Driving workflows through the public flows API: batches of starts."""

from __future__ import annotations

import time
from typing import Any, Iterable

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
