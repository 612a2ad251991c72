"""Declared signal types: a payload that cannot decode into what the
workflow waits for is refused where it is sent, and nothing is stored."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
import psycopg
import pytest

import flows
from flows import Engine, InvalidInput


class Document(msgspec.Struct, frozen=True):
    document_id: str
    uploaded_at: datetime


@flows.workflow("typed-signals", signals={"document-*": Document, "note": str})
def typed_signals(ctx: flows.WorkflowContext, kinds: list[str]) -> list[str]:
    docs = [ctx.wait_for_signal(f"document-{kind}") for kind in kinds]  # decoded as the declared Document
    return [f"{d.document_id}@{d.uploaded_at.year}" for d in docs] + [ctx.wait_for_signal("note")]


def signals_stored(db: psycopg.Connection[Any]) -> int:
    return int(db.execute("SELECT count(*) FROM signals").fetchone()[0])


def test_a_payload_of_the_wrong_shape_is_refused_at_send_and_the_workflow_goes_on(
    engine: Engine, start_worker: Any, db: psycopg.Connection[Any]
) -> None:
    start_worker([typed_signals], [])
    run = engine.start(typed_signals, ["id"])
    with pytest.raises(InvalidInput, match="uploaded_at") as refused:
        engine.send_signal(run.workflow_name, run.workflow_id, "document-id", {"document_id": "d1"})
    assert refused.value.path == "payload" and "'document-id'" in str(refused.value)
    with pytest.raises(InvalidInput, match="Expected `str`"):
        engine.send_signal(run.workflow_name, run.workflow_id, "note", 42)
    assert signals_stored(db) == 0

    engine.send_signal(run.workflow_name, run.workflow_id, "document-id",
                       {"document_id": "d1", "uploaded_at": datetime(2026, 1, 2, tzinfo=UTC).isoformat()})
    engine.send_signal(run.workflow_name, run.workflow_id, "note", "ok")
    engine.send_signal(run.workflow_name, run.workflow_id, "undeclared", {"anything": [1]})  # not declared: stored
    assert engine.result(run.workflow_name, run.workflow_id, timeout=20) == ["d1@2026", "ok"]


def test_signal_with_start_checks_the_declared_type_before_starting(
    engine: Engine, db: psycopg.Connection[Any]
) -> None:
    with pytest.raises(InvalidInput, match="uploaded_at"):
        engine.signal_with_start(typed_signals, ["x"], "document-x", {"document_id": "d"}, workflow_id=uuid.uuid4())
    assert db.execute("SELECT count(*) FROM workflows").fetchone() == (0,)


def test_signal_declarations_are_names_or_patterns() -> None:
    with pytest.raises(flows.ConfigurationError, match="declared by name"):
        flows.workflow("bad-signals", signals={"": str})
