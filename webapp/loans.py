"""The loan application: ``LoanApplicationWorkflow`` and its activities.

The workflow walks ``spec/loan-demo.md``: a credit check, the required
documents (each a signal ``document-<type>``, awaited in order and verified;
a loan whose identity document does not come within
``FLOWS_DOCUMENT_TIMEOUT`` seconds is rejected),
a durable compliance sleep, a 30% manager review drawn with ``ctx.random``,
an underwriter above $100,000, and the disbursement. Rejections are ordinary
outcomes (``decision: "rejected"`` with a reason), not workflow failures; a
failure is an activity that ran out of retries.

The activities stand in for external services. They are deterministic
functions of their input so that tests can pick applicants that pass or
fail; the disbursement derives its transaction id from the activity's
idempotency key, so a retried attempt names the same transaction and a
payment service that deduplicates by it pays once.

``flows worker --app webapp.loans`` imports this module to register them.
"""

from __future__ import annotations

import hashlib
import math
import os
import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal

import msgspec

import flows

WORKFLOW_NAME = "loan-application"

MIN_CREDIT_SCORE = 300
MAX_CREDIT_SCORE = 850
APPROVAL_CREDIT_SCORE = 600  # below it the application is rejected
UNDERWRITER_CREDIT_SCORE = 680  # the underwriter's minimum for large loans
ADDRESS_PROOF_ABOVE = 50_000  # dollars; above it a proof of address is required
UNDERWRITER_ABOVE = 100_000  # dollars; above it the underwriter must approve
MAX_AMOUNT = 10_000_000  # dollars; anything larger is refused as input
COMPLIANCE_SLEEP_SECONDS = 5.0  # FLOWS_COMPLIANCE_SLEEP overrides it
DOCUMENT_TIMEOUT_SECONDS = 7 * 24 * 3600.0  # FLOWS_DOCUMENT_TIMEOUT overrides it
REVIEW_PROBABILITY = 0.3  # share of applications a manager must review
CREDIT_BUREAU = "Demo Credit Bureau"
APPROVED_REASON = "All checks passed successfully"
DOCUMENT_TYPES = ("identity", "income", "address")  # the order they are awaited in
TRANSACTION_NAMESPACE = uuid.UUID("6f1d3a52-8f0e-4c8e-9a55-0b6a3c1c2d7e")

DocumentType = Literal["identity", "income", "address"]
# Patterns mean the same to msgspec (Python's re) and to JSON Schema tools
# (ECMA-262 regular expressions), so the published schema and the decoder
# agree: whitespace is spelled out (each engine's \s differs: \x1c-\x1f,
# \ufeff), and "(?!\n)$" keeps Python's $ from matching before a final newline.
_BLANK = r"\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
VISIBLE_TEXT = rf"^[{_BLANK}]*[^\x00{_BLANK}][^\x00]*$"  # some non-blank character, and no NUL
NO_NUL = r"^[^\x00]*$"  # PostgreSQL stores no NUL in text or jsonb

ApplicantName = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=VISIBLE_TEXT)]
Amount = Annotated[int, msgspec.Meta(gt=0, le=MAX_AMOUNT, description="whole dollars")]
DOCUMENT_ID = r"^[A-Za-z0-9][A-Za-z0-9._/-]*(?!\n)$"
PATTERN_MEANINGS = {  # for error messages: what a value failing each pattern lacks
    VISIBLE_TEXT: "text with a non-blank character and no NUL (\\u0000)",
    NO_NUL: "text without NUL (\\u0000)",
    DOCUMENT_ID: "letters, digits and . _ / - only, starting with a letter or digit",
}

DocumentId = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=DOCUMENT_ID)]


# -- what the workflow takes, receives and returns ----------------------------


