"""Every answer of the Kubernetes proxy, counted and logged once, when its status goes out.

Registered on the internal application's ``on_response_prepare`` signal, so it sees each
answer whatever code path made it (the plane's answer, a stream's head, or an error the
gateway gave itself) without each handler having to report it, and a stream counts when it
starts, even if its caller leaves before it ends.

A proxied request keeps the ``requestID`` of the frame it travelled as under ``REQUEST_ID``;
its log line carries that id with its plane and CR, so the agent's lines about the same
request can be found (``kits/logs.py`` writes them as JSON fields).
"""

from __future__ import annotations

import logging
from typing import NamedTuple

from aiohttp import web

from workflowplane.api import cr_key_of
from workflowplane.gateway.metrics import GatewayMetrics, MetricHandles
from workflowplane.protocol.http import GATEWAY_ERROR_HEADER
from workflowplane.protocol.verbs import kube_verb

log = logging.getLogger(__name__)
PROXY_PREFIX = "/api/proxy/"
REQUEST_ID = web.RequestKey("request_id", str)
# The Kubernetes verb, when the proxy worked it out already (else worked out here).
VERB = web.RequestKey("verb", str)


class Answered(NamedTuple):
    """What an answer's log line and count say about its request."""

    method: str
    path: str  # the Kubernetes path
    plane_id: str
    cr_namespace: str  # ``_cluster`` for a cluster-scoped CR
    cr_name: str
    verb: str
    request_id: str | None


class AnswerLog:
    """Counts each proxied answer by plane, verb and code, and logs it: at DEBUG when the plane
    answered, at WARNING when the tunnel failed it (a 5xx, or an error the gateway gave).
    A line whose level is off costs nothing to build (this runs for every request)."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._handles = MetricHandles(metrics)

    async def on_response_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        if not request.path.startswith(PROXY_PREFIX):
            return
        info = request.match_info
        path = "/" + info.get("path", "")
        verb = request.get(VERB) or kube_verb(request.method, path, request.query_string)
        failed = GATEWAY_ERROR_HEADER in response.headers
        self.record(
            Answered(
                request.method,
                path,
                info.get("planeID", ""),
                info.get("crNamespace", ""),
                info.get("crName", ""),
                verb,
                request.get(REQUEST_ID),
            ),
            response.status,
            gateway_error=failed,
        )

    def record(self, what: Answered, code: int, *, gateway_error: bool = False) -> None:
        """Count the answer; log it (``gateway_error``: the gateway gave it, not the plane)."""
        self._handles.answered(what.plane_id, what.verb, code).inc()
        level = logging.WARNING if code >= 500 or gateway_error else logging.DEBUG
        if not log.isEnabledFor(level):
            return
        namespace = what.cr_namespace
        log.log(
            level,
            "proxied %s %s through plane %s: %d",
            what.method,
            what.path,
            what.plane_id,
            code,
            extra={
                "plane": what.plane_id,
                "cr": cr_key_of(None if namespace == "_cluster" else namespace, what.cr_name),
                "request_id": what.request_id,
                "verb": what.verb,
                "code": code,
            },
        )
