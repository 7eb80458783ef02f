"""The gateway replica directory: one coordination.k8s.io Lease per live replica.

Each gateway replica keeps a Lease in the gateway namespace (``gateway/replica_lease.py``
writes it); whoever needs the replicas (a peer replica forwarding a request, the gateway
client) lists them here. A Lease whose ``renewTime + leaseDurationSeconds`` is past belongs
to no live replica (the replica was killed without deleting it).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from lightkube import AsyncClient
from lightkube.resources.coordination_v1 import Lease

from workflowplane.kits.clock import utcnow

REPLICA_LABEL = "openchoreo.dev/gateway-replica"
INTERNAL_URL_ANNOTATION = "openchoreo.dev/gateway-internal-url"
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


def lease_alive(lease: Lease, now: dt.datetime) -> bool:
    """Renewed within its duration."""
    spec = lease.spec
    if spec is None or spec.renewTime is None or not spec.leaseDurationSeconds:
        return False
    return spec.renewTime + dt.timedelta(seconds=spec.leaseDurationSeconds) > now


def replica_of(lease: Lease) -> Replica | None:
    """The replica a Lease announces; None when it lacks its name or internal URL."""
    annotations = (lease.metadata.annotations if lease.metadata else None) or {}
    url = annotations.get(INTERNAL_URL_ANNOTATION, "")
    name = lease.spec.holderIdentity if lease.spec else None
    if not url.startswith("https://") or not name:
        return None
    return Replica(name, url.rstrip("/"))


async def live_replicas(client: AsyncClient, namespace: str) -> list[Replica]:
    """Every replica whose Lease is live, sorted by name."""
    now = utcnow()
    found = [
        replica
        async for lease in client.list(Lease, namespace=namespace, labels={REPLICA_LABEL: "true"})
        if lease_alive(lease, now) and (replica := replica_of(lease)) is not None
    ]
    return sorted(found, key=lambda r: r.name)
