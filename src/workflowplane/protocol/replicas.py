"""Where the gateway's replicas are, and which one a caller should try next.

Each replica keeps a coordination.k8s.io/v1 Lease in the gateway namespace (written by the
gateway; docs/ha.md): ``spec.holderIdentity`` is its name, the annotation
``openchoreo.dev/gateway-internal-url`` its internal API, and a Lease whose renewTime plus
leaseDurationSeconds is past is not a live replica. :func:`live_replicas` reads them.

A caller needs a list of base URLs that stays current without asking the API server on every
request: :class:`LeaseDirectory` re-reads the Leases every few seconds, and at once after a
replica failed; :class:`StaticDirectory` is a fixed list (flags, ``wpctl dev up``).
:class:`ReplicaRotation` spreads requests over a directory's replicas round-robin, putting
the ones that failed recently last.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from lightkube import AsyncClient
from lightkube.resources.coordination_v1 import Lease

from workflowplane.kits.errors import KUBE_READ_ERRORS

log = logging.getLogger(__name__)
REPLICA_LABEL = "openchoreo.dev/gateway-replica"
INTERNAL_URL_ANNOTATION = "openchoreo.dev/gateway-internal-url"
REFRESH_SECONDS = 5.0
# A replica that failed is tried last for this long (unless nothing else is left).
FAILURE_MEMORY_SECONDS = 10.0
MAX_URL_LENGTH = 2048
LEASE_PREFIX = "cluster-gateway-"
DNS_LABEL_MAX = 63
_NOT_DNS = re.compile(r"[^a-z0-9-]+")


@dataclass(frozen=True)
class Replica:
    name: str
    internal_url: str


def lease_name(replica: str) -> str:
    """``cluster-gateway-<replica name as a DNS label>`` (lower case, other characters as
    ``-``, at most 63 characters)."""
    label = _NOT_DNS.sub("-", replica.lower()).strip("-")
    return (LEASE_PREFIX + label)[:DNS_LABEL_MAX].rstrip("-")


def valid_internal_url(url: str) -> bool:
    """An https base URL with a host and nothing after the port (Leases are read, not
    trusted: a malformed annotation skips that replica instead of breaking every request)."""
    return valid_https_url(url, path=False)


def valid_https_url(url: str, *, path: bool) -> bool:
    """An https URL with a host and a port that can be; a path only where ``path``. Never
    credentials, a query or a fragment, which a request built on it would carry along."""
    return valid_base_url(url, schemes=("https",), path=path)


def valid_base_url(url: str, *, schemes: tuple[str, ...], path: bool) -> bool:
    """A URL of one of ``schemes`` that requests are built on (see :func:`valid_https_url`)."""
    if not url or len(url) > MAX_URL_LENGTH or not url.isprintable() or " " in url:
        return False
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        return False
    return (
        parts.scheme in schemes
        and bool(parts.hostname)
        and (path or parts.path in ("", "/"))
        and parts.username is None
        and not parts.query
        and not parts.fragment
    )


def replica_of(lease: Lease, now: dt.datetime) -> Replica | None:
    """The replica a Lease announces, if it is current and well formed."""
    spec, meta = lease.spec, lease.metadata
    if spec is None or meta is None or not spec.holderIdentity:
        return None
    renewed = spec.renewTime or spec.acquireTime
    if renewed is None or spec.leaseDurationSeconds is None:
        return None
    if renewed.tzinfo is None:
        renewed = renewed.replace(tzinfo=dt.UTC)
    if renewed + dt.timedelta(seconds=spec.leaseDurationSeconds) <= now:
        return None
    url = (meta.annotations or {}).get(INTERNAL_URL_ANNOTATION, "")
    if not valid_internal_url(url):
        log.warning("gateway Lease %s has no valid %s: skipped", meta.name, INTERNAL_URL_ANNOTATION)
        return None
    return Replica(spec.holderIdentity, url.rstrip("/"))


async def live_replicas(
    client: AsyncClient, namespace: str, *, now: dt.datetime | None = None
) -> list[Replica]:
    """The replicas whose Leases are current, sorted by name."""
    at = now or dt.datetime.now(dt.UTC)
    found = [
        replica
        async for lease in client.list(Lease, namespace=namespace, labels={REPLICA_LABEL: "true"})
        if (replica := replica_of(lease, at)) is not None
    ]
    return sorted(set(found), key=lambda r: r.name)


class ReplicaDirectory(Protocol):
    """The base URLs of the replicas to use now; told when one failed."""

    async def urls(self) -> list[str]: ...

    def failed(self, url: str) -> None: ...

    async def close(self) -> None: ...


class StaticDirectory:
    """A fixed list (one URL: today's single gateway)."""

    def __init__(self, urls: Sequence[str]) -> None:
        cleaned = [url.rstrip("/") for url in urls if url.strip()]
        if not cleaned:
            raise ValueError("no gateway URL given")
        self._urls = list(dict.fromkeys(cleaned))

    async def urls(self) -> list[str]:
        return list(self._urls)

    def failed(self, url: str) -> None:
        """A fixed list has nothing to re-read."""

    async def close(self) -> None:
        """Nothing to release."""


class LeaseDirectory:
    """The live replicas from their Leases, re-read every ``refresh_seconds`` and on the next
    call after a failure. While the Leases cannot be read the last list is kept; while none
    was ever found, ``fallback_url`` (the Service) is used."""

    def __init__(
        self,
        kube: AsyncClient,
        namespace: str,
        fallback_url: str | None = None,
        *,
        refresh_seconds: float = REFRESH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        owns_client: bool = False,
    ) -> None:
        self._kube = kube
        self._namespace = namespace
        self._fallback = [fallback_url.rstrip("/")] if fallback_url else []
        self._refresh = refresh_seconds
        self._clock = clock
        self._owns_client = owns_client
        self._known: list[Replica] = []
        self._read_at: float | None = None
        self._lock = asyncio.Lock()

    async def replicas(self) -> list[Replica]:
        """The live replicas as last read (re-read when due)."""
        if self._due():
            async with self._lock:
                if self._due():
                    await self._reread()
        return list(self._known)

    async def urls(self) -> list[str]:
        return [replica.internal_url for replica in await self.replicas()] or list(self._fallback)

    def failed(self, url: str) -> None:
        """A replica failed: it may be gone, so the next call re-reads the Leases."""
        self._read_at = None

    async def close(self) -> None:
        if self._owns_client:
            await self._kube.close()

    def _due(self) -> bool:
        return self._read_at is None or self._clock() - self._read_at >= self._refresh

    async def _reread(self) -> None:
        self._read_at = self._clock()
        try:
            replicas = await live_replicas(self._kube, self._namespace)
        except KUBE_READ_ERRORS as exc:  # RBAC, no namespace, API server down
            known = len(self._known)
            log.warning("gateway Leases unreadable (%s); keeping %d known replica(s)", exc, known)
            return
        if replicas != self._known:
            urls = ", ".join(replica.internal_url for replica in replicas)
            log.info("gateway replicas: %s", urls or "none (using the fallback)")
        self._known = replicas


class ReplicaRotation:
    """Round-robin over a directory's replicas; ones that failed lately go last (they are
    still tried when nothing else is left: the memory of a failure is only a hint)."""

    def __init__(
        self,
        directory: ReplicaDirectory,
        *,
        failure_memory_seconds: float = FAILURE_MEMORY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = directory
        self._memory = failure_memory_seconds
        self._clock = clock
        self._next = 0
        self._failed_at: dict[str, float] = {}

    async def order(self) -> list[str]:
        """Every live replica once: the next in turn first, recently failed ones last."""
        urls = await self.directory.urls()
        if not urls:
            return []
        start = self._next % len(urls)
        self._next += 1
        rotated = urls[start:] + urls[:start]
        now = self._clock()
        fresh = [u for u in rotated if now - self._failed_at.get(u, -self._memory) >= self._memory]
        return fresh + [u for u in rotated if u not in fresh]

    def failed(self, url: str) -> None:
        self._failed_at[url] = self._clock()
        self.directory.failed(url)

    def succeeded(self, url: str) -> None:
        self._failed_at.pop(url, None)
