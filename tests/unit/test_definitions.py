from typing import Any

import msgspec
import pytest

import flows
from flows import codec
from flows.definitions import RetryPolicy


def test_backoff_grows_by_the_factor_and_stops_at_the_cap() -> None:
    policy = RetryPolicy(initial_interval=1.0, backoff=2.0, max_interval=5.0, max_attempts=10, jitter=0.0)
    assert [policy.delay_seconds(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_jitter_stays_within_its_fraction() -> None:
    policy = RetryPolicy(initial_interval=10.0, jitter=0.1)
    assert policy.delay_seconds(1, lambda: 0.0) == pytest.approx(9.0)
    assert policy.delay_seconds(1, lambda: 1.0) == pytest.approx(11.0)


@pytest.mark.parametrize("kwargs", [{"max_attempts": 0}, {"backoff": 0.5}, {"jitter": 2.0}, {"initial_interval": -1}])
def test_nonsense_retry_policies_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(flows.ConfigurationError):
        RetryPolicy(**kwargs)


class Point(msgspec.Struct):
    x: int
    y: int


def test_annotations_decide_how_inputs_and_outputs_decode() -> None:
    @flows.activity("unit-move")
    def move(ctx: flows.ActivityContext, p: Point) -> Point:
        return Point(p.x + 1, p.y)

    assert move.input_type is Point and move.output_type is Point
    assert codec.decode(codec.encode(Point(1, 2)), move.input_type) == Point(1, 2)
    with pytest.raises(flows.InvalidInput, match="x"):
        codec.decode(b'{"x": "one", "y": 2}', Point)


def test_a_name_is_defined_once() -> None:
    @flows.workflow("unit-once")
    def first(ctx: flows.WorkflowContext, inp: int) -> int:
        return inp

    with pytest.raises(flows.ConfigurationError, match="already defined"):
        @flows.workflow("unit-once")
        def second(ctx: flows.WorkflowContext, inp: int) -> int:
            return inp


def test_names_with_the_shard_marker_are_refused() -> None:
    with pytest.raises(flows.ConfigurationError):
        flows.workflow("bad-shard-1")


def test_values_that_are_not_json_are_refused_with_a_clear_error() -> None:
    with pytest.raises(flows.InvalidInput, match="JSON"):
        codec.encode(object())
