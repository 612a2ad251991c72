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
    WorkflowNotFound,
    WorkflowNotRunning,
)
from flows.worker import Worker

__all__ = [
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
    "RetryPolicy",
    "Worker",
    "WorkflowContext",
    "WorkflowDefinition",
    "WorkflowFailed",
    "WorkflowNotFound",
    "WorkflowNotRunning",
    "WorkflowStatus",
    "activity",
    "registered_activities",
    "registered_workflows",
    "workflow",
]
