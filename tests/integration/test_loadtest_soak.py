"""The soak scenario runs tiny (seconds, a few workflows a second) and its
report holds every series and a verdict on each target. Whether the
targets are met is for a real soak to say, never a test."""

from __future__ import annotations

import pytest

from tests.integration.test_loadtest_scripts import _report, _run

pytestmark = pytest.mark.slow

PANELS = {
    "RSS (MiB)", "threads", "latency of the workflows ended in the window (ms)", "workflows per second",
    "task queue", "dead tuples", "table size with indexes (MiB)",
}


def test_the_soak_samples_every_series_and_judges_every_target() -> None:
    report = _report(_run(["loadtest", "soak", "--minutes", "0.1", "--window", "2", "--rate", "5",
                           "--grace", "60", "--activity-timeout", "600", "--timeout", "200"]))
    metrics, panels = report["metrics"], report["runs"][0]["panels"]
    assert set(panels) == PANELS
    windows = len(panels["latency of the workflows ended in the window (ms)"]["p99"])
    assert windows >= 2
    processes = {"supervisor", "worker 1", "worker 2"}
    for title in ("RSS (MiB)", "threads"):
        assert set(panels[title]) == processes
        assert all(len(series) == windows + 1 for series in panels[title].values())  # and the one before the load
    assert set(panels["workflows per second"]) == {"started", "ended"}
    assert set(panels["task queue"]) == {"due (backlog)", "all"}
    for title in ("dead tuples", "table size with indexes (MiB)"):
        assert {"workflows", "activities", "history_events", "timers", "signals", "task_queue"} <= set(panels[title])
        assert "lt_soak_effects" not in panels[title]

    assert metrics["started"] >= 20 and metrics["activity_timeout_s"] == 600
    assert metrics["effects"] > 0 and metrics["signals_sent"] > 0
    verdicts = {t["metric"]: t for t in report["targets"]}
    assert set(verdicts) == {"worker_rss_growth_pct", "p99_last_vs_first", "lost", "duplicated"}
    for target in verdicts.values():
        assert target["value"] is not None and target["met"] in (True, False), target
