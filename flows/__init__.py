"""flows: durable workflows for Python on PostgreSQL."""

__version__ = "0.2.0"  # the one place the version is written (pyproject.toml reads it)

from flows.async_engine import AsyncEngine
from flows.context import ActivityContext, ActivityHandle, ChildHandle, Handle, WorkflowContext
from flows.definitions import (
    ActivityDefinition,
    RetryPolicy,
    WorkflowDefinition,
    activity,
    registered_activities,
    registered_workflows,
    workflow,
)
from flows.engine import ActivityStatus, Engine, Execution, RejectedSignal, WorkflowStatus
from flows.errors import (
    ActivityCancelled,
    ActivityFailed,
    ChildWorkflowFailed,
    ConfigurationError,
    DatabaseError,
    DatabaseUnavailable,
    DuplicateSignal,
    FlowsError,
    InvalidInput,
    MigrationChanged,
    MissingExtra,
    NonDeterminismError,
    SignalNotAwaited,
    Timeout,
    WorkflowFailed,
    WorkflowNotFailed,
    WorkflowNotFound,
    WorkflowNotRunning,
)
from flows.ids import ANY_TENANT, DEFAULT_TENANT_ID
from flows.ops.detail import WorkflowDetail
from flows.ops.workflows import WorkflowPage
from flows.replayer import ReplayReport, replay_export
from flows.schedules import ScheduleInfo
from flows.worker import Worker

__all__ = [
    "ANY_TENANT",
    "DEFAULT_TENANT_ID",
    "ActivityContext",
    "ActivityDefinition",
    "ActivityCancelled",
    "ActivityFailed",
    "ActivityHandle",
    "ActivityStatus",
    "AsyncEngine",
    "ChildHandle",
    "ChildWorkflowFailed",
    "ConfigurationError",
    "DatabaseError",
    "DatabaseUnavailable",
    "DuplicateSignal",
    "Engine",
    "Execution",
    "FlowsError",
    "Handle",
    "InvalidInput",
    "MigrationChanged",
    "MissingExtra",
    "NonDeterminismError",
    "RejectedSignal",
    "ReplayReport",
    "RetryPolicy",
    "ScheduleInfo",
    "SignalNotAwaited",
    "Timeout",
    "Worker",
    "WorkflowContext",
    "WorkflowDefinition",
    "WorkflowDetail",
    "WorkflowFailed",
    "WorkflowNotFailed",
    "WorkflowNotFound",
    "WorkflowNotRunning",
    "WorkflowPage",
    "WorkflowStatus",
    "activity",
    "registered_activities",
    "registered_workflows",
    "replay_export",
    "workflow",
]
