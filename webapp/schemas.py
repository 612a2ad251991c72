"""Request and response bodies of the loan API, as msgspec Structs.

The routes decode and encode with these, and ``openapi.py`` derives the
OpenAPI schemas from them, so the document cannot drift from the code.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec

from webapp.loans import NO_NUL, DocumentId, DocumentType, LoanApplication, LoanDecision

__all__ = [
    "ApprovalRequest",
    "DocumentRequest",
    "ErrorBody",
    "Health",
    "LoanApplication",
    "SignalResponse",
    "StartResponse",
    "StatusResponse",
]


class DocumentRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """POST .../documents: one of the documents the workflow waits for."""

    document_type: DocumentType
    document_id: DocumentId


class ApprovalRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """POST .../approve: the manager's review, when the workflow asks for one."""

    approver_role: Literal["manager"]
    approved: bool
    comments: Annotated[str, msgspec.Meta(max_length=2000, pattern=NO_NUL)] = ""


class StartResponse(msgspec.Struct, frozen=True):
    workflow_id: UUID
    workflow_name: str
    message: str


class StatusResponse(
    msgspec.Struct,
    frozen=True,
    rename={
        "id": "ID", "tenant_id": "TenantID", "name": "Name", "version": "Version", "status": "Status",
        "error": "Error", "waiting_for": "WaitingFor", "output": "Output",
    },
):
    """A workflow's state. ``Name`` is the sharded name; ``WaitingFor`` is
    ``activity:<name>``, ``signal:<name>``, ``timer`` or ``""``; ``Output``
    is present once the workflow has completed."""

    id: UUID
    tenant_id: UUID
    name: str
    version: int
    status: Literal["pending", "running", "completed", "failed", "cancelled"]
    error: str
    waiting_for: str
    output: LoanDecision | msgspec.UnsetType = msgspec.UNSET


class SignalResponse(msgspec.Struct, frozen=True):
    workflow_id: UUID
    signal_id: UUID
    signal_name: str
    message: str


class ErrorBody(msgspec.Struct, frozen=True, omit_defaults=True):
    """Every 4xx/5xx body. ``field`` names the offending field when there is one."""

    error: str
    detail: str
    field: str | None = None


class Health(msgspec.Struct, frozen=True):
    status: Literal["ok"]


def status_body(status: Any) -> StatusResponse:
    """The response for a ``flows.WorkflowStatus``."""
    return StatusResponse(
        id=status.id,
        tenant_id=status.tenant_id,
        name=status.name,
        version=status.version,
        status=status.status,
        error=status.error or "",
        waiting_for=status.waiting_for or "",
        output=status.output if status.status == "completed" else msgspec.UNSET,
    )
