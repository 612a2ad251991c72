"""Where a wake-up's time goes inside the worker: a fleet app that stamps
each phase of a step, and the table of them.

``python -m loadtest wakeup --fleet-app loadtest.steptrace`` runs the
load-test workflows with the worker's wake-up path wrapped: each worker
appends a line per phase boundary (wall clock, thread, phase) to
``results/steptrace/<supervisor pid>-<pid>.log``. ``python -m
loadtest.steptrace`` then takes, from the latest run's logs, every wake-up by a notification through its claim, replay and record and
prints the median and p90 of each phase. The wrappers cost about 10 us a
phase. Meant for ``wakeup`` (one step at a time); in busier runs the
phases of concurrent steps interleave and are not matched.
"""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, TextIO

from flows import store, worker

import loadtest.app  # noqa: F401 - registers the load-test workflows for the fleet

TRACE_DIR = Path(__file__).resolve().parent / "results" / "steptrace"
# (from, to, what happens in between), in the order a wake-up runs them.
PHASES = [
    ("woke", "task>", "notification read, hand-off to the claim"),
    ("task>", "claim>", "slot, pool connection, transaction object"),
    ("claim>", "claim<", "claim round trip (BEGIN; flows_claim_workflow_task)"),
    ("claim<", "replay>", "the step begun (definition, events to replay)"),
    ("replay>", "replay<", "the workflow's replay"),
    ("replay<", "record>", "commands turned into the step document"),
    ("record>", "record<", "record round trip (flows_record_step; COMMIT)"),
    ("woke", "record<", "woken to committed"),
]

_out: TextIO | None = None


def _mark(phase: str) -> None:
    global _out
    if _out is None:
        TRACE_DIR.mkdir(parents=True, exist_ok=True)
        _out = open(TRACE_DIR / f"{os.getppid()}-{os.getpid()}.log", "a", buffering=1)
    _out.write(f"{time.time():.6f} {threading.current_thread().name} {phase}\n")


def _wrap(owner: Any, name: str, phase: str) -> None:
    inner: Callable[..., Any] = getattr(owner, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        _mark(phase + ">")
        try:
            return inner(*args, **kwargs)
        finally:
            _mark(phase + "<")

    setattr(owner, name, timed)


def _install() -> None:
    waited = worker.Worker._wait

    def wait(self: worker.Worker, timeout: float) -> set[str]:
        woken_by = waited(self, timeout)
        _mark("woke " + ",".join(sorted(woken_by)))
        return woken_by

    worker.Worker._wait = wait  # type: ignore[method-assign]
    _wrap(worker.Worker, "_run_workflow_task", "task")
    _wrap(store, "claim_workflow_task", "claim")
    _wrap(worker, "replay", "replay")
    _wrap(store, "record_step", "record")


def summarize(directory: Path = TRACE_DIR) -> dict[str, list[float]]:
    """Each phase's durations (ms) over the latest run's wake-ups by a notification."""
    spans: dict[str, list[float]] = {}
    logs = sorted(directory.glob("*-*.log"), key=lambda p: p.stat().st_mtime)
    latest = logs[-1].name.split("-")[0] if logs else ""
    for log in (p for p in logs if p.name.split("-")[0] == latest):
        lines = [line.split(None, 2) for line in log.read_text().splitlines()]
        marks = [(float(at), phase) for at, _thread, phase in lines]
        starts = [i for i, (_, phase) in enumerate(marks) if phase.startswith("woke ")] + [len(marks)]
        for begin, end in zip(starts, starts[1:]):
            if "notify-replay" not in marks[begin][1]:
                continue
            seen: dict[str, float] = {"woke": marks[begin][0]}
            for at, phase in marks[begin + 1:end]:
                seen.setdefault(phase, at)
            if "record<" not in seen:
                continue
            for a, b, _ in PHASES:
                if a in seen and b in seen:
                    spans.setdefault(f"{a} -> {b}", []).append((seen[b] - seen[a]) * 1000.0)
    return spans


def main() -> None:
    spans = summarize()
    if not spans:
        sys.exit(f"no traced wake-ups under {TRACE_DIR}: run a scenario with --fleet-app loadtest.steptrace")
    print(f"{'phase':24s} {'n':>5s} {'p50 ms':>7s} {'p90 ms':>7s}  what")
    for a, b, what in PHASES:
        values = sorted(spans.get(f"{a} -> {b}", []))
        if values:
            p90 = values[min(len(values) - 1, int(0.9 * len(values)))]
            print(f"{a + ' -> ' + b:24s} {len(values):5d} {statistics.median(values):7.3f} {p90:7.3f}  {what}")


if __name__ == "__main__":
    main()
else:
    _install()
