"""The agent's connections to every gateway replica: discovery, and one ``AgentTunnel`` each.

Discovery (docs/ha.md): an explicit list (``--server-urls``; ``--server-url`` alone is a
list of one) is fixed for the life of the process. A DNS name (``--server-dns-name host:port``,
a headless Service) is resolved every ``--server-resolve-seconds``; each address is a replica,
dialled by its address with the name as TLS server name (SNI and certificate check) and as the
Host header, so the certificate is still checked against the Service's name.

``TunnelFleet`` owns one tunnel per replica address, each with its own backoff. An address that
appears is dialled at once. One that disappears is no longer dialled, but a connection it holds
is left to end on its own (a draining replica closes it with 1001 once its requests in flight
are answered), for at most ``retire_grace`` seconds. A resolution that fails or finds no
address keeps the replicas known: a DNS hiccup must not disconnect the plane.

To the rest of the agent the fleet looks like one tunnel: ``connected`` (at least one
connection is up), ``reconnect_requested`` (every replica redials: a new certificate or consent
list), ``metrics`` (one registry for all of them).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import SplitResult, urlsplit

from workflowplane.agent.metrics import AgentMetrics
from workflowplane.kits.tasks import cancel_and_wait

log = logging.getLogger(__name__)
SCHEMES = ("wss", "ws", "https", "http")
DEFAULT_PORTS = {"wss": 443, "https": 443, "ws": 80, "http": 80}
DEFAULT_RESOLVE_SECONDS = 10.0
RESOLVE_TIMEOUT_SECONDS = 10.0
RETIRE_GRACE_SECONDS = 30.0  # longer than a replica's drain (its --drain-seconds, 20 s)
MAX_REPLICAS = 64  # addresses beyond it (a misconfigured name) are not dialled
# A replica of several is redialled at least this often (see redial_cap).
REPLICA_RECONNECT_MAX_SECONDS = 3.0
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", re.IGNORECASE)

Resolver = Callable[[str, int], Awaitable[list[str]]]


class ReplicaConfigError(ValueError):
    """A replica setting that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class ReplicaAddress:
    """Where one replica is dialled; ``server_name`` when ``url`` names an address."""

    url: str
    server_name: str | None = None

    def headers(self) -> dict[str, str]:
        """The Host header of the name the address was found under (none for a plain URL)."""
        if self.server_name is None:
            return {}
        port = urlsplit(self.url).port
        return {"Host": f"{self.server_name}:{port}" if port else self.server_name}

    def __str__(self) -> str:
        return self.url if self.server_name is None else f"{self.url} ({self.server_name})"


# ---- parsing ----------------------------------------------------------------------------------


def check_url(value: str, setting: str) -> str:
    """``value`` when it is a URL the agent can dial, else a ReplicaConfigError naming it."""
    _split(value, setting)
    return value


def _split(value: str, setting: str, *, query: bool = True) -> SplitResult:
    """The URL's parts, every one checked (ReplicaConfigError naming what is wrong). A query
    of its own is kept, planeID and planeType merged into it (as OpenChoreo's agent does;
    ``tunnel.dial_url``), unless ``query`` is False (a name's addresses take none)."""
    example = "e.g. wss://cluster-gateway.openchoreo-control-plane.svc:8443/ws"
    try:
        url = urlsplit(value)
        url.port  # noqa: B018 - parsed on access: out of range or not a number raises here
    except ValueError as exc:
        raise ReplicaConfigError(f"{setting}: {value!r} is not a URL ({exc}); {example}") from exc
    if url.scheme not in SCHEMES:
        raise ReplicaConfigError(
            f"{setting}: {value!r} must start with {', '.join(s + '://' for s in SCHEMES)}; "
            + example
        )
    if not url.hostname:
        raise ReplicaConfigError(f"{setting}: {value!r} names no host; {example}")
    if url.username is not None or url.password is not None:
        raise ReplicaConfigError(f"{setting}: {value!r} must not carry credentials")
    if url.fragment or (url.query and not query):
        kind = "a fragment" if url.fragment else "a query"
        raise ReplicaConfigError(f"{setting}: {value!r} must not carry {kind}")
    return url


