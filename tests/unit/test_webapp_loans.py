"""The loan workflow's pure parts: the demo services' rules and the
disbursement's idempotent transaction id."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import datetime

import pytest

import flows
from tests.conftest import ROOT
from webapp import loans


def test_credit_score_is_stable_across_processes() -> None:
    # Python's hash() differs per process (PYTHONHASHSEED); the score must not.
    code = "from webapp.loans import credit_score; print(credit_score('Jane Smith'), credit_score('John Doe'))"
    outs = {
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                       env={**os.environ, "PYTHONHASHSEED": seed}).stdout
        for seed in ("1", "2")
    }
    assert outs == {"753 719\n"}


def test_credit_scores_span_300_to_850_with_a_minority_rejected() -> None:
    scores = [loans.credit_score(f"Person {i}") for i in range(5000)]
    assert min(scores) >= 300 and max(scores) <= 850
    assert min(scores) < 320 and max(scores) > 830
    rejected = sum(s < loans.APPROVAL_CREDIT_SCORE for s in scores) / len(scores)
    assert 0.2 < rejected < 0.4


def test_credit_score_ignores_case_and_spacing() -> None:
    assert loans.credit_score("  jane   SMITH ") == loans.credit_score("Jane Smith")
    assert loans.credit_score("Jane Smith") != loans.credit_score("Jane Smyth")


@pytest.mark.parametrize(
    ("amount", "documents"),
    [(1, ["identity", "income"]), (50_000, ["identity", "income"]), (50_001, ["identity", "income", "address"])],
)
def test_required_documents(amount: int, documents: list[str]) -> None:
    assert loans.required_documents(amount) == documents


@pytest.mark.parametrize(
    ("document_id", "valid"),
    [("DL-987654321", True), ("W2-2023-456", True), ("UTIL-202401-789", True), ("INVALID-1", False),
     ("invalid-99", False), ("NO-DIGITS", False)],
)
def test_document_verification_rule(document_id: str, valid: bool) -> None:
    assert (loans.document_problem(document_id) is None) == valid


def _ctx(workflow_id: uuid.UUID, seq: int, attempt: int) -> flows.ActivityContext:
    return flows.ActivityContext(
        workflow_id, "loan-application-shard-0", flows.DEFAULT_TENANT_ID, uuid.uuid4(), "disburse-loan", seq, attempt
    )


def test_a_retried_disbursement_names_the_same_transaction() -> None:
    wid = uuid.uuid4()
    inp = loans.DisbursementInput(str(wid), "Jane Smith", 75_000)
    first = loans.disburse_loan(_ctx(wid, 10, attempt=0), inp)
    retry = loans.disburse_loan(_ctx(wid, 10, attempt=3), inp)
    other = loans.disburse_loan(_ctx(uuid.uuid4(), 10, attempt=0), inp)
    assert first.transaction_id == retry.transaction_id != other.transaction_id
    assert uuid.UUID(first.transaction_id).version == 5
    assert first.amount == 75_000 and isinstance(first.disbursed_at, datetime)


def test_every_activity_has_its_own_retry_policy_and_timeout() -> None:
    names = {a.name for a in loans.ACTIVITIES}
    assert names == {"check-credit-score", "verify-document", "get-underwriter-approval", "disburse-loan"}
    for act in loans.ACTIVITIES:
        assert act.retry != flows.RetryPolicy() and act.retry.max_attempts > 1, act.name
        assert act.timeout_seconds <= 60, act.name


@pytest.mark.parametrize(("score", "approved"), [(679, False), (680, True), (850, True)])
def test_underwriter_rule(score: int, approved: bool) -> None:
    decision = loans.get_underwriter_approval(_ctx(uuid.uuid4(), 11, 0),
                                              loans.UnderwriterInput("a", 150_000, score))
    assert decision.approved is approved


def test_compliance_sleep_is_five_seconds_unless_overridden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLOWS_COMPLIANCE_SLEEP", raising=False)
    assert loans.compliance_sleep_seconds() == 5.0
    monkeypatch.setenv("FLOWS_COMPLIANCE_SLEEP", "0.25")
    assert loans.compliance_sleep_seconds() == 0.25
