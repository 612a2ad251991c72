"""The exception hierarchy: one root for everything the library raises.

Internal control flow (suspending a replay) derives from BaseException so that
user code's ``except Exception`` cannot swallow it.
"""

from __future__ import annotations

from uuid import UUID


class FlowsError(Exception):
    """Root of every error the library raises on purpose."""


class ConfigurationError(FlowsError):
    """A setting or a definition is wrong (bad shard count, duplicate name...)."""


class MissingExtra(ConfigurationError, ImportError):
    """A feature needs a package of an optional extra that is not installed;
    the message names the extra to install (``pip install 'flows-pg[console]'``)."""


class InvalidInput(FlowsError):
    """An argument cannot be used: not JSON-serialisable, wrong type, bad id.

    ``path`` names the value at fault when known (``input.applicant_name``)."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class WorkflowNotFound(FlowsError):
    """No workflow with that name and id is visible to this tenant."""


class WorkflowNotRunning(FlowsError):
    """The workflow has already ended; it takes no more signals."""


class WorkflowNotFailed(FlowsError):
    """Only a failed workflow can be retried; this one is running, completed or cancelled."""


class DuplicateSignal(FlowsError):
    """``send_signal(dedup_key=...)``: a signal with that key was already
    stored for the workflow, and nothing new was. ``signal_id`` and
    ``payload`` (plain JSON values) are the stored signal's, so a caller can
    tell a retry of the same request from a different one."""

    def __init__(self, message: str, *, dedup_key: str, signal_id: UUID, payload: object) -> None:
        super().__init__(message)
        self.dedup_key = dedup_key
        self.signal_id = signal_id
        self.payload = payload


class SignalNotAwaited(FlowsError):
    """``send_signal(only_if_waiting=True)``: the workflow is not waiting for
    this signal now, so nothing was stored. ``waiting_for`` is what it waits
    for; ``pending_signal_id`` is set when it does wait for this signal but a
    stored, not yet consumed one already answers that wait."""

    def __init__(self, message: str, *, waiting_for: str | None, pending_signal_id: UUID | None = None) -> None:
        super().__init__(message)
        self.waiting_for = waiting_for
        self.pending_signal_id = pending_signal_id


class WorkflowFailed(FlowsError):
    """The workflow ended in failure (or was cancelled); ``error`` says why."""

    def __init__(self, workflow_id: object, status: str, error: str | None) -> None:
        super().__init__(f"workflow {workflow_id} {status}: {error}")
        self.workflow_id = workflow_id
        self.status = status
        self.error = error


class NonDeterminismError(FlowsError):
    """Workflow code took another path on replay than the one recorded."""


class ActivityFailed(FlowsError):
    """An activity failed on its last attempt; raised inside the workflow."""

    def __init__(self, activity: str, error: str, attempts: int) -> None:
        super().__init__(f"activity {activity} failed after {attempts} attempt(s): {error}")
        self.activity = activity
        self.error = error
        self.attempts = attempts


class ChildWorkflowFailed(FlowsError):
    """A child workflow ended ``failed`` or ``cancelled`` (or its id belonged
    to another workflow); raised inside the parent by ``ctx.child()`` and
    ``ChildHandle.result()``. ``error`` is the child's."""

    def __init__(self, workflow_name: str, workflow_id: object, status: str, error: str | None) -> None:
        super().__init__(f"child workflow {workflow_name}/{workflow_id} {status}: {error}")
        self.workflow_name = workflow_name
        self.workflow_id = workflow_id
        self.status = status
        self.error = error


class Timeout(FlowsError):
    """Raised inside a workflow by ``ctx.wait_for_signal(..., timeout=s)``
    when the durable timer fired before the signal came (recorded: every
    replay raises it again at that step)."""

    def __init__(self, signal_name: str, seconds: float) -> None:
        super().__init__(f"no signal {signal_name!r} within {seconds:g}s")
        self.signal_name = signal_name
        self.seconds = seconds


class ActivityCancelled(FlowsError):
    """Raised by ``ActivityContext.heartbeat()`` once the attempt's result can
    no longer be recorded (it timed out, its workflow ended, or its lease was
    taken): the activity should stop."""


class MigrationChanged(FlowsError):
    """A migration file changed after it was applied to the database;
    ``files`` names them. Nothing was migrated."""

    def __init__(self, message: str, *, files: list[str]) -> None:
        super().__init__(message)
        self.files = files


class DatabaseError(FlowsError):
    """The database refused or lost a statement (wraps psycopg.Error, kept as
    ``__cause__``), or the connection string cannot be used; the message
    names the host (never the password) and what to check. ``sqlstate`` is
    PostgreSQL's error code (``22P02``...), None for errors raised on the
    client side (no connection, pool timeout). A statement's error names its
    class and the objects involved, never the values of a row (see
    ``flows.store.describe``)."""

    def __init__(self, message: str, *, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate

    @property
    def data_error(self) -> bool:
        """Whether PostgreSQL refused a value as such (SQLSTATE class 22:
        invalid text, out of range, untranslatable character...): the
        caller's data is at fault, not the database's state."""
        return self.sqlstate is not None and self.sqlstate.startswith("22")


class DatabaseUnavailable(DatabaseError):
    """The database could not be reached with a valid connection string
    (refused, unresolvable host, timeout, authentication), or the connection
    was lost: worth a retry later."""


class Suspend(BaseException):
    """Internal: the workflow cannot go further until something happens."""

    def __init__(self, waiting_for: str) -> None:
        super().__init__(waiting_for)
        self.waiting_for = waiting_for


class ReplayOverBudget(BaseException):
    """Internal: a replay ran past its time budget and is abandoned (raised
    into the replaying thread, so workflow code cannot swallow it)."""
