"""Async client for the gateway's internal API (used by the controller, runs and the CLI).

The internal API is a wire contract between the gateway and its callers, so its client lives
beside the other wire types, below every component that calls it. Failures come back in the
``kits.errors`` taxonomy: :class:`TransientError` (5xx, 429, network) or
:class:`PermanentError` (other 4xx), each carrying the status and the ``Status`` body.

The gateway may run as several replicas (docs/ha.md). The client is given one URL (as
before), a list, or a :class:`~workflowplane.protocol.replicas.ReplicaDirectory` (Leases).
Proxied requests are spread round-robin and retried on another replica only when that is
safe (:func:`may_retry`); when every replica says it has no agent of a plane this client
reached lately, the request waits a few seconds for the agent to redial (``agent_patience``);
watches resume on another replica from their last resourceVersion; status and notifications
go to every replica, and their answers are merged by agent instance.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import json
import logging
import ssl
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote

import aiohttp
from lightkube import AsyncClient
from lightkube.resources.core_v1 import Secret

from workflowplane.kits.dialing import Connector, deciding_retries
from workflowplane.kits.errors import Failure, PermanentError, TransientError, from_status
from workflowplane.protocol.agent_patience import (
    DEFAULT_AGENT_WAIT_SECONDS,
    DEFAULT_PATIENCE,
    DEFAULT_RECENT_PLANES,
    DEFAULT_RECENT_SECONDS,
    AgentPatience,
    RecentPlanes,
    Round,
    check_seconds,
    pauses,
)
from workflowplane.protocol.replica_status import (
    count_of,
    merge_all_status,
    merge_plane_status,
)
from workflowplane.protocol.replicas import ReplicaDirectory, ReplicaRotation, StaticDirectory
from workflowplane.protocol.watch_position import WatchPosition, is_watch, timeout_of

log = logging.getLogger(__name__)

# Where the gateway keeps the credentials of its internal callers (controller, CLI).
GATEWAY_NAMESPACE = "openchoreo-control-plane"
INTERNAL_CLIENT_SECRET = "cluster-gateway-internal-client"


def gateway_error(status: int, message: str, body: Any = None) -> Failure:
    return from_status(status, f"{status}: {message}", body)


@dataclass(frozen=True)
class ProxyResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class TunnelAPI(Protocol):
    """The gateway's proxy as callers need it; :class:`GatewayClient` is one (tests may use
    another). Requests run in the plane on a connection authorized for the named CR."""

    async def proxy(
        self,
        method: str,
        *,
        plane_type: str,
        plane_id: str,
        cr_namespace: str | None,
        cr_name: str,
        path: str,
        query: str = "",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> ProxyResponse: ...

    def proxy_stream(
        self,
        method: str,
        *,
        plane_type: str,
        plane_id: str,
        cr_namespace: str | None,
        cr_name: str,
        path: str,
        query: str,
    ) -> AsyncIterator[bytes]: ...


Credentials = tuple[bytes, bytes, bytes]  # the server CA (ca.crt), tls.crt, tls.key


def credentials_from_files(ca: Path, cert: Path, key: Path) -> Credentials:
    return ca.read_bytes(), cert.read_bytes(), key.read_bytes()


async def credentials_from_secret(kube: AsyncClient, namespace: str) -> Credentials:
    """The credential the gateway keeps for its internal callers (and re-issues when due)."""
    secret = await kube.get(Secret, INTERNAL_CLIENT_SECRET, namespace=namespace)
    data = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
    return data["ca.crt"], data["tls.crt"], data["tls.key"]


def client_ssl_context(ca_pem: bytes, cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """Verifying the gateway (hostname and ``ca_pem`` alone, never the system's CAs: what
    ``create_default_context(cadata=…)`` makes) and presenting the pair."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _load_credentials([context], ca_pem, cert_pem, key_pem)
    return context


def present_credentials(
    context: ssl.SSLContext, ca_pem: bytes, cert_pem: bytes, key_pem: bytes
) -> None:
    """Load a renewed credential into a context in use: the connections made from now on
    present the new certificate and also trust the new CA (``ca.crt``; the CAs trusted
    before stay trusted, as through a rotation); open ones go on as they are.

    Everything is loaded into a scratch context first: a pair that does not load (a
    certificate read before its key was swapped too) raises here and leaves ``context`` as
    it was, where OpenSSL would have kept the new certificate and dropped the key."""
    scratch = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _load_credentials([scratch, context], ca_pem, cert_pem, key_pem)


