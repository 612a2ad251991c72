"""Chaos under load: SIGKILL random workers of a real supervisor while a few
hundred activities, signals and durable sleeps are in progress."""

from __future__ import annotations

import os
import random
import re
import signal
import time
from typing import Any, Callable

import pytest

from flows import Engine
from tests.acceptance.fleet_harness import (
    EXIT,
    SPAWN,
    Fleet,
    assert_all_completed,
    fleets,
    kill_random_worker,
    ledger,
    signal_all,
    start_orders,
)

__all__ = ["fleets", "ledger"]  # fixtures

pytestmark = pytest.mark.slow

ORDERS = 150
CHAOS_SECONDS = 10.0
KILL_EVERY_SECONDS = (0.5, 1.0)


def test_sigkill_random_workers_under_load(
    db_url: str, engine: Engine, ledger: Any, fleets: Callable[..., Fleet]
) -> None:
    fleet = fleets(db_url, "--workers", "3", "--concurrency", "4")
    fleet.wait_ready(3)
    seed = int(os.environ.get("CHAOS_SEED") or time.time_ns() % 100_000)
    rng = random.Random(seed)
    print(f"chaos seed={seed} (set CHAOS_SEED to replay the kill schedule)")
    runs = start_orders(engine, ORDERS, work_seconds=0.1, sleep_seconds=0.2)

    # Signals trickle in during the chaos, so the load lasts as long as it does.
    batches = [runs[i::8] for i in range(8)]
    killed: list[int] = []
    deadline = time.monotonic() + CHAOS_SECONDS
    while time.monotonic() < deadline:
        if batches:
            signal_all(engine, batches.pop())
        time.sleep(rng.uniform(*KILL_EVERY_SECONDS))
        pid = kill_random_worker(fleet, rng)
        if pid is not None:
            killed.append(pid)
    for batch in batches:
        signal_all(engine, batch)

    assert len(killed) >= 5, f"seed={seed}: only {len(killed)} kills"
    assert_all_completed(engine, ledger, runs, timeout=60)

    # The supervisor saw each kill for what it was and replaced every victim.
    for pid in killed:
        fleet.wait_log(rf"worker-exit pid={pid} group=\S+ generation=1 killed by SIGKILL \(out of memory\?\)")
    fleet.wait_ready(3)
    assert len(fleet.matches(SPAWN)) == 3 + len(killed)
    assert len(fleet.matches(EXIT)) == len(killed)

    attempts, effects = ledger.execute("SELECT count(*), count(DISTINCT key) FROM fleet_attempts").fetchone()
    released = len(fleet.matches(re.compile(r"leases-released")))
    print(f"kills={len(killed)} attempts={attempts} steps={effects} releases={released}")

    fleet.send(signal.SIGTERM)
    assert fleet.wait() == 0, fleet.log()
    assert ledger.execute("SELECT count(*) FROM worker_heartbeats").fetchone() == (0,)
