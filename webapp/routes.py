"""The loan API: five endpoints of ``spec/loan-demo.md`` plus /healthz and
/openapi.json.

Every client mistake gets a 4xx ``{"error", "detail"}`` body before anything
is written; each write is one engine call, hence one transaction.
"""

from __future__ import annotations

import hmac
import logging
import re
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID

import msgspec
from flask import Blueprint, Flask, Response, current_app, g, request, url_for
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

import flows
import flows.metrics
from webapp import openapi
from webapp.extension import client
from webapp.loans import (
    DOCUMENT_TYPES,
    PATTERN_MEANINGS,
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
MANAGER_APPROVAL_SIGNAL = "manager-approval"

api = Blueprint("api", __name__, url_prefix="/api/loans")
meta = Blueprint("meta", __name__)
prometheus = Blueprint("metrics", __name__)  # its GET answers Prometheus text, not JSON

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
    """The request body as ``type_``, or an ApiError naming what is wrong.

    Only ``Content-Type: application/json`` is read (415 otherwise, a
    missing one included): a cross-site form can post text/plain or a form
    without a preflight, never JSON."""
    if request.mimetype != "application/json":
        sent = f"not {request.mimetype[:100]!r}" if request.mimetype else "none was sent"
        raise ApiError(415, "unsupported media type",
                       f"send the body as JSON with Content-Type: application/json ({sent})")
    data = request.get_data(cache=False)  # at most MAX_BODY_BYTES + 1 bytes (see create_app)
    if len(data) > current_app.config["MAX_BODY_BYTES"]:
        raise RequestEntityTooLarge()
    try:
        return msgspec.json.decode(data, type=type_)
    except msgspec.ValidationError as exc:
        error = exc
    except msgspec.DecodeError as exc:
        detail = "the body is empty; send a JSON object" if not data.strip() else f"the body is not JSON: {exc}"
        raise ApiError(400, "malformed JSON", detail) from None
    # The published schema (JSON Schema) counts 110.0 as an integer, which
    # msgspec refuses for an int. The request bodies are flat objects: judge
    # them again with their whole-number floats read as ints.
    fields = _whole_floats_as_ints(data)
    if fields is not None:
        try:
            return msgspec.convert(fields, type_, strict=True)
        except msgspec.ValidationError as exc:
            error = exc
    raise ApiError(400, "invalid request body", _readable(str(error)), _field_of(str(error)))


def _readable(message: str) -> str:
    """msgspec's message with a pattern replaced by what it means."""
    for pattern, meaning in PATTERN_MEANINGS.items():
        message = message.replace(f"`str` matching regex {pattern!r}", meaning)
    return message


def _whole_floats_as_ints(data: bytes) -> dict[str, Any] | None:
    """The body's top-level fields with whole-number floats as ints, or None
    when there are none (or the body is no object, or too deeply nested)."""
    try:
        fields = msgspec.json.decode(data, type=dict[str, Any])
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None
    whole = {k for k, v in fields.items() if isinstance(v, float) and v.is_integer()}
    return {k: int(v) if k in whole else v for k, v in fields.items()} if whole else None


def _request_field(path: str | None) -> str | None:
    """The request field behind an engine value path: ``input.applicant_name``
    (a start's input) and ``payload.comments`` (a signal's) are the request
    fields ``applicant_name`` and ``comments``."""
    if not path or "." not in path:
        return None
    return path.split(".", 1)[1] or None


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
    tenant = client.tenant_for(key.strip()) if scheme.lower() == "bearer" and key.strip() else None
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
    asks for (proof of address up to $50,000) is refused, or it would wait
    forever. A loan takes one document of each type: the signal's
    deduplication key is its type, so sending the same document again
    stores nothing (200, the first signal's id) and another of that type is
    refused (409), however many requests race."""
    name, wid = target(workflow_name, workflow_id)
    doc = decode_body(DocumentRequest)
    application = client.engine.query(name, wid, tenant_id=g.tenant_id).input
    needed = required_documents(application.amount) if isinstance(application, LoanApplication) else DOCUMENT_TYPES
    if doc.document_type not in needed:
        raise ApiError(409, "document not required", f"a loan of ${application.amount:,} needs only"
                       f" {', '.join(needed)} documents, not {doc.document_type!r}", "document_type")
    signal = f"document-{doc.document_type}"
    payload = DocumentSubmitted(doc.document_type, doc.document_id, _now())
    try:
        signal_id = client.engine.send_signal(name, wid, signal, payload, tenant_id=g.tenant_id, dedup_key=signal)
    except flows.DuplicateSignal as dup:
        stored = dup.payload.get("document_id") if isinstance(dup.payload, dict) else None
        if stored != doc.document_id:
            raise ApiError(409, "document already submitted",
                           f"this loan already has a {doc.document_type} document with another document_id;"
                           " it takes one document of each type", "document_type") from None
        again = f"Document {doc.document_type} already submitted"
        return json_response(SignalResponse(wid, dup.signal_id, signal, again))
    return json_response(SignalResponse(wid, signal_id, signal, f"Document {doc.document_type} submitted"))


@api.post("/<workflow_name>/<workflow_id>/approve")
def approve(workflow_name: str, workflow_id: str) -> Response:
    """Deliver the manager's review, only while the workflow waits for one
    that no earlier decision answers (decided in the statement that stores
    it): one decision per review gets a 200, every other a 409. Most
    applications are never reviewed, and a stray approval would otherwise
    sit unconsumed forever."""
    name, wid = target(workflow_name, workflow_id)
    review = decode_body(ApprovalRequest)
    payload = ManagerApproval(review.approver_role, review.approved, review.comments, _now())
    try:
        signal_id = client.engine.send_signal(name, wid, MANAGER_APPROVAL_SIGNAL, payload, tenant_id=g.tenant_id,
                                              only_if_waiting=True)
    except flows.SignalNotAwaited as exc:
        if exc.pending_signal_id is not None:
            raise ApiError(409, "review already submitted",
                           f"workflow {wid} already has a manager decision ({exc.pending_signal_id});"
                           " a review takes one") from None
        raise ApiError(409, "no review pending", f"workflow {wid} is not waiting for a manager approval"
                       f" (waiting for: {exc.waiting_for or 'nothing'})") from None
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


@prometheus.get("/metrics")
def metrics() -> Response:
    """Prometheus metrics: this server's processes added up, and the
    database's gauges (docs/metrics.md). With FLOWS_API_KEYS set it needs
    ``Authorization: Bearer <FLOWS_CONSOLE_ADMIN_KEY>``: it sees every tenant."""
    if client.auth_required:
        admin = str(current_app.config.get("CONSOLE_ADMIN_KEY") or "")
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        if not admin or scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), admin.encode()):
            raise ApiError(401, "unauthorized", "send the console's admin key as 'Authorization: Bearer <key>'",
                           headers={"WWW-Authenticate": 'Bearer realm="flows"'})
    engine = client.engine
    body, content_type = flows.metrics.exposition(engine.dsn, engine.connection, request.headers.get("Accept"))
    return Response(body, content_type=content_type)


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
        # A value of the request the engine refused to store (a NUL in a
        # string): named as the request's field, not the engine's path.
        field = _request_field(exc.path)
        detail = str(exc).replace(exc.path, field, 1) if field and exc.path else str(exc)
        return json_response(ErrorBody("invalid request body", detail, field), 400)

    @app.errorhandler(flows.DatabaseError)
    def database(exc: flows.DatabaseError) -> Response:
        # The message names error classes and objects only (never row
        # values): fit for the log. Class 22 is a value PostgreSQL refused,
        # the client's doing; anything else is the database's state.
        if exc.data_error:
            log.warning("database-refused-value path=%s error=%s", request.path, exc)
            return json_response(ErrorBody(
                "invalid request body",
                f"the database refused a value of this request ({type(exc.__cause__).__name__},"
                f" SQLSTATE {exc.sqlstate})"), 400)
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
