"""The loan API: five endpoints of ``spec/loan-demo.md`` plus /healthz and
/openapi.json.

Every client mistake gets a 4xx ``{"error", "detail"}`` body before anything
is written; each write is one engine call, hence one transaction.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID

import msgspec
from flask import Blueprint, Flask, Response, current_app, g, request, url_for
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

import flows
from webapp import openapi
from webapp.extension import client
from webapp.loans import (
    DOCUMENT_TYPES,
    WORKFLOW_NAME,
    DocumentSubmitted,
    ManagerApproval,
    loan_application_workflow,
    required_documents,
)
from webapp.schemas import (
    ApprovalRequest,
    DocumentRequest,
    ErrorBody,
    Health,
    LoanApplication,
    SignalResponse,
    StartResponse,
    status_body,
)

log = logging.getLogger("webapp")

T = TypeVar("T")
ENDED = ("completed", "failed", "cancelled")
MANAGER_APPROVAL_SIGNAL = "manager-approval"

api = Blueprint("api", __name__, url_prefix="/api/loans")
meta = Blueprint("meta", __name__)

_encoder = msgspec.json.Encoder()


class ApiError(Exception):
    """A client mistake: answered with ``status`` and an ErrorBody."""

    def __init__(self, status: int, error: str, detail: str, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.body = ErrorBody(error, detail, field)
        self.headers = headers or {}


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_encoder.encode(body), status, headers=headers, mimetype="application/json")


# -- request helpers -------------------------------------------------------------

_AT_PATH = re.compile(r" - at `\$\.?([^`]*)`$")
_NAMED_FIELD = re.compile(r"(?:missing required|unknown) field `([^`]*)`")


def _field_of(message: str) -> str | None:
    """The field a msgspec validation message names (``amount``, ``a.b``)."""
    path = _AT_PATH.search(message)
    named = _NAMED_FIELD.search(message)
    parts = [p for p in (path.group(1) if path else None, named.group(1) if named else None) if p]
    return ".".join(parts) or None


def decode_body(type_: type[T]) -> T:
    """The request body as ``type_``, or an ApiError naming what is wrong."""
    if request.content_type and not (request.mimetype == "application/json" or request.mimetype.endswith("+json")):
        raise ApiError(415, "unsupported media type",
                       f"send the body as JSON with Content-Type: application/json, not {request.mimetype!r}")
    data = request.get_data(cache=False)  # at most MAX_BODY_BYTES + 1 bytes (see create_app)
    if len(data) > current_app.config["MAX_BODY_BYTES"]:
        raise RequestEntityTooLarge()
    try:
        return msgspec.json.decode(data, type=type_)
    except msgspec.ValidationError as exc:
        raise ApiError(400, "invalid request body", str(exc), _field_of(str(exc))) from None
    except msgspec.DecodeError as exc:
        detail = "the body is empty; send a JSON object" if not data.strip() else f"the body is not JSON: {exc}"
        raise ApiError(400, "malformed JSON", detail) from None


def target(workflow_name: str, workflow_id: str) -> tuple[str, UUID]:
    """Check the path's workflow name and id before touching the database."""
    if workflow_name != WORKFLOW_NAME:
        raise ApiError(404, "unknown workflow",
                       f"no workflow type {workflow_name!r}; this API serves {WORKFLOW_NAME!r}", "workflowName")
    try:
        wid = UUID(workflow_id)
    except ValueError:
        raise ApiError(400, "invalid workflow id", f"{workflow_id!r} is not a UUID", "id") from None
    return workflow_name, wid


def _now() -> datetime:
    return datetime.now(UTC)


@api.before_request
def authenticate() -> None:
    """With FLOWS_API_KEYS set, a request needs ``Authorization: Bearer <key>``
    and acts as that key's tenant; without it, as the default tenant."""
    g.tenant_id = None
    if not client.auth_required:
        return
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    tenant = client.tenant_for(key.strip()) if scheme.lower() == "bearer" else None
    if tenant is None:
        raise ApiError(401, "unauthorized", "send a valid API key as 'Authorization: Bearer <key>'",
                       headers={"WWW-Authenticate": 'Bearer realm="flows"'})
    g.tenant_id = tenant


# -- the API ------------------------------------------------------------------------


@api.post("")
def start_loan() -> Response:
    application = decode_body(LoanApplication)
    run = client.engine.start(loan_application_workflow, application, tenant_id=g.tenant_id)
    body = StartResponse(
        run.workflow_id, run.workflow_name,
        f"Loan application started successfully (shard: {run.workflow_name_sharded})",
    )
    location = url_for(".get_status", workflow_name=run.workflow_name, workflow_id=str(run.workflow_id))
    return json_response(body, 201, {"Location": location})


@api.get("/<workflow_name>/<workflow_id>")
def get_status(workflow_name: str, workflow_id: str) -> Response:
    name, wid = target(workflow_name, workflow_id)
    return json_response(status_body(client.engine.query(name, wid, tenant_id=g.tenant_id)))


