"""The cluster gateway assembled: three listeners on one aiohttp stack.

public (TLS, ``/ws``): agents, admitted per CR (``agent_endpoint.py``, ``connections.py``);
its TLS trust follows the plane CAs (``tls.py``). internal (mTLS with the internal CA): the
API the controller and CLI use (``internal_api.py``, ``kube_proxy.py``, ``exec_proxy.py``).
health (HTTP, ``kits.health``): /healthz and /health (live: the event loop answers),
/readyz and /ready (the plane cache has synced), /metrics. Every listener bounds the time a
client gets for its TLS handshake and for each request's headers, so half-open clients cannot
pile up.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import tempfile
from collections.abc import Callable
from pathlib import Path

from aiohttp import WSCloseCode, web
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError

from workflowplane.gateway.agent_endpoint import AgentEndpoint
from workflowplane.gateway.answers import AnswerLog
from workflowplane.gateway.config import INTERNAL_CLIENT_SECRET, GatewayConfig
from workflowplane.gateway.connections import ConnectionManager
from workflowplane.gateway.drain import InFlight, drain
from workflowplane.gateway.exec_proxy import ExecProxy
from workflowplane.gateway.fast_proxy import FastProxy
from workflowplane.gateway.forwarding import Forwarder
from workflowplane.gateway.frames import MessageBudget, stall_guarded
from workflowplane.gateway.internal_api import InternalAPI
from workflowplane.gateway.kube_proxy import KubeProxy
from workflowplane.gateway.metrics import GatewayMetrics
from workflowplane.gateway.pki_store import GatewayPKI, ensure_pki, pki_from_files
from workflowplane.gateway.plane_cache import PlaneCache
from workflowplane.gateway.renewal import CertificateRenewal
from workflowplane.gateway.replica import advertised_host, internal_url, replica_name
from workflowplane.gateway.replica_lease import ReplicaLease
from workflowplane.gateway.tls import ChainFiles, PublicTLS, server_context
from workflowplane.kits.health import OK, Health, Verdict, health_app
from workflowplane.kits.http1_server import FrontServer, Limits, Router
from workflowplane.kits.process import listening

log = logging.getLogger(__name__)
SYNC_TIMEOUT_SECONDS = 60
CLOSE_HANDSHAKE_SECONDS = 5.0
STOP_GRACE_SECONDS = 1.0  # streams still open when a listener stops (after the drain)


class BoundedSite(web.BaseSite):
    """aiohttp's TCP site with a TLS handshake timeout (``web.TCPSite`` has no such knob and
    asyncio's default is 60 s): a client that never finishes its handshake is dropped.

    With ``stall_seconds``, aiohttp's handlers cut off a peer that reads nothing of what is
    written to it for that long (``frames.StallGuardedHandler``): every write to it, and so
    its handler, would wait without end otherwise. With ``router``, connections go to a lean
    server first (``front``, bounded by ``limits``), which serves what the router takes and
    hands aiohttp the rest of a connection it declines: to the stall-guarded handlers too,
    so a connection is guarded whichever server has it (the lean one cuts off a stalled
    reader itself: ``FrontProtocol.drained``, after ``limits.body_seconds``)."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None,
        handshake_timeout: float,
        router: Router | None = None,
        limits: Limits | None = None,
        stall_seconds: float | None = None,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        server = runner.server
        assert server is not None, "the runner is set up first"
        self._factory: Callable[[], asyncio.Protocol] = server
        if stall_seconds is not None:
            self._factory = stall_guarded(server, stall_seconds)
        self.front: FrontServer | None = None
        if router is not None:
            self.front = FrontServer(router, self._factory, limits or Limits())
        self._host = host
        self._port = port
        self._handshake_timeout = handshake_timeout

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        self._server = await asyncio.get_running_loop().create_server(
            self.front or self._factory,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=True,
            ssl_handshake_timeout=self._handshake_timeout if self._ssl_context else None,
        )