def _load_credentials(
    contexts: Sequence[ssl.SSLContext], ca_pem: bytes, cert_pem: bytes, key_pem: bytes
) -> None:
    """The CA to trust and the pair to present, into each context in turn (the pair goes
    through files: ``load_cert_chain`` reads only files)."""
    with tempfile.TemporaryDirectory(prefix="wp-gw-client-") as tmp:
        cert, key = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
        cert.write_bytes(cert_pem)
        key.write_bytes(key_pem)
        key.chmod(0o600)
        for context in contexts:
            context.load_verify_locations(cadata=ca_pem.decode())
            context.load_cert_chain(cert, key)


class HeldCredentials:
    """A client TLS context and the credential loaded in it (None: loaded by its maker): a
    renewed credential goes into the same context, so a session built on it presents the
    new certificate from its next connection on."""

    def __init__(self, context: ssl.SSLContext, held: Credentials | None = None) -> None:
        self.context = context
        self._held = held

    @classmethod
    def of(cls, credentials: Credentials) -> HeldCredentials:
        return cls(client_ssl_context(*credentials), credentials)

    def present(self, credentials: Credentials) -> bool:
        """Load ``credentials`` unless they are the ones held; whether they were new."""
        if credentials == self._held:
            return False
        present_credentials(self.context, *credentials)
        self._held = credentials
        return True


def _message(body: bytes, status: int) -> tuple[str, Any]:
    try:
        parsed = json.loads(body)
    except ValueError:
        return body.decode(errors="replace") or f"HTTP {status}", None
    if isinstance(parsed, dict):
        return str(parsed.get("message") or parsed.get("error") or parsed), parsed
    return str(parsed), parsed


# ---- when a request may go to another replica ------------------------------------------------

UNSENT_HEADER = "X-Workflowplane-Unsent"
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
GATEWAY_GAP_STATUSES = frozenset({502, 503, 504})
DEFAULT_TIMEOUT = 35.0  # a plain request through the tunnel: the agent's 30 s and the trip
INTERACTIVE_TIMEOUT = 10.0  # a person waiting at a terminal (doctor, logs)
# A status call is answered from the replica's own memory, at once: one that has not answered
# within this is hung, and every replica is asked, so a hung replica would otherwise hold each
# controller pass for the proxy's whole timeout.
CONTROL_TIMEOUT = 5.0
# A notify may read the API server (the CR and its CA Secret) and a reconnect waits for its
# agents' close handshakes before they answer, and the replica's handler is cancelled when
# its caller gives up: they get longer.
NOTIFY_TIMEOUT = 20.0
STREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10)
EVENTS_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_read=60, sock_connect=10)
EVENTS_RESUBSCRIBE_SECONDS = 5.0


class Miss(enum.Enum):
    """How an attempt on one replica failed, as far as the agent is concerned."""

    UNSENT = "the replica answered that it sent the request to no agent"
    NOT_CONNECTED = "no connection to the replica: the request was never written"
    GATEWAY_STATUS = "502/503/504 without Unsent: it may have reached the agent"
    LOST = "the connection was lost or timed out mid-request"


def may_retry(method: str, miss: Miss) -> bool:
    """Any method after a miss that provably never reached an agent; otherwise only methods
    that are safe to repeat (a POST that may have run must not run twice)."""
    if miss in (Miss.UNSENT, Miss.NOT_CONNECTED):
        return True
    return method.upper() in IDEMPOTENT_METHODS


def miss_of_answer(status: int, headers: Mapping[str, str]) -> Miss | None:
    """None for an answer to hand back as it is (a success, or the plane's own error)."""
    if status >= 400 and headers.get(UNSENT_HEADER) == "1":
        return Miss.UNSENT
    if status in GATEWAY_GAP_STATUSES:
        return Miss.GATEWAY_STATUS
    return None


def miss_of_error(exc: BaseException) -> Miss:
    """Connecting (refused, reset, TLS, connect timeout) writes nothing; anything later may
    have delivered the request."""
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        return Miss.NOT_CONNECTED
    return Miss.LOST


class Unreachable(TransientError):
    """A replica could not be connected to: it received nothing."""


