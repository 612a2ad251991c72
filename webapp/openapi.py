"""The OpenAPI 3.1 document of the loan API, served at /openapi.json.

Schemas come from the Structs the routes decode and encode with
(``webapp.schemas``); a test checks that paths and methods match the app's
URL map.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import msgspec

from webapp import schemas
from webapp.loans import WORKFLOW_NAME

OPENAPI_VERSION = "3.1.0"
_REF = "#/components/schemas/{name}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(name=name)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    reasons = {
        400: "Malformed JSON, a field of the wrong type or out of range, or a malformed id",
        401: "Missing or unknown API key (only when FLOWS_API_KEYS is set)",
        404: "Unknown workflow name, or no such workflow for this tenant",
        409: "The workflow has ended; or (/documents) it does not need this document type, or already has one of"
             " it with another document_id; or (/approve) it is not waiting for a review, or a decision was"
             " already submitted",
        413: "Body larger than the limit (64 KiB by default)",
        415: "Body sent without Content-Type: application/json",
        503: "The database is unreachable",
    }
    return {str(code): _json(_ref("ErrorBody"), reasons[code]) for code in codes}


_PATH_PARAMS = [
    {"name": "workflowName", "in": "path", "required": True,
     "description": f"The base workflow name: always {WORKFLOW_NAME!r}",
     "schema": {"type": "string", "enum": [WORKFLOW_NAME]}},
    {"name": "id", "in": "path", "required": True, "description": "The workflow id returned by POST /api/loans",
     "schema": {"type": "string", "format": "uuid"}},
]


def _body(name: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(name)}}}


@lru_cache(maxsize=2)
def document(auth_required: bool) -> dict[str, Any]:
    """The document; with ``auth_required`` the /api operations need a bearer key."""
    _, components = msgspec.json.schema_components(
        [
            schemas.LoanApplication, schemas.DocumentRequest, schemas.ApprovalRequest, schemas.StartResponse,
            schemas.StatusResponse, schemas.SignalResponse, schemas.ErrorBody, schemas.Health,
        ],
        ref_template=_REF,
    )
    security: list[dict[str, list[str]]] = [{"bearer": []}] if auth_required else []
    status = _json(_ref("StatusResponse"), "The workflow's state")
    item = "/api/loans/{workflowName}/{id}"
    paths = {
        "/api/loans": {
            "post": {
                "operationId": "startLoan", "summary": "Start a loan application workflow",
                "security": security, "requestBody": _body("LoanApplication"),
                "responses": {
                    "201": {**_json(_ref("StartResponse"), "Started"),
                            "headers": {"Location": {"schema": {"type": "string"},
                                                     "description": "The status URL"}}},
                    **_errors(400, 401, 413, 415, 503),
                },
            },
        },
        item: {
            "parameters": _PATH_PARAMS,
            "get": {
                "operationId": "getLoanStatus", "summary": "The workflow's status", "security": security,
                "responses": {"200": status, **_errors(400, 401, 404, 503)},
            },
        },
        item + "/documents": {
            "parameters": _PATH_PARAMS,
            "post": {
                "operationId": "submitDocument",
                "summary": "Submit a document (signal document-<type>); kept until the workflow asks for it",
                "description": "One document of each type per loan: the same document_id again is answered 200"
                               " with the first signal's id and stores nothing; another of that type is a 409.",
                "security": security, "requestBody": _body("DocumentRequest"),
                "responses": {
                    "200": _json(_ref("SignalResponse"), "Signal stored (or this very document was already)"),
                    **_errors(400, 401, 404, 409, 413, 415, 503),
                },
            },
        },
        item + "/approve": {
            "parameters": _PATH_PARAMS,
            "post": {
                "operationId": "approveLoan",
                "summary": "Submit the manager review (signal manager-approval) the workflow waits for",
                "description": "Stored only while the workflow waits for a review that no earlier decision"
                               " answers: of any number of decisions, one is answered 200, every other 409.",
                "security": security, "requestBody": _body("ApprovalRequest"),
                "responses": {
                    "200": _json(_ref("SignalResponse"), "Signal stored"),
                    **_errors(400, 401, 404, 409, 413, 415, 503),
                },
            },
        },
        item + "/result": {
            "parameters": _PATH_PARAMS,
            "get": {
                "operationId": "getLoanResult", "summary": "The status, with Output once completed",
                "security": security, "responses": {"200": status, **_errors(400, 401, 404, 503)},
            },
        },
        "/healthz": {
            "get": {
                "operationId": "health", "summary": "Whether the database answers", "security": [],
                "responses": {"200": _json(_ref("Health"), "Healthy"), **_errors(503)},
            },
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics (docs/metrics.md); with API keys set, the console's admin key as bearer",
                "security": security,
                "responses": {
                    "200": {"description": "The Prometheus text format",
                            "content": {"text/plain": {"schema": {"type": "string"}}}},
                    **_errors(401),
                },
            },
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi", "summary": "This document", "security": [],
                "responses": {"200": _json({"type": "object"}, "The OpenAPI document")},
            },
        },
    }
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "flows loan application API",
            "version": "1.0.0",
            "description": "Starts and drives the loan-application workflow of the flows demo.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "An API key from FLOWS_API_KEYS"}},
        },
    }
