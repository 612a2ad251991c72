"""Scraping /metrics over HTTP in tests, and what the database says the
counters should be."""

from __future__ import annotations

import re
import time
import urllib.request
from typing import Any, Callable, TypeVar

import psycopg
from prometheus_client.parser import text_string_to_metric_families

T = TypeVar("T")
# Labels a scrape may carry: names of workflows, activities and shards, never ids.
ALLOWED_LABELS = {"workflow", "activity", "shard", "cause", "le"}
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)


class Scrape:
    """One scrape: ``value(name, **labels)`` sums the samples that match."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples = [(s.name, dict(s.labels), s.value)
                        for family in text_string_to_metric_families(text) for s in family.samples]

    def value(self, name: str, **labels: str) -> float:
        return sum(v for n, got, v in self.samples
                   if n == name and all(got.get(k) == want for k, want in labels.items()))

    def has(self, name: str) -> bool:
        return any(n == name for n, _, _ in self.samples)

    def label_names(self) -> set[str]:
        return {k for _, labels, _ in self.samples for k in labels}


def scrape(url: str, headers: dict[str, str] | None = None) -> Scrape:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=15) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        return Scrape(resp.read().decode())


def assert_no_ids(s: Scrape) -> None:
    """No workflow id, activity id or other UUID in any label or line."""
    assert not UUID.search(s.text), UUID.search(s.text)
    assert s.label_names() <= ALLOWED_LABELS, s.label_names()


def count(db: psycopg.Connection[Any], query: str, *params: Any) -> int:
    row = db.execute(query, params or None).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return int(row[0] or 0)


def workflows(db: psycopg.Connection[Any], base: str, status: str) -> int:
    return count(db, "SELECT count(*) FROM workflows WHERE name LIKE %s AND status = %s", base + "-shard-%", status)


def attempts(db: psycopg.Connection[Any], activity: str, failed_only: bool = False) -> int:
    """Attempt ends the history records for ``activity``."""
    kinds = ["activity_failed", "activity_retrying"] + ([] if failed_only else ["activity_completed"])
    return count(db, "SELECT count(*) FROM history_events WHERE event_type = ANY(%s) AND event_data->>'name' = %s",
                 kinds, activity)


def settled(check: Callable[[], T], timeout: float = 10.0) -> T:
    """``check()``'s value once it passes: workers write what they counted
    within ``flows.metrics.FLUSH_SECONDS``, and the database gauges are
    cached a few seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