def _unreachable(url: str, exc: BaseException) -> TransientError:
    if miss_of_error(exc) is Miss.NOT_CONNECTED:
        return Unreachable(f"gateway {url} unreachable: {exc}")
    return TransientError(f"gateway {url} failed mid-request: {exc!r}")


def _directory(replicas: str | Sequence[str] | ReplicaDirectory) -> ReplicaDirectory:
    if isinstance(replicas, str):
        return StaticDirectory([replicas])
    if isinstance(replicas, Sequence):
        return StaticDirectory(list(replicas))
    return replicas


@dataclass
class _Missed:
    """One round in which every replica missed: the last answer and error, and what the
    misses say about waiting for the plane's agent."""

    answer: ProxyResponse | None = None
    error: TransientError | None = None
    seen: Round = field(default_factory=Round)


@dataclass(frozen=True)
class _Ended:
    """One replica's event stream ended (``error`` says how)."""

    url: str
    error: Failure


def _session(ssl_context: ssl.SSLContext, timeout: float) -> aiohttp.ClientSession:
    session = aiohttp.ClientSession(
        connector=Connector(ssl=ssl_context, limit=64),
        timeout=aiohttp.ClientTimeout(total=timeout),
    )
    return deciding_retries(session)  # whether to repeat: may_retry, never aiohttp


class UnroutablePath(PermanentError):
    """A name or path that cannot be sent in the gateway's route without leaving it (so no
    object of that name can have been made through it either)."""


def _safe_segment(segment: str) -> bool:
    """Whether a path segment stays where it is: no dot segment, however encoded, and
    nothing that ends the path."""
    return unquote(segment) not in (".", "..") and not any(c in segment for c in "?#")


