"""The control plane's lightkube client over the lean HTTP/1.1 transport (api.kube_client),
against the real API server: objects round-trip, API errors are lightkube's, network failures
are httpx's (so they are classified as transient), and a watch streams."""

from __future__ import annotations

import asyncio
import uuid

import httpx2
import pytest
from lightkube.config.kubeconfig import KubeConfig
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ConfigMap

from tests.integration.harness import eventually
from workflowplane.api.kube import get_dict, kube_client, merge_patch
from workflowplane.kits.errors import is_transient
from workflowplane.testenv import ApiServer

pytestmark = pytest.mark.integration


def _config(server: ApiServer):  # type: ignore[no-untyped-def]
    return KubeConfig.from_file(server.kubeconfig).get(context_name=server.context)


async def test_objects_round_trip_and_errors_are_lightkubes(control_plane: ApiServer) -> None:
    client = kube_client(_config(control_plane), "test")
    name = f"http1-{uuid.uuid4().hex[:8]}"
    try:
        await client.create(ConfigMap(metadata=ObjectMeta(name=name), data={"a": "1"}), "default")
        await merge_patch(client, ConfigMap, name, {"data": {"b": "2"}}, namespace="default")
        stored = await get_dict(client, ConfigMap, name, "default")
        assert stored is not None and stored["data"] == {"a": "1", "b": "2"}
        assert await get_dict(client, ConfigMap, f"{name}-missing", "default") is None
        with pytest.raises(ApiError) as refused:
            await client.create(ConfigMap(metadata=ObjectMeta(name=name)), "default")
        assert refused.value.status.code == 409
        names = [cm.metadata.name async for cm in client.list(ConfigMap, namespace="default")]
        assert name in names
    finally:
        await client.delete(ConfigMap, name, namespace="default")
        await client.close()


async def test_a_watch_streams_events_as_they_happen(control_plane: ApiServer) -> None:
    client = kube_client(_config(control_plane), "test")
    name = f"http1-watch-{uuid.uuid4().hex[:8]}"
    seen: list[str] = []

    async def watch() -> None:
        async for kind, _ in client.watch(
            ConfigMap, namespace="default", fields={"metadata.name": name}
        ):
            seen.append(kind)
            if kind == "DELETED":
                return

    await client.create(ConfigMap(metadata=ObjectMeta(name=name)), "default")
    watching = asyncio.create_task(watch())  # the object as it is now comes first: ADDED
    try:
        await eventually(lambda: seen == ["ADDED"], interval=0.05)
        await client.delete(ConfigMap, name, namespace="default")
        await asyncio.wait_for(watching, 10)
    finally:
        watching.cancel()
        await client.close()
    assert seen == ["ADDED", "DELETED"]


async def test_a_server_that_is_not_there_is_a_transient_network_error(
    control_plane: ApiServer,
) -> None:
    config = _config(control_plane)
    config.cluster.server = "https://127.0.0.1:9"  # discard: nothing listens
    client = kube_client(config, "test")
    try:
        with pytest.raises(httpx2.ConnectError) as failed:
            await get_dict(client, ConfigMap, "any", "default")
    finally:
        await client.close()
    assert is_transient(failed.value)