class LoanApplication(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The workflow input, exactly as POST /api/loans accepts it."""

    applicant_name: ApplicantName
    amount: Amount
    purpose: Annotated[str, msgspec.Meta(min_length=1, max_length=500, pattern=VISIBLE_TEXT)]


class DocumentSubmitted(msgspec.Struct, frozen=True):
    """Payload of the ``document-<type>`` signals."""

    document_type: DocumentType
    document_id: str
    uploaded_at: datetime


class ManagerApproval(msgspec.Struct, frozen=True):
    """Payload of the ``manager-approval`` signal."""

    approver_role: str
    approved: bool
    comments: str
    approved_at: datetime


class LoanDecision(msgspec.Struct, frozen=True):
    """The workflow output."""

    application_id: str
    decision: Literal["approved", "rejected"]
    approved_amount: int
    reason: str
    processed_at: datetime


# -- activities ---------------------------------------------------------------


class CreditCheckInput(msgspec.Struct, frozen=True):
    applicant_name: str


class CreditReport(msgspec.Struct, frozen=True):
    score: int
    provider: str
    checked_at: datetime


class VerifyDocumentInput(msgspec.Struct, frozen=True):
    application_id: str
    document_type: str
    document_id: str


class DocumentVerification(msgspec.Struct, frozen=True):
    document_type: str
    document_id: str
    valid: bool
    reason: str
    verified_at: datetime


class UnderwriterInput(msgspec.Struct, frozen=True):
    application_id: str
    amount: int
    credit_score: int


class UnderwriterDecision(msgspec.Struct, frozen=True):
    approved: bool
    reason: str


class DisbursementInput(msgspec.Struct, frozen=True):
    application_id: str
    applicant_name: str
    amount: int


class Disbursement(msgspec.Struct, frozen=True):
    transaction_id: str
    disbursed_at: datetime
    amount: int


def credit_score(applicant_name: str) -> int:
    """The demo bureau's score for a name: 300..850, the same in every process
    (sha256 of the case- and space-normalised name; about 30% fall below 600)."""
    normalised = " ".join(applicant_name.split()).casefold()
    fraction = int.from_bytes(hashlib.sha256(normalised.encode()).digest()[:8], "big") / 2**64
    return MIN_CREDIT_SCORE + round((MAX_CREDIT_SCORE - MIN_CREDIT_SCORE) * math.sqrt(fraction))


def document_problem(document_id: str) -> str | None:
    """Why the demo verifier refuses a document id, or None if it accepts it:
    a real id carries digits, and ids starting with INVALID are forged."""
    if document_id.upper().startswith("INVALID"):
        return "document is flagged as invalid by the issuer"
    if not any(ch.isdigit() for ch in document_id):
        return "document id carries no serial number"
    return None


def transaction_id_for(idempotency_key: str) -> str:
    """The disbursement's transaction id: a UUIDv5 of the activity's
    idempotency key, so every attempt of one disbursement names one payment."""
    return str(uuid.uuid5(TRANSACTION_NAMESPACE, idempotency_key))


def required_documents(amount: int) -> list[str]:
    """Identity and income always; proof of address above $50,000."""
    return [t for t in DOCUMENT_TYPES if t != "address" or amount > ADDRESS_PROOF_ABOVE]


def compliance_sleep_seconds() -> float:
    """The compliance hold; changing it never breaks replay (timers record
    their own due time)."""
    return float(os.environ.get("FLOWS_COMPLIANCE_SLEEP", COMPLIANCE_SLEEP_SECONDS))


def document_timeout_seconds() -> float:
    """How long a loan waits for its identity document before it is
    rejected; a loan started under another value keeps the timer it got."""
    return float(os.environ.get("FLOWS_DOCUMENT_TIMEOUT", DOCUMENT_TIMEOUT_SECONDS))


def _now() -> datetime:
    return datetime.now(UTC)


@flows.activity(
    "check-credit-score",
    retry=flows.RetryPolicy(initial_interval=1.0, backoff=2.0, max_interval=30.0, max_attempts=5, jitter=0.2),
    timeout=30.0,
)
def check_credit_score(ctx: flows.ActivityContext, inp: CreditCheckInput) -> CreditReport:
    return CreditReport(credit_score(inp.applicant_name), CREDIT_BUREAU, _now())


@flows.activity(
    "verify-document",
    retry=flows.RetryPolicy(initial_interval=1.0, backoff=2.0, max_interval=30.0, max_attempts=5, jitter=0.2),
    timeout=30.0,
)
def verify_document(ctx: flows.ActivityContext, inp: VerifyDocumentInput) -> DocumentVerification:
    problem = document_problem(inp.document_id)
    return DocumentVerification(inp.document_type, inp.document_id, problem is None, problem or "verified", _now())


@flows.activity(
    "get-underwriter-approval",
    retry=flows.RetryPolicy(initial_interval=2.0, backoff=2.0, max_interval=60.0, max_attempts=5, jitter=0.2),
    timeout=60.0,
)
def get_underwriter_approval(ctx: flows.ActivityContext, inp: UnderwriterInput) -> UnderwriterDecision:
    if inp.credit_score >= UNDERWRITER_CREDIT_SCORE:
        return UnderwriterDecision(True, f"Excellent credit history (score {inp.credit_score})")
    return UnderwriterDecision(
        False,
        f"credit score {inp.credit_score} is below the underwriting minimum of {UNDERWRITER_CREDIT_SCORE}"
        f" for loans over ${UNDERWRITER_ABOVE:,}",
    )


@flows.activity(
    "disburse-loan",
    # Safe to retry at length: the transaction id makes the payment idempotent.
    retry=flows.RetryPolicy(initial_interval=1.0, backoff=2.0, max_interval=60.0, max_attempts=10, jitter=0.2),
    timeout=60.0,
)
def disburse_loan(ctx: flows.ActivityContext, inp: DisbursementInput) -> Disbursement:
    return Disbursement(transaction_id_for(ctx.idempotency_key), _now(), inp.amount)


# -- the workflow ---------------------------------------------------------------


@flows.workflow(WORKFLOW_NAME, version=1,
                signals={"document-*": DocumentSubmitted, "manager-approval": ManagerApproval})
def loan_application_workflow(ctx: flows.WorkflowContext, app: LoanApplication) -> LoanDecision:
    application_id = str(ctx.workflow_id)

    def decide(decision: Literal["approved", "rejected"], amount: int, reason: str) -> LoanDecision:
        return LoanDecision(application_id, decision, amount, reason, ctx.now())

    credit = ctx.activity(check_credit_score, CreditCheckInput(app.applicant_name))
    if credit.score < APPROVAL_CREDIT_SCORE:
        return decide(
            "rejected", 0, f"Credit score {credit.score} is below the minimum of {APPROVAL_CREDIT_SCORE}"
        )

    for document_type in required_documents(app.amount):
        timeout = document_timeout_seconds() if document_type == "identity" else None
        try:
            document = ctx.wait_for_signal(f"document-{document_type}", type=DocumentSubmitted, timeout=timeout)
        except flows.Timeout as exc:
            return decide("rejected", 0, f"No {document_type} document received within {exc.seconds:g} seconds")
        check = ctx.activity(
            verify_document, VerifyDocumentInput(application_id, document_type, document.document_id)
        )
        if not check.valid:
            return decide(
                "rejected", 0, f"Document verification failed: {document_type} document {check.document_id}:"
                f" {check.reason}"
            )

    ctx.sleep(compliance_sleep_seconds())

    if int.from_bytes(ctx.random(8), "big") / 2**64 < REVIEW_PROBABILITY:
        approval = ctx.wait_for_signal("manager-approval", type=ManagerApproval)
        if not approval.approved:
            why = f": {approval.comments}" if approval.comments else ""
            return decide("rejected", 0, f"Declined by {approval.approver_role} review{why}")

    if app.amount > UNDERWRITER_ABOVE:
        underwriting = ctx.activity(
            get_underwriter_approval, UnderwriterInput(application_id, app.amount, credit.score)
        )
        if not underwriting.approved:
            return decide("rejected", 0, f"Declined by underwriter: {underwriting.reason}")

    ctx.activity(disburse_loan, DisbursementInput(application_id, app.applicant_name, app.amount))
    return decide("approved", app.amount, APPROVED_REASON)


LoanApplicationWorkflow = loan_application_workflow
ACTIVITIES = [check_credit_score, verify_document, get_underwriter_approval, disburse_loan]