class Gateway:
    """Builds the gateway's parts, wires them together, and starts and stops them.

    It owns no rule: the plane cache holds CRs and CAs, the connection manager decides who is
    connected and authorized for what, and the handlers (``AgentEndpoint``, ``InternalAPI``,
    ``KubeProxy``) are given the parts they use. Here live the PKI, the listeners and their
    TLS contexts, and the order of start and stop. ``ports`` holds the bound ports by listener.
    """

    def __init__(self, config: GatewayConfig, kube: AsyncClient) -> None:
        self.config = config
        self.kube = kube
        self.metrics = GatewayMetrics()
        self.planes = PlaneCache(kube, on_change=self._trust_changed)
        self.connections = ConnectionManager(self.planes, self.metrics)
        # One for the process: what all agents' messages being assembled may hold together.
        self.message_budget = MessageBudget.for_frames(config.max_frame_bytes)
        self._agents = AgentEndpoint(
            self.connections, config, self.metrics, budget=self.message_budget
        )
        self._internal = InternalAPI(self.connections, self.planes)
        self._proxy = KubeProxy(self.connections, config, self.metrics)
        self._exec = ExecProxy(self._proxy, config)
        self._proxy.on_upgrade = self._exec.handle_upgrade
        self._in_flight = InFlight()
        self._answers = AnswerLog(self.metrics)
        self._fast = FastProxy(self._proxy, self.connections, self._in_flight, self._answers)
        self._front: FrontServer | None = None
        self._draining = False
        self.lease: ReplicaLease | None = None
        self._forwarder: Forwarder | None = None
        self.health = Health(
            ready_checks={"plane-cache": self._plane_cache_synced, "serving": self._serving}
        )
        self.pki: GatewayPKI | None = None
        self._public_tls: PublicTLS | None = None
        self._internal_tls: ssl.SSLContext | None = None
        self._renewal: asyncio.Task[None] | None = None
        self._files = tempfile.TemporaryDirectory(prefix="wp-gateway-")
        self._runners: list[web.AppRunner] = []
        self.ports: dict[str, int] = {}

    def _trust_changed(self) -> None:
        """The union of CAs is computed only where handshakes use it: it is O(every CA),
        and this runs on every change of every CR."""
        if self._public_tls is not None and self._public_tls.judges_certificates:
            self._public_tls.trust(self.planes.all_cas())

    def _public_app(self) -> web.Application:
        app = web.Application()
        app.add_routes(self._agents.routes())
        return app

    def _internal_app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_bytes)
        proxied = self._in_flight.guard_routes(self._proxy.routes() + self._exec.routes())
        app.add_routes(self._internal.routes() + proxied)
        app.on_response_prepare.append(self._answers.on_response_prepare)
        return app

    def _plane_cache_synced(self) -> Verdict:
        if self.planes.synced.is_set():
            return OK
        return Verdict(False, "plane cache not synced yet (CRs and CAs not listed)")

    def _serving(self) -> Verdict:
        return Verdict(False, "draining (shutting down)") if self._draining else OK

    async def _serve(
        self,
        name: str,
        app: web.Application,
        port: int,
        context: ssl.SSLContext | None,
        *,
        router: Router | None = None,
        stall_seconds: float | None = None,
    ) -> None:
        # aiohttp's keep-alive timer starts when a connection is made and is re-armed only
        # after a response, so it also bounds the wait for each request's headers.
        # At stop the drain has already let plain requests finish; what is left are streams
        # that never end by themselves (the controller's event subscription, watches): they
        # are cancelled after STOP_GRACE_SECONDS, not aiohttp's 60 s, which would outlast
        # the pod's termination grace (drainSeconds + 10) and end in a SIGKILL.
        runner = web.AppRunner(
            app,
            handler_cancellation=True,
            access_log=None,
            keepalive_timeout=self.config.header_timeout_seconds,
            shutdown_timeout=STOP_GRACE_SECONDS,
        )
        await runner.setup()
        self._runners.append(runner)
        site = BoundedSite(
            runner,
            self.config.host,
            port,
            ssl_context=context,
            handshake_timeout=self.config.tls_handshake_timeout_seconds,
            router=router,
            limits=self._front_limits(),
            stall_seconds=stall_seconds,
        )
        if site.front is not None:
            self._front = site.front
        await listening(site.start(), name, self.config.host, port)
        self.ports[name] = runner.addresses[0][1]
        log.info("%s listener on %s:%d", name, self.config.host, self.ports[name])

    async def _load_pki(self, *, first: bool = False) -> GatewayPKI:
        """Files (their owner renews them), else the Secrets, renewed here when due."""
        if self.config.tls_cert_file:
            return await asyncio.to_thread(pki_from_files, self.config)
        return await ensure_pki(self.kube, self.config, create_namespace=first)

    async def _present_pki(self, pki: GatewayPKI) -> None:
        """Certificates renewed while serving: the next handshakes use them."""
        assert self._public_tls is not None and self._internal_tls is not None
        # Files of their own: those in use stay whole (PublicTLS rebuilds contexts from
        # them) when the new pair is refused (``present`` tries it on a scratch context).
        fresh = Path(tempfile.mkdtemp(prefix="renewed-", dir=self._files.name))
        self._public_tls.present(ChainFiles.write(fresh, pki.server), also=[self._internal_tls])
        if self.config.internal_mtls and pki.internal_ca_pem:
            self._internal_tls.load_verify_locations(cadata=pki.internal_ca_pem.decode())
        self.pki = pki
        if self._forwarder is not None:
            await self._forwarder.refresh(self.kube, self.config.namespace)

    async def start(self) -> None:
        self.pki = await self._load_pki(first=True)
        chain = ChainFiles.write(Path(self._files.name), self.pki.server)
        self._public_tls = PublicTLS(chain, self.metrics)
        self.planes.start()
        await asyncio.wait_for(self.planes.synced.wait(), timeout=SYNC_TIMEOUT_SECONDS)
        self._trust_changed()
        await self._serve_internal(chain)
        self.connections.replica = replica_name(self.config.replica_name, self.ports["internal"])
        await self._serve(
            "public",
            self._public_app(),
            self.config.public_port,
            self._public_tls.listener_context(),
            # an agent that reads nothing sent to it for a request's time can answer none
            stall_seconds=min(self.config.request_timeout_seconds, self.config.dead_after_seconds),
        )
        self.health.loop.start()
        await self._serve(
            "health", health_app(self.health, self.metrics.registry), self.config.health_port, None
        )
        await self._join_replicas()
        renewal = CertificateRenewal(self.pki, self._load_pki, self._present_pki)
        self._renewal = asyncio.create_task(renewal.run(), name="certificate renewal")

    async def _serve_internal(self, chain: ChainFiles) -> None:
        assert self.pki is not None
        if self.config.internal_mtls:
            internal = server_context(chain, self.pki.internal_ca_pem, required=True)
        else:
            log.warning("internal API mTLS disabled: /api/* accepts unauthenticated callers")
            internal = server_context(chain, None, required=False, verify=False)
        self._internal_tls = internal
        await self._serve(
            "internal",
            self._internal_app(),
            self.config.internal_port,
            internal,
            router=self._fast.route,
            # a caller that reads nothing of its answer would hold its handler, and a chunked
            # answer's body buffer and agent stream, without end (aiohttp's drain has no limit)
            stall_seconds=self.config.request_timeout_seconds,
        )

    def _front_limits(self) -> Limits:
        """The lean server's bounds, as aiohttp's are set for the internal listener."""
        return Limits(
            body_bytes=self.config.max_body_bytes,
            head_seconds=self.config.header_timeout_seconds,
            body_seconds=self.config.request_timeout_seconds,
        )

    async def _join_replicas(self) -> None:
        """Forward for peers' agents, and announce this replica (its Lease)."""
        assert self.pki is not None
        me = self.connections.replica
        try:
            self._forwarder = await Forwarder.from_secret(
                self.kube,
                self.config.namespace,
                me,
                self.pki.server.cert_pem,
                self.config.request_timeout_seconds,
            )
            self._proxy.on_miss = self._forwarder.handle_miss
        except ApiError as exc:
            log.warning(
                "no forwarding to peer replicas: cannot read %s: %s", INTERNAL_CLIENT_SECRET, exc
            )
        host = advertised_host(self.config.advertise_host, self.config.host)
        self.lease = ReplicaLease(
            self.kube, self.config.namespace, me, internal_url(host, self.ports["internal"])
        )
        await self.lease.start()
        log.info("replica %s serving (Lease %s)", me, self.lease.name)

    # ---- drain (drain.py decides the order) ----------------------------------------------

    def unready(self) -> None:
        self._draining = True

    async def release_lease(self) -> None:
        lease, self.lease = self.lease, None  # once: drain, then stop
        if lease is not None:
            await lease.release()

    def stop_admitting(self) -> None:
        self._agents.draining = True

    async def close_agents(self) -> None:
        await self.connections.close_all(b"gateway replica going away", WSCloseCode.GOING_AWAY)
        await self.connections.all_gone(CLOSE_HANDSHAKE_SECONDS)

    async def drain(self) -> None:
        """SIGTERM: leave the rotation, finish what is in flight, then let agents go."""
        await drain(self, self._in_flight, self.config.drain_seconds)

    async def stop(self) -> None:
        if self._renewal is not None:
            self._renewal.cancel()
            await asyncio.gather(self._renewal, return_exceptions=True)
        await self.release_lease()
        if self._forwarder is not None:
            await self._forwarder.close()
        await self.connections.close_all(b"gateway shutting down")
        for runner in self._runners:
            await runner.cleanup()
        if self._front is not None:  # its listener is closed now: no new connection comes
            self._front.close_all()
        await self._agents.close()
        await self._proxy.close()
        await self.planes.close()
        await self.health.loop.stop()
        self._files.cleanup()
