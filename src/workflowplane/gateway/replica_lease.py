"""This replica's entry in the replica directory: a Lease it renews while it serves.

Peers (and the gateway client) find live replicas by listing these Leases
(``protocol/replicas.py``). The Lease is renewed every 5 s for 15 s, so a replica killed
without deleting it drops out of the directory within 15 s; a draining replica deletes it at
once. A failed renewal is logged and tried again at the next tick (the control plane may be
briefly away; the replica keeps serving meanwhile).
"""

from __future__ import annotations

import asyncio
import logging

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease

from workflowplane.kits.clock import utcnow
from workflowplane.kits.errors import EXPECTED_ERRORS, NETWORK_ERRORS, status_of
from workflowplane.kits.tasks import cancel_and_wait
from workflowplane.protocol.replicas import INTERNAL_URL_ANNOTATION, REPLICA_LABEL, lease_name

log = logging.getLogger(__name__)
LEASE_SECONDS = 15
RENEW_SECONDS = 5.0
NOT_FOUND = 404
CONFLICT = 409


class ReplicaLease:
    """Creates, renews and deletes one replica's Lease."""

    def __init__(
        self,
        kube: AsyncClient,
        namespace: str,
        replica: str,
        internal_url: str,
        renew_seconds: float = RENEW_SECONDS,
    ) -> None:
        self._kube = kube
        self._namespace = namespace
        self.replica = replica
        self.name = lease_name(replica)
        self._internal_url = internal_url
        self._renew_seconds = renew_seconds
        self._acquired = utcnow()
        self._task: asyncio.Task[None] | None = None
        self._version: str | None = None  # of the Lease as this replica wrote it last

    def _lease(self) -> Lease:
        return Lease(
            metadata=ObjectMeta(
                name=self.name,
                namespace=self._namespace,
                labels={REPLICA_LABEL: "true"},
                annotations={INTERNAL_URL_ANNOTATION: self._internal_url},
            ),
            spec=LeaseSpec(
                holderIdentity=self.replica,
                leaseDurationSeconds=LEASE_SECONDS,
                acquireTime=self._acquired,
                renewTime=utcnow(),
            ),
        )

    async def renew(self) -> None:
        """Write the Lease with a fresh renewTime: an update names the version it replaces
        (the API server refuses a Lease update without one: 422), so the version written
        last is kept; a missing Lease is created, and one written by someone else since
        (409), or left by an earlier run of this replica, is read for its version first."""
        try:
            written = await self._write(self._version)
        except ApiError as exc:
            if exc.status.code not in (CONFLICT, NOT_FOUND):
                raise
            written = await self._write(await self._current_version())
        self._version = written.metadata.resourceVersion if written.metadata else None

    async def _write(self, version: str | None) -> Lease:
        lease = self._lease()
        if version is None:
            return await self._kube.create(lease)
        assert lease.metadata is not None
        lease.metadata.resourceVersion = version
        return await self._kube.replace(lease)

    async def _current_version(self) -> str | None:
        """The stored Lease's version (None: there is none, so it is created)."""
        try:
            stored = await self._kube.get(Lease, self.name, namespace=self._namespace)
        except ApiError as exc:
            if exc.status.code != NOT_FOUND:
                raise
            return None
        return stored.metadata.resourceVersion if stored.metadata else None

    async def start(self) -> None:
        """The first write before returning (a replica is in the directory once it serves),
        then renewals in the background. A replica without the Lease still serves its own
        agents (e.g. RBAC without leases: one replica, as OpenChoreo's chart runs it)."""
        await self._renew_logged()
        self._task = asyncio.create_task(self._keep(), name=f"lease {self.name}")

    async def _renew_logged(self) -> None:
        try:
            await self.renew()
        except EXPECTED_ERRORS + NETWORK_ERRORS as exc:
            log.warning(
                "could not write Lease %s (peers cannot find this replica): %s", self.name, exc
            )

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(self._renew_seconds)
            await self._renew_logged()

    async def release(self) -> None:
        """Stop renewing and delete the Lease (idempotent; a missing Lease is fine)."""
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None
        self._version = None
        try:
            await self._kube.delete(Lease, self.name, namespace=self._namespace)
        except EXPECTED_ERRORS + NETWORK_ERRORS as exc:
            if status_of(exc) != NOT_FOUND:
                log.warning("could not delete Lease %s: %s", self.name, exc)
