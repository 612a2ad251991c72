"""The scenarios, by name. Each module has HELP, ``add_arguments(parser)``,
``targets(args)`` (the issue's bars) and ``measure(run, args)`` (one repeat,
returning a ``report.Measurement``)."""

from __future__ import annotations

from types import ModuleType

from loadtest.scenarios import backlog, fairness, floor, idle, loan, long, scaling, soak, throughput, timers, wakeup

SCENARIOS: dict[str, ModuleType] = {
    "throughput": throughput,
    "loan": loan,
    "wakeup": wakeup,
    "timers": timers,
    "idle": idle,
    "backlog": backlog,
    "long": long,
    "scaling": scaling,
    "floor": floor,
    "fairness": fairness,
    "soak": soak,
}
