from typing import Any, Callable, Iterator

import psycopg
import pytest

from flows import Worker
from tests import engine_app


@pytest.fixture
def ledger(db: psycopg.Connection[Any], db_url: str, monkeypatch: pytest.MonkeyPatch) -> psycopg.Connection[Any]:
    db.execute(engine_app.LEDGER_SQL)
    monkeypatch.setattr(engine_app, "LEDGER_DSN", db_url)
    return db


@pytest.fixture
def worker(start_worker: Callable[..., Worker], ledger: Any) -> Iterator[Worker]:
    yield start_worker(engine_app.ALL_WORKFLOWS, engine_app.ALL_ACTIVITIES)