def parse_server_urls(values: Iterable[str], setting: str = "--server-urls") -> tuple[str, ...]:
    """Comma-separated gateway URLs (from one or more values), each checked, none twice."""
    urls: list[str] = []
    for value in values:
        for position, entry in enumerate(value.split(","), start=1):
            url = entry.strip()
            if not url:
                raise ReplicaConfigError(f"{setting}: entry {position} of {value!r} is empty")
            if url in urls:
                raise ReplicaConfigError(f"{setting}: {url!r} is listed twice")
            urls.append(check_url(url, setting))
    return tuple(urls)


@dataclass(frozen=True)
class DnsName:
    """A name whose every address is a replica: ``host:port`` (wss, path /ws) or a URL."""

    host: str
    port: int
    scheme: str = "wss"
    path: str = ""

    @classmethod
    def parse(cls, value: str, setting: str = "--server-dns-name") -> DnsName:
        text = value.strip()
        given_url = "://" in text
        if not given_url and "/" in text:
            raise ReplicaConfigError(f"{setting}: {value!r} must be host:port or a wss:// URL")
        url = _split(text if given_url else f"wss://{text}", setting, query=False)
        host = url.hostname or ""
        if not given_url and url.port is None:
            raise ReplicaConfigError(
                f"{setting}: {value!r} needs a port, e.g. cluster-gateway-headless:8443"
            )
        if _is_address(host):
            raise ReplicaConfigError(
                f"{setting}: {host!r} is an address, not a name to resolve; give addresses "
                "with --server-urls"
            )
        if len(host) > 253 or not all(_LABEL.match(label) for label in host.split(".")):
            raise ReplicaConfigError(f"{setting}: {host!r} is not a DNS name")
        path = url.path if url.path != "/" else ""
        port = url.port or DEFAULT_PORTS[url.scheme]
        return cls(host=host, port=port, scheme=url.scheme, path=path)

    def address(self, ip: str) -> ReplicaAddress:
        literal = f"[{ip}]" if ":" in ip else ip
        return ReplicaAddress(f"{self.scheme}://{literal}:{self.port}{self.path}", self.host)

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# ---- discovery --------------------------------------------------------------------------------


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for ``host`` (a headless Service: one a pod)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


class Discovery(Protocol):
    """Where the replicas are: ``addresses`` raises OSError or TimeoutError when it cannot say."""

    @property
    def periodic(self) -> bool: ...

    async def addresses(self) -> list[ReplicaAddress]: ...


@dataclass(frozen=True)
class ListedReplicas:
    """The explicit list: the same replicas for the life of the process."""

    urls: tuple[str, ...]
    periodic: bool = False

    async def addresses(self) -> list[ReplicaAddress]:
        return [ReplicaAddress(url) for url in self.urls]

    def __str__(self) -> str:
        return ", ".join(self.urls)


@dataclass(frozen=True)
class ResolvedReplicas:
    """Every address of a DNS name, asked again each time."""

    name: DnsName
    resolver: Resolver = system_resolver
    periodic: bool = True

    async def addresses(self) -> list[ReplicaAddress]:
        ips = await self.resolver(self.name.host, self.name.port)
        return [self.name.address(ip) for ip in ips]

    def __str__(self) -> str:
        return f"every address of {self.name}"


def redial_cap(max_backoff: float, several: bool) -> float:
    """The longest backoff before redialling one replica. With one gateway, the configured
    cap (30 s) spares a gateway that is down. With several, the plane is served by the others
    meanwhile, and a replica that restarts (a rolling update: down for its drain and start)
    must get its agents back within seconds, not after a backoff grown to 30 s while it was
    down: redialling a closed port costs little (bench/ha.py, docs/ha.md)."""
    return min(max_backoff, REPLICA_RECONNECT_MAX_SECONDS) if several else max_backoff