@api.get("/<workflow_name>/<workflow_id>/result")
def get_result(workflow_name: str, workflow_id: str) -> Response:
    """Like the status; ``Output`` carries the decision once completed."""
    name, wid = target(workflow_name, workflow_id)
    return json_response(status_body(client.engine.query(name, wid, tenant_id=g.tenant_id)))


@api.post("/<workflow_name>/<workflow_id>/documents")
def submit_document(workflow_name: str, workflow_id: str) -> Response:
    """Deliver a document as signal ``document-<type>``. A document sent
    before the workflow asks for it waits until it does; one this loan never
    asks for (proof of address up to $50,000) is refused, or it would wait forever."""
    name, wid = target(workflow_name, workflow_id)
    doc = decode_body(DocumentRequest)
    application = client.engine.query(name, wid, tenant_id=g.tenant_id).input
    needed = required_documents(application.amount) if isinstance(application, LoanApplication) else DOCUMENT_TYPES
    if doc.document_type not in needed:
        raise ApiError(409, "document not required", f"a loan of ${application.amount:,} needs only"
                       f" {', '.join(needed)} documents, not {doc.document_type!r}", "document_type")
    signal = f"document-{doc.document_type}"
    payload = DocumentSubmitted(doc.document_type, doc.document_id, _now())
    signal_id = client.engine.send_signal(name, wid, signal, payload, tenant_id=g.tenant_id)
    return json_response(SignalResponse(wid, signal_id, signal, f"Document {doc.document_type} submitted"))


@api.post("/<workflow_name>/<workflow_id>/approve")
def approve(workflow_name: str, workflow_id: str) -> Response:
    """Deliver the manager's review; 409 unless the workflow is waiting for
    one (most applications are never reviewed, and a stray approval would
    sit unconsumed forever)."""
    name, wid = target(workflow_name, workflow_id)
    review = decode_body(ApprovalRequest)
    status = client.engine.query(name, wid, tenant_id=g.tenant_id)
    if status.status in ENDED:
        raise ApiError(409, "workflow has ended", f"workflow {wid} is {status.status}; it takes no more signals")
    if status.waiting_for != f"signal:{MANAGER_APPROVAL_SIGNAL}":
        raise ApiError(409, "no review pending",
                       f"workflow {wid} is not waiting for a manager approval"
                       f" (waiting for: {status.waiting_for or 'nothing'})")
    payload = ManagerApproval(review.approver_role, review.approved, review.comments, _now())
    signal_id = client.engine.send_signal(name, wid, MANAGER_APPROVAL_SIGNAL, payload, tenant_id=g.tenant_id)
    verdict = "approval" if review.approved else "refusal"
    return json_response(SignalResponse(wid, signal_id, MANAGER_APPROVAL_SIGNAL, f"Manager {verdict} submitted"))


# -- operations ------------------------------------------------------------------------


@meta.get("/healthz")
def healthz() -> Response:
    """200 when the database answers (and is migrated), else 503."""
    problem = client.check_database()
    if problem is not None:
        log.warning("healthz-failed error=%s", problem)
        return json_response(ErrorBody("database unreachable", problem), 503)
    return json_response(Health("ok"))


@meta.get("/openapi.json")
def openapi_document() -> Response:
    return json_response(openapi.document(auth_required=client.auth_required))


# -- errors ------------------------------------------------------------------------------


def register_error_handlers(app: Flask) -> None:
    """Every error leaves as a JSON ErrorBody; nothing a client sends is a 500."""

    @app.errorhandler(ApiError)
    def api_error(exc: ApiError) -> Response:
        return json_response(exc.body, exc.status, exc.headers)

    @app.errorhandler(flows.WorkflowNotFound)
    def not_found(exc: flows.WorkflowNotFound) -> Response:
        return json_response(ErrorBody("workflow not found", str(exc), "id"), 404)

    @app.errorhandler(flows.WorkflowNotRunning)
    def not_running(exc: flows.WorkflowNotRunning) -> Response:
        return json_response(ErrorBody("workflow has ended", str(exc)), 409)

    @app.errorhandler(flows.InvalidInput)
    def invalid(exc: flows.InvalidInput) -> Response:
        return json_response(ErrorBody("invalid input", str(exc)), 400)

    @app.errorhandler(flows.DatabaseError)
    def database(exc: flows.DatabaseError) -> Response:
        log.error("database-error path=%s error=%s", request.path, exc)
        return json_response(ErrorBody("database unavailable", "the database did not answer; retry later"), 503)

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc: RequestEntityTooLarge) -> Response:
        limit = app.config["MAX_BODY_BYTES"]
        return json_response(ErrorBody("request body too large", f"the body exceeds {limit} bytes"), 413)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        response = json_response(ErrorBody(exc.name.lower(), exc.description or exc.name), exc.code or 500)
        if exc.code == 405 and exc.valid_methods:  # type: ignore[attr-defined]
            response.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception("unhandled-error path=%s", request.path)
        return json_response(ErrorBody("internal error", "the server failed; the error is logged"), 500)
