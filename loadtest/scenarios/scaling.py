"""``scaling``: the throughput workload (N three-step workflows) through
fleets of 1, 2, 4 and 8 worker processes, steps per second for each.

On a machine with fewer cores than workers the curve flattens where the
cores (the workers' and PostgreSQL's together) run out; on a larger machine
run it as is, or with --fleets for other sizes. Use at least as many shards
as the largest fleet (--shards, default 8 here): a worker serves whole
shards.
"""

from __future__ import annotations

import argparse

from loadtest.report import Measurement, Target
from loadtest.scenarios import throughput
from loadtest.session import Run

HELP = "the throughput workload through fleets of 1, 2, 4 and 8 workers: steps/s for each"
DEFAULT_FLEETS = "1,2,4,8"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workflows", type=int, default=throughput.DEFAULT_WORKFLOWS, help="workflows per fleet size")
    p.add_argument("--fleets", default=DEFAULT_FLEETS, help="fleet sizes, comma-separated (default %(default)s)")


def targets(args: argparse.Namespace) -> list[Target]:
    return []


def measure(run: Run, args: argparse.Namespace) -> Measurement:
    metrics: dict[str, float | int | None] = {}
    m = Measurement(metrics, series_title="activity steps recorded per second", latency_title="step latency (ms)")
    sizes = throughput.fleet_sizes(args)
    if max(sizes) > run.shards:
        run.note(f"{run.shards} shards for fleets up to {max(sizes)} workers: the largest fleets have idle workers")
    base = None
    for workers in sizes:
        with run.database() as dsn:
            fig = throughput.measure_batch(run, dsn, workers, args.workflows)
        metrics[f"w{workers}_steps_per_s"] = fig.steps_per_s
        metrics[f"w{workers}_worker_cpu_ms_per_step"] = 1000.0 * fig.worker_cpu_s / max(1, fig.steps)
        metrics[f"w{workers}_xacts_per_step"] = fig.xacts_per_step
        base = base or fig.steps_per_s
        metrics[f"w{workers}_speedup"] = fig.steps_per_s / base if base else None
        m.series[f"{workers} worker(s)"] = fig.series
        m.latencies_ms[f"{workers} worker(s)"] = fig.step_latencies_ms
    return m