class GatewayClient:
    def __init__(
        self,
        replicas: str | Sequence[str] | ReplicaDirectory,
        ssl_context: ssl.SSLContext,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        recent_seconds: float = DEFAULT_RECENT_SECONDS,
        agent_wait_seconds: float = DEFAULT_AGENT_WAIT_SECONDS,
        recent_planes: int = DEFAULT_RECENT_PLANES,
        control_timeout: float = CONTROL_TIMEOUT,
    ):
        """``agent_wait_seconds``: how long a request waits, within ``timeout``, when every
        replica says it has no agent of a plane this client reached in the last
        ``recent_seconds`` (at most ``recent_planes`` planes are remembered).
        ``control_timeout``: how long each replica has to answer a status call (a notify or a
        reconnect gets ``NOTIFY_TIMEOUT / CONTROL_TIMEOUT`` times that); never more than
        ``timeout``."""
        directory = _directory(replicas)
        self._rotation = ReplicaRotation(directory)
        first = replicas if isinstance(replicas, str) else None
        if isinstance(replicas, Sequence) and not isinstance(replicas, str):
            first = replicas[0]
        # The one URL proxy_url builds on (a fixed first replica; empty for a directory).
        self.base_url = (first or "").rstrip("/")
        self._timeout = timeout
        # a control call's time, as a share of CONTROL_TIMEOUT (a notify gets as much more)
        self._control_scale = check_seconds("control_timeout", control_timeout) / CONTROL_TIMEOUT
        self._recent = RecentPlanes(recent_seconds, recent_planes)
        self._agent_wait_seconds = check_seconds("agent_wait_seconds", agent_wait_seconds)
        # Plain proxied requests keep connections of their own: the gateway serves those on
        # its lean server until a connection carries anything else (a control call, a
        # stream), which aiohttp then serves for the rest of that connection's life.
        self._session = _session(ssl_context, timeout)
        self._proxy_session = _session(ssl_context, timeout)
        self._ssl = ssl_context
        self._held = HeldCredentials(ssl_context)

    @classmethod
    def with_patience(
        cls,
        replicas: str | Sequence[str] | ReplicaDirectory,
        ssl_context: ssl.SSLContext,
        patience: AgentPatience,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> GatewayClient:
        return cls(
            replicas,
            ssl_context,
            timeout,
            recent_seconds=patience.recent_seconds,
            agent_wait_seconds=patience.agent_wait_seconds,
        )

    @classmethod
    def from_files(
        cls,
        replicas: str | Sequence[str] | ReplicaDirectory,
        ca: Path,
        cert: Path,
        key: Path,
        patience: AgentPatience = DEFAULT_PATIENCE,
    ) -> GatewayClient:
        return cls.with_credentials(replicas, credentials_from_files(ca, cert, key), patience)

    @classmethod
    async def from_secret(
        cls,
        kube: AsyncClient,
        replicas: str | Sequence[str] | ReplicaDirectory,
        namespace: str = GATEWAY_NAMESPACE,
        patience: AgentPatience = DEFAULT_PATIENCE,
        timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 (the client's, kept for its requests)
    ) -> GatewayClient:
        """Credentials from the Secret the gateway wrote for its internal callers."""
        credentials = await credentials_from_secret(kube, namespace)
        return cls.with_credentials(replicas, credentials, patience, timeout)

    @classmethod
    def with_credentials(
        cls,
        replicas: str | Sequence[str] | ReplicaDirectory,
        credentials: Credentials,
        patience: AgentPatience = DEFAULT_PATIENCE,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> GatewayClient:
        held = HeldCredentials.of(credentials)
        client = cls.with_patience(replicas, held.context, patience, timeout)
        client._held = held
        return client

    def present(self, credentials: Credentials) -> bool:
        """Use a renewed credential for the connections made from now on; whether it was
        new (the gateway re-issues its callers' certificate before it expires)."""
        return self._held.present(credentials)

    async def replica_urls(self) -> list[str]:
        """The replicas in use now."""
        return await self._rotation.directory.urls()

    async def close(self) -> None:
        await self._session.close()
        await self._proxy_session.close()
        await self._rotation.directory.close()

    @contextlib.asynccontextmanager
    async def _open(
        self, method: str, url: str, **kwargs: Any
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A response whose connection is closed, not pooled, when the caller stops early
        (cancelled mid-read, an abandoned stream), so a half-read connection is never reused.
        ``session=`` picks the pool (the control calls' and streams' by default)."""
        session = kwargs.pop("session", self._session)
        async with session.request(method, url, **kwargs) as resp:
            try:
                yield resp
            except BaseException:
                resp.close()
                raise

    # ---- one replica, or the first that will do ------------------------------------------------

    async def _attempt(self, method: str, url: str, budget: float, **kwargs: Any) -> ProxyResponse:
        """One request to one replica; a network failure is raised as :class:`Unreachable`
        (nothing written) or :class:`TransientError`."""
        try:
            async with self._open(
                method, url, timeout=aiohttp.ClientTimeout(total=budget), **kwargs
            ) as resp:
                return ProxyResponse(resp.status, dict(resp.headers), await resp.read())
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _unreachable(url, exc) from exc

    async def _send(
        self, method: str, path: str, plane: str | None = None, **kwargs: Any
    ) -> ProxyResponse:
        """The request on one replica after another, while the miss allows a retry: each live
        replica at most once per round, all within the client's timeout. Further rounds,
        after short pauses, only while the plane's agent may be coming back (:meth:`_waits`)."""
        deadline = time.monotonic() + self._timeout
        waits: Iterator[float] | None = None
        answer: ProxyResponse | None = None
        error: TransientError | None = None
        while True:
            outcome = await self._round(method, path, deadline, **kwargs)
            if isinstance(outcome, ProxyResponse):
                self._note_reached(plane, outcome.headers)
                return outcome
            answer, error = outcome.answer or answer, outcome.error or error
            if waits is None:
                waits = self._waits(plane, deadline)
            pause = next(waits, None) if outcome.seen.agent_may_come_back else None
            if pause is None:
                break
            log.debug(
                "%s %s: no replica has the agent of %s; again in %.2fs", method, path, plane, pause
            )
            await asyncio.sleep(pause)
        if answer is not None:
            return answer
        raise error or TransientError("gateway: no replica is live, or none answered in time")

    async def _round(
        self, method: str, path: str, deadline: float, **kwargs: Any
    ) -> ProxyResponse | _Missed:
        """One pass over the live replicas: the first answer to hand back, or the misses."""
        missed = _Missed()
        for url in await self._rotation.order():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                answer = await self._attempt(method, url + path, remaining, **kwargs)
            except TransientError as exc:
                self._rotation.failed(url)
                missed.error = exc
                broken = Miss.NOT_CONNECTED if isinstance(exc, Unreachable) else Miss.LOST
                if may_retry(method, broken):
                    continue
                raise
            miss = miss_of_answer(answer.status, answer.headers)
            if miss is None or not may_retry(method, miss):
                self._rotation.succeeded(url)
                return answer
            missed.answer = answer
            if miss is Miss.UNSENT:
                missed.seen.unsent(answer.status)
            log.debug("%s %s on %s: %s; trying another replica", method, path, url, miss.value)
        return missed

    def _waits(self, plane: str | None, deadline: float) -> Iterator[float]:
        """Pauses before the next rounds: none for a plane not reached in the last
        ``recent_seconds`` (it fails at once, as it always did)."""
        if plane is None or not self._recent.recent(plane):
            return iter(())
        return pauses(self._agent_wait_seconds, deadline)

    def _note_reached(self, plane: str | None, headers: Mapping[str, str]) -> None:
        """An answer not marked Unsent came from (or through) the plane's agent."""
        if plane is not None and headers.get(UNSENT_HEADER) != "1":
            self._recent.reached(plane)

    async def _fan_out(
        self, method: str, path: str, seconds: float = CONTROL_TIMEOUT, **kwargs: Any
    ) -> list[dict[str, Any]]:
        """The call on every replica at once; each answer carries its ``replica`` (the URL when
        the replica does not say). A replica that could not be connected to is left out when
        another answered; any other failure fails the call (for writes: it may be owed)."""
        urls = await self._rotation.order()
        if not urls:
            raise TransientError("gateway: no replica is live")
        results = await asyncio.gather(
            *(self._call_one(method, url, path, seconds, **kwargs) for url in urls),
            return_exceptions=True,
        )
        answers: list[dict[str, Any]] = []
        failures: list[Failure] = []
        for url, result in zip(urls, results, strict=True):
            if isinstance(result, Failure):
                failures.append(result)
            elif isinstance(result, BaseException):
                raise result
            else:
                answers.append({"replica": url, **(result or {})})
        serious = [f for f in failures if not isinstance(f, Unreachable)]
        permanent = [f for f in serious if isinstance(f, PermanentError)]
        if permanent or (serious and method != "GET"):
            raise (permanent or serious)[0]
        if not answers:
            raise failures[0]
        return answers

    async def _call_one(
        self, method: str, url: str, path: str, seconds: float, **kwargs: Any
    ) -> Any:
        budget = min(self._timeout, seconds * self._control_scale)
        try:
            answer = await self._attempt(method, url + path, budget, **kwargs)
        except TransientError:
            self._rotation.failed(url)
            raise
        if answer.status >= 400:
            message, parsed = _message(answer.body, answer.status)
            raise gateway_error(answer.status, message, parsed)
        self._rotation.succeeded(url)
        return json.loads(answer.body) if answer.body else None

    # ---- the internal API ----------------------------------------------------------------------

    async def notify(
        self, *, plane_type: str, plane_id: str, event: str, namespace: str, name: str
    ) -> Mapping[str, Any]:
        """Every replica re-verifies its own connections, so every replica is told."""
        answers = await self._fan_out(
            "POST",
            "/api/v1/planes/notify",
            NOTIFY_TIMEOUT,
            json={
                "planeType": plane_type,
                "planeID": plane_id,
                "event": event,
                "namespace": namespace,
                "name": name,
            },
        )
        return _summed(answers, ("authorizationsGranted", "authorizationsRevoked"))

    async def plane_status(
        self,
        plane_type: str,
        plane_id: str,
        *,
        namespace: str | None = None,
        name: str | None = None,
    ) -> Mapping[str, Any]:
        """The plane's (or one CR's) agents over every replica, counted once each."""
        params = {k: v for k, v in (("namespace", namespace), ("name", name)) if v}
        answers = await self._fan_out(
            "GET", f"/api/v1/planes/{plane_type}/{plane_id}/status", params=params
        )
        return merge_plane_status(answers)

    async def all_status(self) -> Mapping[str, Any]:
        return merge_all_status(await self._fan_out("GET", "/api/v1/planes/status"))

    async def reconnect(self, plane_type: str, plane_id: str) -> Mapping[str, Any]:
        answers = await self._fan_out(
            "POST", f"/api/v1/planes/{plane_type}/{plane_id}/reconnect", NOTIFY_TIMEOUT
        )
        return _summed(answers, ())

    # ---- the proxy -----------------------------------------------------------------------------

    @staticmethod
    def proxy_path(
        plane_type: str, plane_id: str, cr_namespace: str | None, cr_name: str, path: str
    ) -> str:
        """The gateway's route for a request of CR ``cr_namespace/cr_name`` on its plane.

        PermanentError for anything that could leave that route: the HTTP client resolves
        ``..`` segments (percent-encoded too) and splits at ``?`` and ``#``, so a name a
        tenant wrote (a resource of its workflow, a secret store) would otherwise send the
        controller's request, with the controller's credentials, as another CR's."""
        scope = cr_namespace or "_cluster"
        for part in (plane_type, plane_id, scope, cr_name):
            if "/" in part or not _safe_segment(part):
                raise UnroutablePath(f"not a name for the gateway's route: {part[:253]!r}")
        tail = path.lstrip("/")
        if not all(_safe_segment(segment) for segment in tail.split("/")):
            raise UnroutablePath(f"not a path for the gateway's route: {tail[:1024]!r}")
        return f"/api/proxy/{plane_type}/{plane_id}/{scope}/{cr_name}/k8s/{tail}"

    def proxy_url(
        self, plane_type: str, plane_id: str, cr_namespace: str | None, cr_name: str, path: str
    ) -> str:
        return self.base_url + self.proxy_path(plane_type, plane_id, cr_namespace, cr_name, path)

    async def proxy(
        self,
        method: str,
        *,
        plane_type: str,
        plane_id: str,
        cr_namespace: str | None,
        cr_name: str,
        path: str,
        query: str = "",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> ProxyResponse:
        """A request run in the plane; any status comes back (errors are not raised)."""
        target = self.proxy_path(plane_type, plane_id, cr_namespace, cr_name, path)
        return await self._send(
            method,
            target + (f"?{query}" if query else ""),
            plane=plane_key(plane_type, plane_id),
            data=body,
            headers=dict(headers or {"Content-Type": "application/json"}),
            session=self._proxy_session,
        )

    @contextlib.asynccontextmanager
    async def _stream_response(
        self, method: str, target: str, plane: str
    ) -> AsyncIterator[tuple[str, aiohttp.ClientResponse]]:
        """The first replica whose answer starts a stream (the retry rules of :meth:`_send`,
        with its patience for a plane's agent); an error answer that may not be retried is
        raised as before."""
        error: Failure | None = None
        waits: Iterator[float] | None = None
        while True:
            seen = Round()
            for url in await self._rotation.order():
                async with contextlib.AsyncExitStack() as stack:
                    try:
                        resp = await stack.enter_async_context(
                            self._open(method, url + target, timeout=STREAM_TIMEOUT)
                        )
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        self._rotation.failed(url)
                        error = _unreachable(url, exc)
                        if may_retry(method, miss_of_error(exc)):
                            continue
                        raise error from exc
                    if resp.status >= 400:
                        message, parsed = _message(await resp.read(), resp.status)
                        error = gateway_error(resp.status, message, parsed)
                        miss = miss_of_answer(resp.status, resp.headers)
                        if miss is not None and may_retry(method, miss):
                            if miss is Miss.UNSENT:
                                seen.unsent(resp.status)
                            continue
                        raise error
                    self._rotation.succeeded(url)
                    self._note_reached(plane, resp.headers)
                    yield url, resp
                    return
            if waits is None:
                waits = self._waits(plane, time.monotonic() + self._timeout)
            pause = next(waits, None) if seen.agent_may_come_back else None
            if pause is None:
                raise error or TransientError("gateway: no replica is live")
            await asyncio.sleep(pause)

    async def proxy_stream(
        self,
        method: str,
        *,
        plane_type: str,
        plane_id: str,
        cr_namespace: str | None,
        cr_name: str,
        path: str,
        query: str,
    ) -> AsyncIterator[bytes]:
        """A streamed request (watch=true, follow=true): lines of the body as they arrive.

        A watch whose replica goes away resumes on another from the last resourceVersion seen
        (a half-received line is dropped: the resumed watch sends that event again); other
        streams end with a :class:`TransientError`. Resuming stops after as many breaks in a
        row without a line as there are replicas."""
        target = self.proxy_path(plane_type, plane_id, cr_namespace, cr_name, path)
        position = WatchPosition() if is_watch(query) else None
        timeout = timeout_of(query) if position is not None else None
        ends_at = time.monotonic() + timeout if timeout is not None else None
        breaks = 0
        while True:
            plane = plane_key(plane_type, plane_id)
            async with self._stream_response(method, f"{target}?{query}", plane) as (url, resp):
                try:
                    async for line in resp.content:
                        if position is not None and not line.endswith(b"\n"):
                            raise aiohttp.ClientPayloadError("the stream ended mid-line")
                        breaks = 0
                        if position is not None:
                            position.observe(line)
                        yield line
                except (aiohttp.ClientError, TimeoutError) as exc:
                    if position is None:
                        raise TransientError(f"stream from gateway {url} broke: {exc!r}") from exc
                    why = repr(exc)
                else:
                    if position is None or not _ended_early(position, ends_at):
                        return
                    why = "it ended before its timeoutSeconds"
            self._rotation.failed(url)
            breaks += 1
            if breaks > len(await self.replica_urls()):
                raise TransientError(f"watch {path} through gateway {url} keeps breaking: {why}")
            left = ends_at - time.monotonic() if ends_at is not None else None
            query = position.resume_query(query, left)
            log.info(
                "watch %s via %s: %s; resuming at resourceVersion %s",
                path,
                url,
                why,
                position.resource_version,
            )

    # ---- the push channel ----------------------------------------------------------------------

    async def events(self) -> AsyncIterator[Mapping[str, Any]]:
        """Connection events of every replica, merged. A replica whose stream ends is
        subscribed to again after a pause; when every replica's stream has ended the iterator
        raises (the caller reopens it, as with one gateway)."""
        queue: asyncio.Queue[Mapping[str, Any] | _Ended] = asyncio.Queue(maxsize=1000)
        followers: dict[str, asyncio.Task[None]] = {}
        paused_until: dict[str, float] = {}
        try:
            while True:
                now = time.monotonic()
                for url in await self.replica_urls():
                    if url not in followers and paused_until.get(url, 0.0) <= now:
                        followers[url] = asyncio.create_task(self._follow_events(url, queue))
                if not followers:
                    raise TransientError("gateway: no replica is live")
                try:
                    item = await asyncio.wait_for(queue.get(), EVENTS_RESUBSCRIBE_SECONDS)
                except TimeoutError:
                    continue
                if isinstance(item, _Ended):
                    followers.pop(item.url, None)
                    paused_until[item.url] = time.monotonic() + EVENTS_RESUBSCRIBE_SECONDS
                    if not followers:
                        raise item.error
                    log.info("event stream of gateway %s ended: %s", item.url, item.error)
                    continue
                yield item
        finally:
            for task in followers.values():
                task.cancel()
            await asyncio.gather(*followers.values(), return_exceptions=True)

    async def _follow_events(
        self, url: str, queue: asyncio.Queue[Mapping[str, Any] | _Ended]
    ) -> None:
        error: Failure = TransientError(f"gateway {url}: event stream ended")
        try:
            async with self._open(
                "GET", url + "/api/v1/planes/events", timeout=EVENTS_TIMEOUT
            ) as resp:
                if resp.status >= 400:
                    raise gateway_error(resp.status, "events unavailable")
                async for line in resp.content:
                    event = _event_of(line)
                    if event is not None:
                        await queue.put({"replica": url, **event})
        except Failure as exc:
            error = exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._rotation.failed(url)
            error = _unreachable(url, exc)
        await queue.put(_Ended(url, error))


def plane_key(plane_type: str, plane_id: str) -> str:
    """What the client remembers a plane by (an agent serves a plane, whatever its CR)."""
    return f"{plane_type}/{plane_id}"


def _ended_early(position: WatchPosition, ends_at: float | None) -> bool:
    """A watch that ends cleanly before its timeoutSeconds, and not with an ERROR event, lost
    its replica or that replica's agent (the gateway ends the body when the agent's stream
    fails): it is resumed. Without timeoutSeconds an end is an end."""
    return ends_at is not None and not position.error_seen and time.monotonic() < ends_at - 1


def _event_of(line: bytes) -> Mapping[str, Any] | None:
    """One event line (blank lines keep the stream alive; a line not an object is skipped)."""
    if not line.strip():
        return None
    try:
        event = json.loads(line)
    except ValueError:
        log.warning("gateway event stream: a line that is not JSON, skipped")
        return None
    return event if isinstance(event, dict) else None


def _summed(answers: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    """Answers of every replica to one write: the first, with the counts added up."""
    merged = dict(answers[0])
    for key in (*keys, "disconnectedAgents"):
        if any(key in a for a in answers):
            merged[key] = sum(count_of(a.get(key)) for a in answers)
    merged["replicas"] = [a.get("replica") for a in answers]
    return merged