def discovery_from(
    server_url: str,
    server_urls: Sequence[str],
    server_dns_name: str,
    resolver: Resolver = system_resolver,
) -> ListedReplicas | ResolvedReplicas:
    """The one way the agent finds replicas; exactly one of the three settings may be given."""
    given = [
        name
        for name, value in (
            ("--server-url", server_url),
            ("--server-urls", server_urls),
            ("--server-dns-name", server_dns_name),
        )
        if value
    ]
    if len(given) != 1:
        raise ReplicaConfigError(
            "give exactly one of --server-url (one replica), --server-urls (a list) or "
            "--server-dns-name (every address of a name); "
            + (f"got {' and '.join(given)}" if given else "got none")
        )
    if server_dns_name:
        return ResolvedReplicas(DnsName.parse(server_dns_name), resolver)
    if server_urls:
        return ListedReplicas(parse_server_urls(server_urls))
    return ListedReplicas((check_url(server_url.strip(), "--server-url"),))


# ---- the fleet --------------------------------------------------------------------------------


class Tunnel(Protocol):
    """What the fleet needs of one replica's connection (``agent.tunnel.AgentTunnel``)."""

    connected: asyncio.Event
    reconnect_requested: asyncio.Event

    async def run(self) -> None: ...


# A replica's tunnel, given the callback it calls whenever its ``connected`` changes.
Dial = Callable[[ReplicaAddress, Callable[[], None]], Tunnel]


class _Replica:
    """One replica's tunnel and the task running it."""

    def __init__(self, address: ReplicaAddress, dial: Dial, changed: Callable[[], None]) -> None:
        self.address = address
        self.leaving = False
        self._on_change = changed
        self.tunnel = dial(address, self._changed)
        self.task: asyncio.Task[None] = asyncio.create_task(
            self.tunnel.run(), name=f"tunnel {address}"
        )

    def _changed(self) -> None:
        if self.leaving and not self.tunnel.connected.is_set():
            self.task.cancel()  # its last connection ended: no more dialling
        self._on_change()

    @property
    def up(self) -> bool:
        return self.tunnel.connected.is_set()


