"""Prometheus metrics, one registry per gateway (several may run in one test process).

Every label set is bounded: ``plane_id`` takes only planeIDs an agent has connected with
since the gateway started (a request for any other plane counts as ``unknown``, so a caller
cannot grow the series by inventing planeIDs), ``verb`` is a Kubernetes verb
(``protocol.verbs``), ``reason`` and ``direction`` are fixed sets, and no request, run or CR
name is ever a label. docs/observability.md lists the series.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from prometheus_client import CollectorRegistry

from workflowplane.kits.loop_metrics import LoopCounter, LoopGauge, LoopHistogram

UNKNOWN_PLANE: Final = "unknown"
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
)
# One WebSocket message (a frame, or a fragmented message as a whole): 256 B to 64 MiB.
FRAME_BUCKETS = tuple(float(4**n * 256) for n in range(10))
# Why an agent connection ended. The gateway's own decisions; else the agent closed it or
# the network dropped it (``connection-closed``), or the WebSocket failed (``protocol-error``).
DISCONNECT_REASONS: Final = frozenset(
    {
        "connection-closed",
        "protocol-error",
        "heartbeat-timeout",
        "certificate-expired",
        "not-authorized",
        "reconnect-requested",
        "gateway-shutdown",
        "replaced",
        "write-stalled",
    }
)
FRAME_DIRECTIONS: Final = ("in", "out")  # in: from agents; out: to agents
MAX_CACHED_HANDLES = 1024  # labelled series handles kept per cache (label sets are bounded)


class GatewayMetrics:
    """The gateway's series; updated on its event loop only (`kits/loop_metrics`)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._planes: set[str] = set()
        self.agents = LoopGauge(
            "workflowplane_gateway_connected_agents",
            "Agent connections per plane",
            ["plane_id"],
            registry=self.registry,
        )
        self.agent_connections = LoopCounter(
            "workflowplane_gateway_agent_connections_total",
            "Agent connections admitted, per plane",
            ["plane_id"],
            registry=self.registry,
        )
        self.agent_disconnections = LoopCounter(
            "workflowplane_gateway_agent_disconnections_total",
            "Agent connections ended, per plane and reason (connection-closed: by the agent or "
            "the network; protocol-error; heartbeat-timeout; certificate-expired; "
            "not-authorized: no CR admits it any more; reconnect-requested; gateway-shutdown)",
            ["plane_id", "reason"],
            registry=self.registry,
        )
        self.requests = LoopCounter(
            "workflowplane_gateway_proxy_requests_total",
            "Proxied requests answered, by plane, Kubernetes verb and status code (counted "
            "when the status goes out: a stream when it starts)",
            ["plane_id", "verb", "code"],
            registry=self.registry,
        )
        self.latency = LoopHistogram(
            "workflowplane_gateway_proxy_request_seconds",
            "Proxied request latency through the tunnel, by plane and verb (non-streaming "
            "requests that got an answer from the agent)",
            ["plane_id", "verb"],
            registry=self.registry,
            buckets=LATENCY_BUCKETS,
        )
        self.requests_in_flight = LoopGauge(
            "workflowplane_gateway_proxy_requests_in_flight",
            "Proxied (non-streaming) requests sent to an agent and not answered yet, per plane",
            ["plane_id"],
            registry=self.registry,
        )
        self.streams_in_flight = LoopGauge(
            "workflowplane_gateway_streams_in_flight",
            "Proxied streams (watch/follow) open through an agent, per plane",
            ["plane_id"],
            registry=self.registry,
        )
        self.frame_bytes = LoopHistogram(
            "workflowplane_gateway_frame_bytes",
            "Size of the WebSocket messages exchanged with agents (in: from agents, out: to "
            "agents; an oversized message counts with the size seen when it was skipped)",
            ["direction"],
            registry=self.registry,
            buckets=FRAME_BUCKETS,
        )
        self.subscribers_dropped = LoopCounter(
            "workflowplane_gateway_event_subscribers_dropped_total",
            "Push-channel subscribers dropped because their event queue was full (not read)",
            registry=self.registry,
        )
        self.late = LoopCounter(
            "workflowplane_gateway_late_responses_total",
            "Responses that arrived after their request timed out",
            registry=self.registry,
        )
        self.rejected = LoopCounter(
            "workflowplane_gateway_admissions_rejected_total",
            "Agent connections refused, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.dropped_frames = LoopCounter(
            "workflowplane_gateway_dropped_frames_total",
            "Malformed or unexpected frames from agents",
            registry=self.registry,
        )
        self.oversized = LoopCounter(
            "workflowplane_gateway_oversized_messages_total",
            "Agent messages over the frame limit: skipped, their request failed with 502",
            registry=self.registry,
        )
        self.slow_streams = LoopCounter(
            "workflowplane_gateway_slow_streams_closed_total",
            "Streams closed because the caller fell further behind than the stream buffer",
            registry=self.registry,
        )
        self.streams_refused = LoopCounter(
            "workflowplane_gateway_streams_refused_total",
            "Streams refused with 429, by the cap that was reached (agent or cr)",
            ["cap"],
            registry=self.registry,
        )
        self.expired = LoopCounter(
            "workflowplane_gateway_expired_connections_total",
            "Agent connections closed because their client certificate expired",
            registry=self.registry,
        )
        self.invalid_status = LoopCounter(
            "workflowplane_gateway_invalid_status_codes_total",
            "Agent answers whose status code is not a final HTTP status (answered 502)",
            registry=self.registry,
        )
        self.throttled = LoopCounter(
            "workflowplane_gateway_throttled_reads_total",
            "Times an agent sent more useless frames per second than allowed and was not read",
            registry=self.registry,
        )
        self.unfinished_message_bytes = LoopGauge(
            "workflowplane_gateway_unfinished_message_bytes",
            "Bytes of agent messages being assembled, all connections together (bounded by "
            "the gateway's budget: 4x --max-frame-bytes; a message past it fails with 502)",
            registry=self.registry,
        )
        for direction in FRAME_DIRECTIONS:
            self.frame_bytes.labels(direction)
        # the two looked up once: each proxied request observes one of each
        self.frame_in, self.frame_out = (
            self.frame_bytes.labels("in"),
            self.frame_bytes.labels("out"),
        )

    def count_unfinished(self, held: Callable[[], int]) -> None:
        """``unfinished_message_bytes`` reads ``held`` when scraped (nothing per frame)."""
        self.unfinished_message_bytes.set_function(held)

    def plane(self, plane_id: str) -> str:
        """``plane_id`` as a label value: itself once an agent of it has connected, else
        ``unknown`` (see the module docstring)."""
        return plane_id if plane_id in self._planes else UNKNOWN_PLANE

    def agent_connected(self, plane_id: str) -> None:
        self._planes.add(plane_id)
        self.agent_connections.labels(plane_id).inc()

    def agent_disconnected(self, plane_id: str, reason: str) -> None:
        reason = reason if reason in DISCONNECT_REASONS else "connection-closed"
        self.agent_disconnections.labels(plane_id, reason).inc()


class MetricHandles:
    """The labelled series each proxied request touches, looked up once per label set
    (``labels()`` costs more than the observation itself). Label sets are bounded (planes,
    verbs, codes); past ``MAX_CACHED_HANDLES`` a handle is looked up each time."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics
        self._cache: dict[tuple[str, ...], Any] = {}

    def _child(self, metric: LoopCounter | LoopGauge | LoopHistogram, *labels: str) -> Any:
        key = (metric._name, *labels)
        child = self._cache.get(key)
        if child is None:
            child = metric.labels(*labels)
            if len(self._cache) < MAX_CACHED_HANDLES:
                self._cache[key] = child
        return child

    def in_flight(self, plane_id: str) -> Any:
        return self._child(self._metrics.requests_in_flight, plane_id)

    def latency(self, plane_id: str, verb: str) -> Any:
        return self._child(self._metrics.latency, plane_id, verb)

    def answered(self, plane_id: str, verb: str, code: int) -> Any:
        """The answers counter of a plane (``unknown`` until an agent of it connected)."""
        return self._child(self._metrics.requests, self._metrics.plane(plane_id), verb, str(code))
