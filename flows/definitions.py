"""Workflow and activity definitions, retry policies, and the registry.

The decorators register each definition by name, so a process that imports
the module defining them (``--app webapp.loans``) knows what it can run.
"""

from __future__ import annotations

import inspect
import random
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, TypeVar

from flows.errors import ConfigurationError

DEFAULT_ACTIVITY_TIMEOUT_SECONDS = 300.0

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: ``initial_interval * backoff**(n-1)`` seconds after
    the n-th failed attempt, capped at ``max_interval``, spread by +/- ``jitter``
    (a fraction), for at most ``max_attempts`` attempts in all."""

    initial_interval: float = 1.0
    backoff: float = 2.0
    max_interval: float = 60.0
    max_attempts: int = 3
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if self.initial_interval < 0 or self.max_interval < 0:
            raise ConfigurationError("retry intervals must be >= 0")
        if self.backoff < 1:
            raise ConfigurationError("retry backoff must be >= 1")
        if self.max_attempts < 1:
            raise ConfigurationError("max_attempts must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ConfigurationError("jitter must be within [0, 1]")

    def delay_seconds(self, failures: int, rng: Callable[[], float] = random.random) -> float:
        """Seconds to wait after the ``failures``-th failed attempt."""
        base = min(self.initial_interval * self.backoff ** (failures - 1), self.max_interval)
        return max(0.0, base * (1 + self.jitter * (2 * rng() - 1)))


DEFAULT_RETRY = RetryPolicy()


def _io_types(fn: Callable[..., Any]) -> tuple[Any, Any]:
    """The annotated type of the second parameter and of the return value."""
    hints = typing.get_type_hints(fn)
    params = list(inspect.signature(fn).parameters)
    if len(params) != 2:
        raise ConfigurationError(f"{fn.__qualname__} must take (ctx, input), not {params}")
    return hints.get(params[1], Any), hints.get("return", Any)


@dataclass(frozen=True, eq=False)
class ActivityDefinition(Generic[In, Out]):
    name: str
    fn: Callable[[Any, In], Out]
    retry: RetryPolicy = DEFAULT_RETRY
    timeout_seconds: float = DEFAULT_ACTIVITY_TIMEOUT_SECONDS
    input_type: Any = field(default=Any)
    output_type: Any = field(default=Any)

    def __call__(self, ctx: Any, inp: In) -> Out:
        return self.fn(ctx, inp)


@dataclass(frozen=True, eq=False)
class WorkflowDefinition(Generic[In, Out]):
    name: str
    fn: Callable[[Any, In], Out]
    version: int = 1
    input_type: Any = field(default=Any)
    output_type: Any = field(default=Any)

    def __call__(self, ctx: Any, inp: In) -> Out:
        return self.fn(ctx, inp)


_workflows: dict[str, WorkflowDefinition[Any, Any]] = {}
_activities: dict[str, ActivityDefinition[Any, Any]] = {}


def _check_name(name: str) -> None:
    if not name or not isinstance(name, str) or "-shard-" in name or len(name) > 100:
        raise ConfigurationError(f"invalid name {name!r}: non-empty, <= 100 chars, no '-shard-'")


def _register(table: dict[str, Any], kind: str, definition: Any) -> None:
    old = table.get(definition.name)
    if old is not None and old.fn.__qualname__ != definition.fn.__qualname__:
        raise ConfigurationError(f"{kind} {definition.name!r} is already defined by {old.fn.__qualname__}")
    table[definition.name] = definition


def activity(
    name: str,
    *,
    retry: RetryPolicy = DEFAULT_RETRY,
    timeout: float = DEFAULT_ACTIVITY_TIMEOUT_SECONDS,
) -> Callable[[Callable[[Any, In], Out]], ActivityDefinition[In, Out]]:
    """Declare ``fn(ctx: ActivityContext, inp) -> out`` as an activity.

    ``timeout`` is the lease in seconds: an attempt still running after it is
    presumed lost and run again elsewhere (activities are at-least-once)."""
    _check_name(name)
    if timeout <= 0:
        raise ConfigurationError("activity timeout must be > 0")

    def wrap(fn: Callable[[Any, In], Out]) -> ActivityDefinition[In, Out]:
        inp, out = _io_types(fn)
        definition = ActivityDefinition(name, fn, retry, float(timeout), inp, out)
        _register(_activities, "activity", definition)
        return definition

    return wrap


def workflow(name: str, *, version: int = 1) -> Callable[[Callable[[Any, In], Out]], WorkflowDefinition[In, Out]]:
    """Declare ``fn(ctx: WorkflowContext, inp) -> out`` as a workflow.

    The function is replayed from the top each time the workflow wakes: it
    must reach the same decisions from the same history, and do no I/O."""
    _check_name(name)

    def wrap(fn: Callable[[Any, In], Out]) -> WorkflowDefinition[In, Out]:
        inp, out = _io_types(fn)
        definition = WorkflowDefinition(name, fn, version, inp, out)
        _register(_workflows, "workflow", definition)
        return definition

    return wrap


def registered_workflows() -> list[WorkflowDefinition[Any, Any]]:
    return list(_workflows.values())


def registered_activities() -> list[ActivityDefinition[Any, Any]]:
    return list(_activities.values())
