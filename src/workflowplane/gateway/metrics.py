"""Prometheus metrics, one registry per gateway (several may run in one test process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.agents = Gauge(
            "workflowplane_gateway_connected_agents",
            "Agent connections per plane",
            ["plane_id"],
            registry=self.registry,
        )
        self.requests = Counter(
            "workflowplane_gateway_proxy_requests_total",
            "Proxied requests by status code",
            ["code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "workflowplane_gateway_proxy_request_seconds",
            "Proxied request latency (non-streaming)",
            registry=self.registry,
            buckets=(
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
            ),
        )
        self.late = Counter(
            "workflowplane_gateway_late_responses_total",
            "Responses that arrived after their request timed out",
            registry=self.registry,
        )
        self.rejected = Counter(
            "workflowplane_gateway_admissions_rejected_total",
            "Agent connections refused, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.dropped_frames = Counter(
            "workflowplane_gateway_dropped_frames_total",
            "Malformed or unexpected frames from agents",
            registry=self.registry,
        )
        self.oversized = Counter(
            "workflowplane_gateway_oversized_messages_total",
            "Agent messages over the frame limit: skipped, their request failed with 502",
            registry=self.registry,
        )
        self.slow_streams = Counter(
            "workflowplane_gateway_slow_streams_closed_total",
            "Streams closed because the caller fell further behind than the stream buffer",
            registry=self.registry,
        )
        self.streams_refused = Counter(
            "workflowplane_gateway_streams_refused_total",
            "Streams refused with 429, by the cap that was reached (agent or cr)",
            ["cap"],
            registry=self.registry,
        )
        self.expired = Counter(
            "workflowplane_gateway_expired_connections_total",
            "Agent connections closed because their client certificate expired",
            registry=self.registry,
        )
        self.invalid_status = Counter(
            "workflowplane_gateway_invalid_status_codes_total",
            "Agent answers whose status code is not a final HTTP status (answered 502)",
            registry=self.registry,
        )
        self.throttled = Counter(
            "workflowplane_gateway_throttled_reads_total",
            "Times an agent sent more useless frames per second than allowed and was not read",
            registry=self.registry,
        )
