"""A gateway replica's Lease is renewed, against the real API server: a Lease update must
name the version it replaces (the API server answers 422 without one), and the renewal sent
none, so every renewal after the first failed. Each replica dropped out of the directory 15 s
after it started: peers stopped forwarding to it, and a one-connection agent's plane became
unreachable through every other replica."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import pytest
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Namespace

from workflowplane.gateway.replica_lease import ReplicaLease
from workflowplane.protocol.replicas import live_replicas
from workflowplane.testenv import ApiServer
from workflowplane.testenv.tools import async_client

pytestmark = pytest.mark.integration


async def _renewed_at(kube: object, lease: ReplicaLease, namespace: str) -> dt.datetime:
    stored = await kube.get(Lease, lease.name, namespace=namespace)  # type: ignore[attr-defined]
    assert stored.spec and stored.spec.renewTime
    renewed: dt.datetime = stored.spec.renewTime
    return renewed


async def test_a_replicas_lease_is_renewed_again_and_again(control_plane: ApiServer) -> None:
    namespace = f"lease-{uuid.uuid4().hex[:6]}"
    kube = async_client(control_plane.kubeconfig, control_plane.context)
    try:
        await kube.create(Namespace(metadata=ObjectMeta(name=namespace)))
        # a Lease left by an earlier run of this replica (same name), as after a restart
        old = ReplicaLease(kube, namespace, "gw-a", "https://10.0.0.1:8444")
        await old.renew()
        lease = ReplicaLease(kube, namespace, "gw-a", "https://10.0.0.2:8444")
        times = []
        for _ in range(3):
            await lease.renew()
            times.append(await _renewed_at(kube, lease, namespace))
            await asyncio.sleep(0.01)
        assert times == sorted(times) and len(set(times)) == 3
        # someone else wrote it in between (another replica of the same name): still renewed
        await old.renew()
        await lease.renew()
        (replica,) = await live_replicas(kube, namespace)
        assert replica.internal_url == "https://10.0.0.2:8444"
        await lease.release()
        assert await live_replicas(kube, namespace) == []
        await lease.renew()  # deleted meanwhile: created again
        assert len(await live_replicas(kube, namespace)) == 1
    finally:
        await kube.delete(Namespace, namespace)
        await kube.close()
