"""Prometheus counters, gauges and histograms updated from one thread (the event loop's).

prometheus_client guards every value with a lock and checks on each update that the metric
is not a labelled parent; a histogram's ``observe`` walks its buckets in Python and takes
two locks. On the tunnel's hot path (a few updates per proxied request in the gateway and
in the agent) that was about a tenth of the Python each request runs, and a request's
Python, run on cold caches, is most of what our gateway and agent add to its latency.
These subclasses keep prometheus_client's names, labels, registries and exposition (its
own ``collect`` reads them) and replace only the values and the update methods: plain
floats, one call per update, a histogram's bucket found by bisection.

Use them where every update happens on the event loop's thread (reading them, as a scrape
does, may happen anywhere). They rely on prometheus_client's ``_metric_init``, ``_value``,
``_sum``, ``_buckets`` and ``_upper_bounds``, pinned with it;
tests/unit/kits/test_loop_metrics.py compares their exposition with the stock classes'.
"""

from __future__ import annotations

from bisect import bisect_left

from prometheus_client import Counter, Gauge, Histogram


class _Value:
    """What prometheus_client's ``_child_samples`` read from a value, without a lock."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def get(self) -> float:
        return self.value

    def set(self, value: float, timestamp: float | None = None) -> None:  # Counter.reset
        self.value = value

    def get_exemplar(self) -> None:
        return None


class _LabelledParent(_Value):
    """A labelled metric's own value: it has none, its ``labels(...)`` children do."""

    __slots__ = ()

    def __init__(self) -> None:
        pass

    @property
    def value(self) -> float:
        raise ValueError("a labelled metric is updated through .labels(...), not by itself")

    @value.setter
    def value(self, _: float) -> None:
        raise ValueError("a labelled metric is updated through .labels(...), not by itself")


_PARENT: _Value = _LabelledParent()


class LoopCounter(Counter):
    _plain = _PARENT  # a child's own replaces it

    def _metric_init(self) -> None:
        super()._metric_init()
        self._plain = self._value = _Value()

    def inc(self, amount: float = 1, exemplar: object = None) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self._plain.value += amount


class LoopGauge(Gauge):
    _plain = _PARENT

    def _metric_init(self) -> None:
        super()._metric_init()
        self._plain = self._value = _Value()

    def inc(self, amount: float = 1) -> None:
        self._plain.value += amount

    def dec(self, amount: float = 1) -> None:
        self._plain.value -= amount

    def set(self, value: float) -> None:
        self._plain.value = float(value)


class LoopHistogram(Histogram):
    _plain_sum = _PARENT

    def _metric_init(self) -> None:
        super()._metric_init()
        self._plain_sum = self._sum = _Value()
        self._plain_buckets = [_Value() for _ in self._upper_bounds]
        self._buckets = self._plain_buckets

    def observe(self, amount: float, exemplar: object = None) -> None:
        self._plain_sum.value += amount  # first: a labelled parent has no buckets
        if amount == amount:  # noqa: PLR0124  # not NaN, which no bucket counts (as stock)
            # the first bucket whose upper bound is at least ``amount`` (the last is +Inf)
            self._plain_buckets[bisect_left(self._upper_bounds, amount)].value += 1
