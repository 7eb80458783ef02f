"""The loop's metrics expose what prometheus_client's own do, at a call per update."""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from workflowplane.kits.loop_metrics import LoopCounter, LoopGauge, LoopHistogram


def _exposition(counter: Any, gauge: Any, histogram: Any) -> str:
    registry = CollectorRegistry()
    requests = counter("requests_total", "Requests", ["plane"], registry=registry)
    in_flight = gauge("in_flight", "In flight", registry=registry)
    latency = histogram(
        "latency_seconds", "Latency", ["verb"], registry=registry, buckets=(0.1, 1, 10)
    )
    requests.labels("p").inc()
    requests.labels("p").inc(2.5)
    requests.labels("q")  # a series that exists at zero
    in_flight.inc(3)
    in_flight.dec()
    in_flight.set(7.5)
    in_flight.inc()
    for seconds in (0.05, 0.1, 0.5, 1, 10, 11, -1, math.inf):
        latency.labels("get").observe(seconds)
    latency.labels("list").observe(math.nan)  # in the sum, in no bucket
    text = generate_latest(registry).decode()
    return re.sub(r"(_created\{[^}]*\}|_created) \S+", r"\1 <time>", text)


def test_the_exposition_is_prometheus_clients_own() -> None:
    stock = _exposition(Counter, Gauge, Histogram)
    assert _exposition(LoopCounter, LoopGauge, LoopHistogram) == stock
    assert 'latency_seconds_bucket{le="1.0",verb="get"} 5.0' in stock  # 1 falls in le=1
    assert 'latency_seconds_bucket{le="+Inf",verb="get"} 8.0' in stock
    assert 'latency_seconds_count{verb="list"} 0.0' in stock


@pytest.mark.parametrize(
    "update",
    [
        lambda: LoopCounter("c_total", "c", ["a"], registry=None).inc(),
        lambda: LoopGauge("g", "g", ["a"], registry=None).set(1),
        lambda: LoopHistogram("h", "h", ["a"], registry=None).observe(1),
    ],
)
def test_a_labelled_metric_itself_cannot_be_updated(update: Callable[[], None]) -> None:
    with pytest.raises(ValueError, match=r"through \.labels"):
        update()


def test_a_counter_never_goes_down_but_may_be_reset() -> None:
    counter = LoopCounter("c_total", "c", registry=None)
    counter.inc(2)
    with pytest.raises(ValueError, match="non-negative"):
        counter.inc(-1)
    counter.reset()
    counter.inc()
    assert counter._value.get() == 1


def _python_calls(update: Callable[[], None]) -> int:
    calls = 0

    def count(frame: FrameType, event: str, arg: object) -> None:
        nonlocal calls
        calls += event == "call"

    sys.setprofile(count)
    try:
        update()
    finally:
        sys.setprofile(None)
    return calls - 1  # the update lambda itself


def test_an_update_is_one_python_call_where_prometheus_client_makes_several() -> None:
    stock = Histogram("s", "s", ["v"], registry=None).labels("get")
    loop = LoopHistogram("l", "l", ["v"], registry=None).labels("get")
    counter = LoopCounter("c_total", "c", registry=None)
    assert _python_calls(lambda: stock.observe(0.3)) >= 4
    assert _python_calls(lambda: loop.observe(0.3)) == 1
    assert _python_calls(lambda: counter.inc(1)) == 1
