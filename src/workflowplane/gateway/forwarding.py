"""Forwarding to a peer replica, for planes whose agent is connected elsewhere.

An agent that dials only one replica (OpenChoreo's Go agent) is reachable through every
replica: a replica with no agent authorized for a request's CR sends the request on to its
peers (the live replicas of the Lease directory, ``protocol/replicas.py``), one at a time,
with ``X-Workflowplane-Forwarded-By``. A peer answers it from its own agents and its own
authorization check, or refuses it with ``X-Workflowplane-Unsent`` (it never reached an
agent), and then the next peer is tried; a request that carries the header is never
forwarded again, so there are no loops. The peer that served a plane last is tried first.

Why ask on a miss rather than keep a map of which peer holds which plane (fed by each
peer's events stream): the request itself is the question, so the answer is never stale
(an agent that moved between two events is still found), nothing runs while no request
misses, and the cost is bounded by the number of replicas. An ``Unsent`` refusal is safe
to go past for any method, since the peer did not send it anywhere.

Bodies stream back as they come (watch and log follow included); the request body is read
once (bounded by the listener's body limit) so it can be offered to a second peer.
Upgrades (exec, attach) are not forwarded: they are answered with the local refusal.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from cryptography import x509
from lightkube import AsyncClient

from workflowplane.gateway.kube_proxy import REQUEST_HOP_BY_HOP, Target, k8s_status, unsent
from workflowplane.kits.dialing import Connector, deciding_retries
from workflowplane.protocol.gateway_client import (
    INTERNAL_CLIENT_SECRET,
    HeldCredentials,
    Miss,
    credentials_from_secret,
    may_retry,
)
from workflowplane.protocol.http import (
    FORWARDED_BY_HEADER,
    HOP_BY_HOP,
    UNSENT_HEADER,
    is_streaming_query,
)
from workflowplane.protocol.replicas import LeaseDirectory, Replica

log = logging.getLogger(__name__)
PEERS_TTL_SECONDS = 2.0  # the Lease directory is listed at most this often
CONNECT_SECONDS = 3.0
REFUSAL_BYTES = 64 * 1024  # of a peer's Unsent answer (a Status body)
NO_AGENT = (502, 503)  # refusals that say less than a peer's (403: its agent may not serve)


class PeerDirectory:
    """The live peers (this replica excluded): the Lease directory, read at most every 2 s."""

    def __init__(self, leases: LeaseDirectory, me: str) -> None:
        self._leases = leases
        self._me = me
        self._preferred: dict[tuple[str, str], str] = {}

    async def peers(self) -> list[Replica]:
        return [r for r in await self._leases.replicas() if r.name != self._me]

    async def candidates(self, target: Target) -> list[Replica]:
        """Peers in the order to try: the one that served this plane last first."""
        preferred = self._preferred.get((target.plane_type, target.plane_id))
        return sorted(await self.peers(), key=lambda r: (r.name != preferred, r.name))

    def served(self, target: Target, peer: Replica) -> None:
        self._preferred[(target.plane_type, target.plane_id)] = peer.name


def peer_server_name(server_cert_pem: bytes) -> str | None:
    """A DNS name of the replicas' shared server certificate: peers are dialled by address
    (a pod IP, not in the certificate) and verified against this name and the server CA."""
    cert = x509.load_pem_x509_certificate(server_cert_pem)
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    names = sans.get_values_for_type(x509.DNSName)
    return names[0] if names else None


def _headers_out(request: web.Request, me: str) -> dict[str, str]:
    kept = {k: v for k, v in request.headers.items() if k.lower() not in REQUEST_HOP_BY_HOP}
    kept[FORWARDED_BY_HEADER] = me
    return kept


def _headers_back(response: aiohttp.ClientResponse) -> list[tuple[str, str]]:
    return [(k, v) for k, v in response.headers.items() if k.lower() not in HOP_BY_HOP]


class Forwarder:
    """``KubeProxy.on_miss``: a request no local agent may serve, tried on the peers."""

    def __init__(
        self,
        directory: PeerDirectory,
        me: str,
        session: aiohttp.ClientSession,
        server_name: str | None,
        request_timeout: float,
    ) -> None:
        self._directory = directory
        self._me = me
        self._session = deciding_retries(session)  # what may go again: _try, never aiohttp
        self._server_name = server_name
        self._request_timeout = request_timeout
        self._held: HeldCredentials | None = None  # from the Secret (from_secret)

    @classmethod
    async def from_secret(
        cls,
        kube: AsyncClient,
        namespace: str,
        me: str,
        server_cert_pem: bytes,
        request_timeout: float,
    ) -> Forwarder:
        """With the internal callers' credential (Secret ``cluster-gateway-internal-client``:
        a client certificate of the internal CA, and the server CA as ca.crt)."""
        held = HeldCredentials.of(await credentials_from_secret(kube, namespace))
        session = aiohttp.ClientSession(
            connector=Connector(ssl=held.context, limit=256),
            auto_decompress=False,  # the body goes back as the peer sent it
        )
        leases = LeaseDirectory(kube, namespace, refresh_seconds=PEERS_TTL_SECONDS)
        directory = PeerDirectory(leases, me)
        forwarder = cls(directory, me, session, peer_server_name(server_cert_pem), request_timeout)
        forwarder._held = held
        return forwarder

    async def refresh(self, kube: AsyncClient, namespace: str) -> None:
        """Present the credential in the Secret from now on, if it was renewed."""
        if self._held is None:
            return
        if self._held.present(await credentials_from_secret(kube, namespace)):
            log.info("forwarding to peers with the renewed %s", INTERNAL_CLIENT_SECRET)

    async def close(self) -> None:
        await self._session.close()

    async def handle_miss(
        self, request: web.Request, target: Target, refusal: web.Response
    ) -> web.StreamResponse:
        """The first peer's answer that is not an Unsent refusal; else the most telling
        refusal (a peer's 403 or 429 says more than "no agent here"), marked Unsent."""
        if FORWARDED_BY_HEADER in request.headers or request.headers.get("Upgrade"):
            return refusal
        peers = await self._directory.candidates(target)
        if not peers:
            return refusal
        body = await request.read()
        best = refusal
        for peer in peers:
            answer = await self._try(request, target, peer, body)
            if isinstance(answer, web.Response) and UNSENT_HEADER in answer.headers:
                best = answer if best.status in NO_AGENT else best
                continue
            if answer is not None:
                return answer
        return unsent(best)

    def _timeout(self, request: web.Request) -> aiohttp.ClientTimeout:
        if is_streaming_query(request.query, request.path):
            return aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_SECONDS)
        return aiohttp.ClientTimeout(
            total=self._request_timeout + CONNECT_SECONDS, sock_connect=CONNECT_SECONDS
        )

    @contextlib.asynccontextmanager
    async def _open(
        self, request: web.Request, peer: Replica, body: bytes
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        async with self._session.request(
            request.method,
            peer.internal_url + request.raw_path,
            data=body or None,
            headers=_headers_out(request, self._me),
            timeout=self._timeout(request),
            server_hostname=self._server_name,
            allow_redirects=False,
        ) as response:
            yield response

    async def _try(
        self, request: web.Request, target: Target, peer: Replica, body: bytes
    ) -> web.StreamResponse | None:
        """The peer's answer relayed; its Unsent refusal (to go past); None when the next
        peer is as safe: this one could not be reached (nothing was sent), or it was lost
        before answering a request that may run twice (GET, HEAD, OPTIONS: a replica
        killed mid-request)."""
        try:
            async with self._open(request, peer, body) as response:
                if UNSENT_HEADER in response.headers:
                    refusal = await _refusal_body(response)
                    return web.Response(
                        status=response.status, body=refusal, headers=_headers_back(response)
                    )
                self._directory.served(target, peer)
                return await _relay(request, response, peer)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            # refused, reset, TLS, or no connection within CONNECT_SECONDS (a black-holed
            # replica whose Lease is still live): nothing was sent
            log.info("peer %s unreachable for %s: %s", peer.name, request.path, exc)
            return None
        except TimeoutError as exc:  # it may have reached an agent, and the time is spent
            return k8s_status(502, f"peer replica {peer.name} failed: {exc!r}", "Timeout")
        except aiohttp.ClientError as exc:  # it may have reached an agent
            if may_retry(request.method, Miss.LOST):
                log.info(
                    "peer %s lost %s %s: the next peer is asked",
                    peer.name,
                    request.method,
                    request.path,
                )
                return None
            return k8s_status(502, f"peer replica {peer.name} failed: {exc!r}", "BadGateway")


async def _refusal_body(response: aiohttp.ClientResponse) -> bytes:
    """An Unsent refusal's body (a Status); one that breaks off is none: the header already
    says the request reached no agent, so the next peer is as safe for any method."""
    try:
        return await response.content.read(REFUSAL_BYTES)
    except (aiohttp.ClientError, TimeoutError):
        return b""


async def _relay(
    request: web.Request, response: aiohttp.ClientResponse, peer: Replica
) -> web.StreamResponse:
    """The peer's answer to the caller as it comes; a failure after the status went out
    can only cut the caller off (the body must not look complete)."""
    answer = web.StreamResponse(status=response.status, headers=_headers_back(response))
    await answer.prepare(request)
    try:
        async for chunk in response.content.iter_any():
            await answer.write(chunk)
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("answer from peer %s to %s failed mid-way: %s", peer.name, request.path, exc)
        if request.transport is not None:
            request.transport.abort()
        return answer
    await answer.write_eof()
    return answer
