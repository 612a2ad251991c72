import pytest

from loadtest.stats import percentile, rate_series, summary_ms


def test_percentiles_interpolate_between_ranks() -> None:
    assert percentile([], 50) is None
    assert percentile([5.0], 99) == 5.0
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == pytest.approx(2.5)
    assert percentile(list(range(101)), 99) == pytest.approx(99.0)
    assert summary_ms([0.001, 0.002, 0.003])["p50_ms"] == pytest.approx(2.0)


def test_rates_are_counted_per_slot_including_empty_ones() -> None:
    assert rate_series([], 0.0) == []
    assert rate_series([0.1, 0.2, 1.1], 0.0, bucket=0.5) == [(0.0, 4.0), (0.5, 0.0), (1.0, 2.0)]
