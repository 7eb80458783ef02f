"""The cluster gateway: three listeners on one aiohttp stack, and the state they share.

public (TLS, ``/ws``): agents, admitted per CR (see ``agents.py``). Python's ssl cannot ask
for a client certificate without verifying it, so the public context trusts the union of all
plane CAs; the context is rebuilt whenever that union changes and swapped in for each new
handshake through ``sni_callback`` (clients that send no SNI included). The per-CR check runs
after the handshake. internal (mTLS with the internal CA): the API the controller and CLI use.
health (HTTP): /healthz, /readyz, /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import tempfile
from pathlib import Path
from typing import Any

from aiohttp import web
from lightkube import AsyncClient
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from workflowplane.gateway import agents, internal_api
from workflowplane.gateway.appkey import GATEWAY
from workflowplane.gateway.config import GatewayConfig
from workflowplane.gateway.metrics import GatewayMetrics
from workflowplane.gateway.pki_store import GatewayPKI, ensure_pki, pki_from_files
from workflowplane.gateway.planes import PlaneCache
from workflowplane.gateway.registry import AgentConnection, Registry

log = logging.getLogger(__name__)
TLS_ALERT_RECORD = 21  # TLS record content type "alert"
TLS_ALERTS = {
    42: "bad certificate",
    43: "unsupported certificate (wrong key usage?)",
    44: "certificate revoked",
    45: "certificate expired",
    46: "certificate unknown",
    48: "unknown CA: no plane CR trusts the agent's CA",
    116: "certificate required",
}


def split_pems(bundle: bytes) -> list[str]:
    """Each PEM block of a bundle on its own, so that one bad block can be skipped."""
    marker = "-----END CERTIFICATE-----"
    blocks = bundle.decode(errors="replace").split(marker)
    return [block.strip() + "\n" + marker + "\n" for block in blocks if "BEGIN" in block]


class Gateway:
    def __init__(self, config: GatewayConfig, kube: AsyncClient) -> None:
        self.config = config
        self.kube = kube
        self.metrics = GatewayMetrics()
        self.registry = Registry()
        self.planes = PlaneCache(kube, on_change=self._trust_changed)
        self.pki: GatewayPKI | None = None
        self._files = tempfile.TemporaryDirectory(prefix="wp-gateway-")
        self._public_context: ssl.SSLContext | None = None
        self._trusted: bytes | None = None
        self._runners: list[web.AppRunner] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.ports: dict[str, int] = {}

    # ---- TLS ---------------------------------------------------------------------------

    def _write(self, name: str, data: bytes) -> str:
        path = Path(self._files.name) / name
        path.write_bytes(data)
        path.chmod(0o600)
        return str(path)

    def _server_context(self, client_cas: bytes | None, *, required: bool) -> ssl.SSLContext:
        assert self.pki is not None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(
            self._write("tls.crt", self.pki.server.cert_pem),
            self._write("tls.key", self.pki.server.key_pem),
        )
        context.verify_mode = ssl.CERT_REQUIRED if required else ssl.CERT_OPTIONAL
        for pem in split_pems(client_cas or b""):
            try:
                context.load_verify_locations(cadata=pem)
            except ssl.SSLError as exc:  # one CR's bad PEM must not lock every agent out
                log.warning("skipping an unloadable client CA: %s", exc)
        if not required and hasattr(context, "_msg_callback"):
            # The only hook that sees handshake refusals; Python looks it up on the context
            # the handshake ends on, so every public context carries it.
            context._msg_callback = self._log_refusal
        return context

    def _trust_changed(self) -> None:
        """Rebuild the public listener's trust when the union of plane CAs changes."""
        if self.pki is None:
            return
        union = self.planes.all_cas()
        if union == self._trusted:
            return
        self._trusted = union
        self._public_context = self._server_context(union or None, required=False)

    def _select_context(
        self, ssl_object: Any, _server_name: str | None, _context: ssl.SSLContext
    ) -> None:
        if self._public_context is not None:
            ssl_object.context = self._public_context

    def _public_listener_context(self) -> ssl.SSLContext:
        self._trust_changed()
        base = self._server_context(None, required=False)
        base.sni_callback = self._select_context
        return base

    def _log_refusal(
        self,
        _conn: Any,
        direction: str,
        _version: Any,
        content_type: Any,
        _msg_type: Any,
        data: bytes,
    ) -> None:
        """An agent whose certificate fails TLS verification never reaches /ws: say why."""
        if direction != "write" or content_type != TLS_ALERT_RECORD:
            return
        if len(data) >= 2 and data[0] == 2:  # fatal alert
            reason = TLS_ALERTS.get(data[1], f"alert {data[1]}")
            self.metrics.rejected.labels("tls-" + reason.replace(" ", "-")).inc()
            log.warning("agent refused during TLS handshake: %s", reason)

    # ---- connections ---------------------------------------------------------------------

    def add_connection(self, conn: AgentConnection) -> None:
        self.registry.add(conn)
        self._count_agents(conn.plane_id)

    def remove_connection(self, conn: AgentConnection) -> None:
        self.registry.remove(conn)
        self._count_agents(conn.plane_id)

    def _count_agents(self, plane_id: str) -> None:
        count = sum(1 for c in self.registry.connections.values() if c.plane_id == plane_id)
        self.metrics.agents.labels(plane_id).set(count)

    # ---- apps ---------------------------------------------------------------------------

    def _public_app(self) -> web.Application:
        app = web.Application()
        app[GATEWAY] = self
        app.router.add_get("/ws", agents.handle_ws)
        return app

    def _internal_app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_bytes)
        app[GATEWAY] = self
        app.router.add_post("/api/v1/planes/notify", internal_api.notify)
        app.router.add_get("/api/v1/planes/status", internal_api.all_status)
        app.router.add_get("/api/v1/planes/events", internal_api.events)
        app.router.add_get("/api/v1/planes/{type}/{id}/status", internal_api.plane_status)
        app.router.add_post("/api/v1/planes/{type}/{id}/reconnect", internal_api.reconnect)
        app.router.add_route(
            "*",
            "/api/proxy/{planeType}/{planeID}/{crNamespace}/{crName}/k8s/{path:.*}",
            internal_api.proxy,
        )
        return app

    def _health_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", _healthz)
        app.router.add_get("/readyz", self._ready)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def _ready(self, _request: web.Request) -> web.Response:
        if not self.planes.synced.is_set():
            return web.Response(status=503, text="plane cache not synced yet\n")
        return web.Response(text="ok\n")

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    async def _serve(
        self, name: str, app: web.Application, port: int, context: ssl.SSLContext | None
    ) -> None:
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.config.host, port, ssl_context=context, reuse_address=True)
        await site.start()
        self._runners.append(runner)
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.ports[name] = sockets[0].getsockname()[1] if sockets else port
        log.info("%s listener on %s:%d", name, self.config.host, self.ports[name])

    async def start(self) -> None:
        if self.config.tls_cert_file:
            self.pki = pki_from_files(self.config)
        else:
            self.pki = await ensure_pki(self.kube, self.config)
        self._tasks.append(asyncio.create_task(self.planes.run()))
        await asyncio.wait_for(self.planes.synced.wait(), timeout=60)
        internal = self._server_context(self.pki.internal_ca_pem, required=True)
        await self._serve(
            "public", self._public_app(), self.config.public_port, self._public_listener_context()
        )
        await self._serve("internal", self._internal_app(), self.config.internal_port, internal)
        await self._serve("health", self._health_app(), self.config.health_port, None)

    async def stop(self) -> None:
        for conn in list(self.registry.connections.values()):
            await conn.ws.close(message=b"gateway shutting down")
        for runner in self._runners:
            await runner.cleanup()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._files.cleanup()


async def _healthz(_request: web.Request) -> web.Response:
    return web.Response(text="ok\n")
