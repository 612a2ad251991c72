"""Workflow and activity definitions, retry policies, and the registry.

The decorators register each definition by name, so a process that imports
the module defining them (``--app webapp.loans``) knows what it can run.
"""

from __future__ import annotations

import inspect
import random
import fnmatch
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Mapping, TypeVar

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
    heartbeat_timeout_seconds: float | None = None
    is_async: bool = False  # an async def: its attempts run on the worker's event loop

    def __call__(self, ctx: Any, inp: In) -> Out:
        return self.fn(ctx, inp)


@dataclass(frozen=True, eq=False)
class WorkflowDefinition(Generic[In, Out]):
    name: str
    fn: Callable[[Any, In], Out]
    version: int = 1
    input_type: Any = field(default=Any)
    output_type: Any = field(default=Any)
    signals: tuple[tuple[str, Any], ...] = ()  # (name or fnmatch pattern, payload type), as declared

    def __call__(self, ctx: Any, inp: In) -> Out:
        return self.fn(ctx, inp)

    def signal_type(self, signal_name: str) -> Any | None:
        """The payload type declared for ``signal_name`` (an exact name
        before a pattern), or None if it declares none."""
        for pattern, payload_type in self.signals:
            if pattern == signal_name:
                return payload_type
        for pattern, payload_type in self.signals:
            if fnmatch.fnmatchcase(signal_name, pattern):
                return payload_type
        return None


# Workflows by (name, version): a process may hold several versions of one
# workflow, to finish the runs an older version started.
_workflows: dict[tuple[str, int], WorkflowDefinition[Any, Any]] = {}
_activities: dict[str, ActivityDefinition[Any, Any]] = {}


def _check_name(name: str) -> None:
    if not name or not isinstance(name, str) or "-shard-" in name or len(name) > 100:
        raise ConfigurationError(f"invalid name {name!r}: non-empty, <= 100 chars, no '-shard-'")


def _check_activity_function(fn: Callable[..., Any]) -> None:
    if inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn):
        raise ConfigurationError(
            f"activity {fn.__qualname__} must be a plain function or an async def returning its result:"
            " generator functions are not supported"
        )


def _check_workflow_function(fn: Callable[..., Any]) -> None:
    if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
        raise ConfigurationError(
            f"workflow {fn.__qualname__} must be a plain function, not async def: a workflow is replayed, not"
            " awaited, and does no I/O of its own (activities may be async def; start several at once with"
            " ctx.start_activity and ctx.gather)"
        )
    if inspect.isgeneratorfunction(fn):
        raise ConfigurationError(f"workflow {fn.__qualname__} must be a plain function: generators are not supported")


def _register(table: dict[Any, Any], key: Any, kind: str, definition: Any) -> None:
    old = table.get(key)
    if old is not None and old.fn.__qualname__ != definition.fn.__qualname__:
        raise ConfigurationError(f"{kind} {key!r} is already defined by {old.fn.__qualname__}")
    table[key] = definition


def activity(
    name: str,
    *,
    retry: RetryPolicy = DEFAULT_RETRY,
    timeout: float = DEFAULT_ACTIVITY_TIMEOUT_SECONDS,
    heartbeat_timeout: float | None = None,
) -> Callable[[Callable[[Any, In], Out]], ActivityDefinition[In, Out]]:
    """Declare ``fn(ctx: ActivityContext, inp) -> out`` as an activity.

    ``timeout`` bounds one attempt from start to close, in seconds: an
    attempt still running after it counts as failed ("timed out"), is retried
    per ``retry``, and whatever it returns later is discarded. With
    ``heartbeat_timeout``, an attempt must also call ``ctx.heartbeat()`` at
    least that often, or it is taken for lost and retried; long activities
    beat instead of taking a huge timeout. Activities run at least once:
    pass ``ctx.idempotency_key`` to the services they call.

    ``fn`` may be an ``async def``: its attempts then run on an asyncio event
    loop in the worker (many I/O-bound attempts at once in one thread),
    with the same retries, timeouts (the attempt's task is cancelled) and
    heartbeats; it must not block the loop."""
    _check_name(name)
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not timeout > 0:
        raise ConfigurationError(f"activity timeout must be a number of seconds > 0, got {timeout!r}")
    if heartbeat_timeout is not None and (
        not isinstance(heartbeat_timeout, (int, float)) or isinstance(heartbeat_timeout, bool)
        or not heartbeat_timeout > 0
    ):
        raise ConfigurationError(f"heartbeat_timeout must be a number of seconds > 0, got {heartbeat_timeout!r}")

    def wrap(fn: Callable[[Any, In], Out]) -> ActivityDefinition[In, Out]:
        _check_activity_function(fn)
        inp, out = _io_types(fn)
        definition = ActivityDefinition(
            name, fn, retry, float(timeout), inp, out, None if heartbeat_timeout is None else float(heartbeat_timeout),
            inspect.iscoroutinefunction(fn),
        )
        _register(_activities, name, "activity", definition)
        return definition

    return wrap


def workflow(
    name: str, *, version: int = 1, signals: Mapping[str, Any] | None = None,
) -> Callable[[Callable[[Any, In], Out]], WorkflowDefinition[In, Out]]:
    """Declare ``fn(ctx: WorkflowContext, inp) -> out`` as a workflow.

    The function is replayed from the top each time the workflow wakes: it
    must reach the same decisions from the same history, and do no I/O.

    ``version`` names the code a run was started with: a run is only ever
    replayed by a worker holding that version of the workflow. Define each
    version you still have runs of (``@workflow("order", version=1)`` and
    ``version=2`` on two functions) and hand all of them to the workers; new
    runs start with the one you pass to ``Engine.start``. For small changes
    under running workflows, ``ctx.patched()`` avoids a new version.

    ``signals`` declares the payload type of the signals it waits for, by
    name or fnmatch pattern (``{"document-*": Document}``): ``send_signal``
    refuses a payload that does not decode into it (InvalidInput, nothing
    stored), and ``ctx.wait_for_signal(name)`` decodes into it when given
    no ``type``."""
    _check_name(name)
    declared = tuple((signals or {}).items())
    if any(not isinstance(pattern, str) or not pattern for pattern, _ in declared):
        raise ConfigurationError(f"workflow {name!r}: signals are declared by name (a non-empty string)")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= 2**31 - 1:
        raise ConfigurationError(f"workflow version must be a positive integer, got {version!r}")

    def wrap(fn: Callable[[Any, In], Out]) -> WorkflowDefinition[In, Out]:
        _check_workflow_function(fn)
        inp, out = _io_types(fn)
        definition = WorkflowDefinition(name, fn, version, inp, out, declared)
        _register(_workflows, (name, version), "workflow", definition)
        return definition

    return wrap


def find_workflow(name: str, version: int | None = None) -> WorkflowDefinition[Any, Any] | None:
    """The registered workflow ``name`` at ``version`` (None: the highest)."""
    if version is not None:
        return _workflows.get((name, version))
    found = [d for (n, _), d in _workflows.items() if n == name]
    return max(found, key=lambda d: d.version) if found else None


def workflow_versions(name: str) -> list[WorkflowDefinition[Any, Any]]:
    """Every registered version of the workflow ``name``."""
    return [d for (n, _), d in _workflows.items() if n == name]


def registered_workflows() -> list[WorkflowDefinition[Any, Any]]:
    return list(_workflows.values())


def registered_activities() -> list[ActivityDefinition[Any, Any]]:
    return list(_activities.values())
