"""flows: durable workflows for Python on PostgreSQL."""

from flows.context import ActivityContext, WorkflowContext
from flows.definitions import (
    ActivityDefinition,
    RetryPolicy,
    WorkflowDefinition,
    activity,
    registered_activities,
    registered_workflows,
    workflow,
)
from flows.engine import DEFAULT_TENANT_ID, ActivityStatus, Engine, Execution, WorkflowStatus
from flows.errors import (
    ActivityCancelled,
    ActivityFailed,
    ConfigurationError,
    DatabaseError,
    DatabaseUnavailable,
    FlowsError,
    InvalidInput,
    MigrationChanged,
    NonDeterminismError,
    WorkflowFailed,
    WorkflowNotFailed,
    WorkflowNotFound,
    WorkflowNotRunning,
)
from flows.operations import ANY_TENANT, WorkflowDetail, WorkflowPage
from flows.replayer import ReplayReport, replay_export
from flows.worker import Worker

__all__ = [
    "ANY_TENANT",
    "DEFAULT_TENANT_ID",
    "ActivityContext",
    "ActivityDefinition",
    "ActivityCancelled",
    "ActivityFailed",
    "ActivityStatus",
    "ConfigurationError",
    "DatabaseError",
    "DatabaseUnavailable",
    "Engine",
    "Execution",
    "FlowsError",
    "InvalidInput",
    "MigrationChanged",
    "NonDeterminismError",
    "ReplayReport",
    "RetryPolicy",
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
