"""The agent's Prometheus series, on a registry of its own (several agents run in one test
process, so never the global one), served with its health probes (``agent/health.py``).

An agent serves one plane, so no series has a plane label: Prometheus' target labels say
which agent it is. Label sets are bounded: ``reason`` and ``direction`` are fixed sets,
``verb`` is a Kubernetes verb (``protocol.verbs``), ``code`` an HTTP status or one of
``error``/``timeout``/``cancelled``. Per request the agent logs one DEBUG line with its
``request_id`` (the gateway's requestID), so both sides of one request can be joined.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Final

from prometheus_client import CollectorRegistry

from workflowplane.kits.loop_metrics import LoopCounter, LoopGauge, LoopHistogram
from workflowplane.protocol import StreamInit, TunnelRequest
from workflowplane.protocol.messages import opens_stream
from workflowplane.protocol.verbs import kube_verb

log = logging.getLogger(__name__)
UPSTREAM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
MAX_CACHED_CHILDREN = 512  # (verb, code) metric handles kept, not looked up per request
FRAME_BUCKETS = tuple(float(4**n * 256) for n in range(10))  # 256 B .. 64 MiB
# Why a connection to the gateway ended: the gateway closed it, no traffic for the dead-after
# time, a WebSocket or network error, the agent itself reconnecting (a new certificate), or
# the agent stopping.
DISCONNECT_REASONS: Final = (
    "gateway-closed",
    "timeout",
    "error",
    "reconnect-requested",
    "shutdown",
)


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.connected = LoopGauge(
            "workflowplane_agent_connected",
            "1 while the agent holds a connection a gateway replica admitted, else 0",
            registry=self.registry,
        )
        self.replicas = LoopGauge(
            "workflowplane_agent_gateway_replicas",
            "Gateway replicas the agent knows (known: found by discovery, dialled) and holds "
            "an admitted connection to (connected)",
            ["state"],
            registry=self.registry,
        )
        self._open = 0  # admitted connections open, over every replica
        self.connections = LoopCounter(
            "workflowplane_agent_connections_total",
            "Connections to the gateway the gateway admitted",
            registry=self.registry,
        )
        self.disconnections = LoopCounter(
            "workflowplane_agent_disconnections_total",
            "Admitted connections that ended, by reason (gateway-closed, timeout: no traffic "
            "for the dead-after time, error, reconnect-requested: a new certificate, shutdown)",
            ["reason"],
            registry=self.registry,
        )
        self.upstream = LoopHistogram(
            "workflowplane_agent_upstream_request_duration_seconds",
            "Requests to the plane's API server, from sending to its status and headers, by "
            "Kubernetes verb and status code (error, timeout, cancelled: no answer)",
            ["verb", "code"],
            registry=self.registry,
            buckets=UPSTREAM_BUCKETS,
        )
        self.requests_in_flight = LoopGauge(
            "workflowplane_agent_requests_in_flight",
            "Requests from the gateway being served (not streams)",
            registry=self.registry,
        )
        self.streams_in_flight = LoopGauge(
            "workflowplane_agent_streams_in_flight",
            "Streams (watch/follow) from the gateway being served",
            registry=self.registry,
        )
        self.frame_bytes = LoopHistogram(
            "workflowplane_agent_frame_bytes",
            "Size of the WebSocket messages exchanged with the gateway (in: from it, out: to it)",
            ["direction"],
            registry=self.registry,
            buckets=FRAME_BUCKETS,
        )
        self._upstream_children: dict[tuple[str, str], Any] = {}
        for state in ("known", "connected"):
            self.replicas.labels(state)
        for reason in DISCONNECT_REASONS:
            self.disconnections.labels(reason)
        for direction in ("in", "out"):
            self.frame_bytes.labels(direction)

    # ---- the connection ---------------------------------------------------------------------

    def connection_opened(self) -> None:
        self.connections.inc()
        self._open += 1
        self.connected.set(1)

    def connection_closed(self, reason: str) -> None:
        self._open = max(0, self._open - 1)
        self.connected.set(1 if self._open else 0)
        self.disconnections.labels(reason if reason in DISCONNECT_REASONS else "error").inc()

    def replicas_seen(self, known: int, connected: int) -> None:
        self.replicas.labels("known").set(known)
        self.replicas.labels("connected").set(connected)

    # ---- requests ---------------------------------------------------------------------------

    def track(
        self,
        frame: TunnelRequest | StreamInit,
        task: asyncio.Task[None],
        streams: bool | None = None,
    ) -> None:
        """Count ``task`` (serving ``frame``) in flight until it ends, then log its end at
        DEBUG with the request's id. ``streams``: whether it opens a stream, when known."""
        ended = self.begin(frame, streams)
        task.add_done_callback(lambda done: ended(done.cancelled()))

    def begin(
        self, frame: TunnelRequest | StreamInit, streams: bool | None = None
    ) -> Callable[[bool], None]:
        """Count ``frame``'s request in flight; the call it returns (``cancelled``) ends it."""
        streams = opens_stream(frame) if streams is None else streams
        gauge = self.streams_in_flight if streams else self.requests_in_flight
        gauge.inc()
        started = time.monotonic()

        def ended(cancelled: bool) -> None:
            gauge.dec()
            if not log.isEnabledFor(logging.DEBUG):  # no arguments built for nothing
                return
            log.debug(
                "%s %s %s (request %s) after %.3fs",
                "cancelled" if cancelled else "served",
                frame.method,
                frame.path,
                frame.request_id,
                time.monotonic() - started,
                extra={"request_id": frame.request_id},
            )

        return ended

    def upstream_observed(
        self, method: str, path: str, query: str, code: str, seconds: float
    ) -> None:
        """One request to the API server (``Upstream.observe``): from sending to its status
        line and headers, by verb and code."""
        key = (kube_verb(method, path, query), code)
        child = self._upstream_children.get(key)
        if child is None:  # codes are the API server's few statuses: a small, bounded cache
            child = self.upstream.labels(*key)
            if len(self._upstream_children) < MAX_CACHED_CHILDREN:
                self._upstream_children[key] = child
        child.observe(seconds)