class TunnelFleet:
    """One tunnel per replica the discovery finds, kept in step with it."""

    def __init__(
        self,
        discovery: Discovery,
        dial: Dial,
        metrics: AgentMetrics,
        *,
        resolve_every: float = DEFAULT_RESOLVE_SECONDS,
        retire_grace: float = RETIRE_GRACE_SECONDS,
    ) -> None:
        self.discovery = discovery
        self.metrics = metrics
        self.connected = asyncio.Event()
        self.reconnect_requested = asyncio.Event()
        self._dial = dial
        self._resolve_every, self._retire_grace = resolve_every, retire_grace
        self._replicas: dict[ReplicaAddress, _Replica] = {}
        self._leaving: set[_Replica] = set()
        self._crashed: asyncio.Future[BaseException] | None = None

    # ---- what the agent reads -------------------------------------------------------------

    @property
    def replicas(self) -> dict[ReplicaAddress, bool]:
        """The replicas known, and whether each holds an admitted connection."""
        return {address: replica.up for address, replica in self._replicas.items()}

    @property
    def leaving(self) -> int:
        """Replicas gone from the discovery whose connection is still open (not redialled)."""
        return len(self._leaving)

    def describe(self) -> str:
        """Per replica, up or down (for readiness' detail)."""
        if not self._replicas:
            return f"no gateway replica found yet ({self.discovery})"
        states = ", ".join(f"{a} {'up' if up else 'down'}" for a, up in self.replicas.items())
        up = sum(self.replicas.values())
        return f"{up} of {len(self._replicas)} gateway replicas connected: {states}"

    # ---- running ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Dial every replica found, follow the discovery, until cancelled; a tunnel that
        dies of a bug ends it with that error (as the one tunnel did)."""
        self._crashed = asyncio.get_running_loop().create_future()
        self.reconnect_requested.clear()  # a tunnel reads the current certificate anyway
        fan_out = asyncio.create_task(self._fan_out_reconnects(), name="tunnels: reconnect")
        try:
            while True:
                await self.refresh()
                wait = self._resolve_every if self.discovery.periodic else None
                with contextlib.suppress(TimeoutError):
                    raise await asyncio.wait_for(asyncio.shield(self._crashed), wait)
        finally:
            await cancel_and_wait([fan_out])
            await self.close()

    async def close(self) -> None:
        """Stop every replica's tunnel (their connections end as ``shutdown``)."""
        await cancel_and_wait([r.task for r in (*self._replicas.values(), *self._leaving)])
        self._replicas.clear()
        self._leaving.clear()
        self._changed()

    async def refresh(self) -> None:
        """Ask the discovery once and follow its answer (a failed or empty one changes
        nothing)."""
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT_SECONDS):
                found = await self.discovery.addresses()
        except (OSError, TimeoutError) as exc:
            log.warning(
                "finding the gateway replicas (%s) failed: %s; keeping the %d known",
                self.discovery,
                exc or type(exc).__name__,
                len(self._replicas),
            )
            return
        if not found:
            log.warning(
                "no gateway replica at %s; keeping the %d known",
                self.discovery,
                len(self._replicas),
            )
            return
        self.follow(found)

    def follow(self, found: Sequence[ReplicaAddress]) -> None:
        """Start a tunnel for each new address, retire those of addresses gone."""
        wanted = list(dict.fromkeys(found))
        if len(wanted) > MAX_REPLICAS:
            log.warning(
                "%s gives %d addresses; dialling the first %d",
                self.discovery,
                len(wanted),
                MAX_REPLICAS,
            )
            wanted = wanted[:MAX_REPLICAS]
        for address in [a for a in self._replicas if a not in wanted]:
            self._retire(self._replicas.pop(address))
        for address in wanted:
            if address not in self._replicas:
                log.info("gateway replica %s found: connecting", address)
                replica = _Replica(address, self._dial, self._changed)
                replica.task.add_done_callback(self._ended)
                self._replicas[address] = replica
        self._changed()

    def _retire(self, replica: _Replica) -> None:
        """No more dialling; an open connection ends when the replica closes it, or after
        the grace."""
        replica.leaving = True
        if not replica.up:
            log.info("gateway replica %s is gone: no longer dialled", replica.address)
            replica.task.cancel()
            return
        log.info(
            "gateway replica %s is gone: no longer dialled; its open connection ends when the "
            "replica closes it (at most %gs)",
            replica.address,
            self._retire_grace,
        )
        self._leaving.add(replica)
        timer = asyncio.get_running_loop().call_later(self._retire_grace, replica.task.cancel)

        def left(_: asyncio.Task[None]) -> None:
            timer.cancel()
            self._leaving.discard(replica)

        replica.task.add_done_callback(left)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._crashed is None or self._crashed.done():
            return
        error = task.exception()
        if error is not None:
            self._crashed.set_result(error)

    def _changed(self) -> None:
        connected = sum(1 for r in self._replicas.values() if r.up)
        self.metrics.replicas_seen(len(self._replicas), connected)
        if connected or any(r.up for r in self._leaving):
            self.connected.set()
        else:
            self.connected.clear()

    async def _fan_out_reconnects(self) -> None:
        """The agent asks once (a new leaf); every replica's connection redials with it."""
        while True:
            await self.reconnect_requested.wait()
            self.reconnect_requested.clear()
            for replica in (*self._replicas.values(), *self._leaving):
                replica.tunnel.reconnect_requested.set()
