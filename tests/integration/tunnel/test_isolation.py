"""Isolation between tenants sharing a plane (issue #10, gateway side): consent in the agent's
leaf, squatting, stream caps and foreign Secrets, with real agents and API servers."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.harness import (
    RunningGateway,
    agent_ca,
    agent_config,
    apply,
    eventually,
    registered_agent,
    running_gateway,
    start_agent,
    unique,
    workflow_plane_cr,
    write_agent_identity,
)
from tests.integration.tunnel.scripted import leaf_of, scripted_agent, scripted_plane
from tests.integration.tunnel.test_proxy import _internal_session
from workflowplane.api.consent import parse_allow_list
from workflowplane.api.constants import ANNOTATION_CLIENT_CA_SHARED_WITH
from workflowplane.pki import generate_ca
from workflowplane.testenv import ApiServer
from workflowplane.testenv.tools import kubectl

pytestmark = pytest.mark.integration
WP = "workflowplane"
MakeNamespace = Callable[[ApiServer, str], str]


def _get(gw: RunningGateway, plane_id: str, namespace: str, name: str) -> Any:
    return gw.client.proxy(
        "GET",
        plane_type=WP,
        plane_id=plane_id,
        cr_namespace=namespace,
        cr_name=name,
        path="/api/v1/namespaces/default/secrets",
    )


async def test_a_cr_naming_the_victims_plane_id_and_ca_gets_no_traffic_once_the_leaf_names_the_victim(  # noqa: E501
    control_plane: ApiServer,
    workflow_plane: ApiServer,
    gw: RunningGateway,
    make_namespace: MakeNamespace,
) -> None:
    tenant_b, tenant_a = make_namespace(control_plane, "tb"), make_namespace(control_plane, "ta")
    plane_id, secret = unique("victim"), unique("agent-tls")
    ca = (await write_agent_identity(workflow_plane, secret, f"{tenant_b}/victim")).decode()
    apply(control_plane, workflow_plane_cr("victim", tenant_b, plane_id, ca_pem=ca))
    apply(control_plane, workflow_plane_cr("hijack", tenant_a, plane_id, ca_pem=ca))  # public CA
    await eventually(lambda: len(gw.gateway.planes.for_plane(plane_id)) == 2)
    allowed = (f"{tenant_b}/victim",)  # the plane owner's list: the agent keeps it in its leaf
    running = await start_agent(agent_config(workflow_plane, gw, plane_id, secret, allowed=allowed))
    try:
        (conn,) = gw.gateway.connections.for_plane(WP, plane_id)
        assert conn.authorized == {f"{tenant_b}/victim"}
        assert conn.consent_refused == {f"{tenant_a}/hijack"}
        stolen = await _get(gw, plane_id, tenant_a, "hijack")
        assert stolen.status == 403, stolen.body[:200]
        assert (await _get(gw, plane_id, tenant_b, "victim")).status == 200
        hijack = await gw.client.plane_status(WP, plane_id, namespace=tenant_a, name="hijack")
        assert hijack["connected"] is False and hijack["connectedAgents"] == 0
        assert hijack["consentRefused"] is True and hijack["consentRefusedAgents"] == 1
        victim = await gw.client.plane_status(WP, plane_id, namespace=tenant_b, name="victim")
        assert victim["connected"] is True and victim["consentRefused"] is False
        assert victim["unrestrictedSharedCA"] == []
        # The controller's notify for the hijacking CR grants nothing either.
        notified = await gw.client.notify(
            plane_type=WP, plane_id=plane_id, event="updated", namespace=tenant_a, name="hijack"
        )
        assert notified["authorizationsGranted"] == 0
        assert (await _get(gw, plane_id, tenant_a, "hijack")).status == 403
    finally:
        await running.stop()


async def test_without_a_list_the_reference_flow_holds_and_the_shared_ca_is_pointed_out(
    control_plane: ApiServer,
    workflow_plane: ApiServer,
    gw: RunningGateway,
    make_namespace: MakeNamespace,
) -> None:
    tenant_b, tenant_a = make_namespace(control_plane, "tb"), make_namespace(control_plane, "ta")
    plane_id, agent = await registered_agent(
        control_plane, workflow_plane, gw, tenant_b, "open", name="victim"
    )
    ca = agent_ca(workflow_plane, agent.config.secret_name)
    apply(control_plane, workflow_plane_cr("other", tenant_a, plane_id, ca_pem=ca))
    await eventually(lambda: len(gw.gateway.planes.for_plane(plane_id)) == 2)
    running = await start_agent(agent)
    try:
        for namespace, name in ((tenant_b, "victim"), (tenant_a, "other")):
            assert (await _get(gw, plane_id, namespace, name)).status == 200
            status = await gw.client.plane_status(WP, plane_id, namespace=namespace, name=name)
            assert status["connected"] is True and status["consentRefused"] is False
            assert status["unrestrictedSharedCA"] == sorted([tenant_a, tenant_b])
    finally:
        await running.stop()


async def test_a_squatting_agent_does_not_change_the_victims_status_answer(
    control_plane: ApiServer,
    gw: RunningGateway,
    make_namespace: MakeNamespace,
    tmp_path: Path,
) -> None:
    victim_ns, squat_ns = make_namespace(control_plane, "v"), make_namespace(control_plane, "s")
    plane_id, _ = await scripted_plane(control_plane, gw, victim_ns, "victim")
    before = await gw.client.plane_status(WP, plane_id, namespace=victim_ns, name="victim")
    _, squat_ca = await scripted_plane(control_plane, gw, squat_ns, "squat", plane_id=plane_id)
    # The squatter owns its CA, so its leaf may claim anything, the victim included.
    claims = parse_allow_list([f"{victim_ns}/victim", f"{squat_ns}/squat"]).uris()
    async with scripted_agent(gw, plane_id, leaf_of(squat_ca, uris=claims), tmp_path):
        await eventually(lambda: gw.gateway.connections.for_plane(WP, plane_id))
        after = await gw.client.plane_status(WP, plane_id, namespace=victim_ns, name="victim")
        assert after == before
        assert after["connected"] is False and after["consentRefused"] is False
        squat = await gw.client.plane_status(WP, plane_id, namespace=squat_ns, name="squat")
        assert squat["connected"] is True


async def test_no_caller_reaches_the_agents_own_secret_through_the_tunnel(
    control_plane: ApiServer,
    workflow_plane: ApiServer,
    gw: RunningGateway,
    make_namespace: MakeNamespace,
) -> None:
    """The Secret holds the plane owner's CA key, which the agent may read and replace: a
    caller of the gateway (or one gateway replica gone bad) could take or swap it."""
    namespace = make_namespace(control_plane, "own")
    plane_id, agent = await registered_agent(control_plane, workflow_plane, gw, namespace, "own")
    running = await start_agent(agent)
    try:
        own = f"/api/v1/namespaces/{agent.config.namespace}/secrets"
        for path in (f"{own}/{agent.config.secret_name}", own):
            refused = await _get_path(gw, plane_id, namespace, path)
            assert refused.status == 403, refused.body[:300]
            assert b"not reachable through the tunnel" in refused.body
        served = await _get_path(gw, plane_id, namespace, "/api/v1/namespaces/default/secrets")
        assert served.status == 200, served.body[:300]
    finally:
        await running.stop()


def _get_path(gw: RunningGateway, plane_id: str, namespace: str, path: str) -> Any:
    return gw.client.proxy(
        "GET", plane_type=WP, plane_id=plane_id, cr_namespace=namespace, cr_name="wp", path=path
    )


@contextlib.asynccontextmanager
async def _watch(
    session: aiohttp.ClientSession, gw: RunningGateway, plane_id: str, key: tuple[str, str]
) -> AsyncIterator[aiohttp.ClientResponse]:
    url = gw.client.proxy_url(WP, plane_id, key[0], key[1], "/api/v1/namespaces/default/configmaps")
    async with session.get(url + "?watch=true") as resp:
        yield resp


async def test_stream_caps_leave_room_for_ordinary_requests(
    control_plane: ApiServer,
    workflow_plane: ApiServer,
    crds: Path,
    namespace: str,
    tmp_path: Path,
) -> None:
    async with running_gateway(
        control_plane, tmp_path, max_streams_per_agent=5, max_streams_per_cr=3
    ) as gw:
        plane_id, agent = await registered_agent(control_plane, workflow_plane, gw, namespace, "s")
        ca = agent_ca(workflow_plane, agent.config.secret_name)
        apply(control_plane, workflow_plane_cr("other", namespace, plane_id, ca_pem=ca))
        await eventually(lambda: len(gw.gateway.planes.for_plane(plane_id)) == 2)
        running = await start_agent(agent)
        session = await _internal_session(gw)
        try:
            async with contextlib.AsyncExitStack() as watches:
                for _ in range(3):
                    opened = await watches.enter_async_context(
                        _watch(session, gw, plane_id, (namespace, "wp"))
                    )
                    assert opened.status == 200
                async with _watch(session, gw, plane_id, (namespace, "wp")) as extra:
                    assert extra.status == 429
                    assert "3 streams" in (await extra.json())["message"]
                    assert "--max-streams-per-cr" in (await extra.json())["message"]
                for _ in range(2):
                    opened = await watches.enter_async_context(
                        _watch(session, gw, plane_id, (namespace, "other"))
                    )
                    assert opened.status == 200
                async with _watch(session, gw, plane_id, (namespace, "other")) as extra:
                    assert extra.status == 429 and extra.headers["Retry-After"]
                    message = (await extra.json())["message"]
                    assert "5 streams" in message and "--max-streams-per-agent" in message
                plain = await _get(gw, plane_id, namespace, "wp")
                assert plain.status == 200
            # Closed watches give their slots back.
            (conn,) = gw.gateway.connections.for_plane(WP, plane_id)
            await eventually(lambda: not conn.streams)
            async with _watch(session, gw, plane_id, (namespace, "other")) as again:
                assert again.status == 200
        finally:
            await session.close()
            await running.stop()


async def test_a_ca_in_another_namespaces_secret_needs_that_secrets_consent(
    control_plane: ApiServer, gw: RunningGateway, make_namespace: MakeNamespace
) -> None:
    reader, owner = make_namespace(control_plane, "r"), make_namespace(control_plane, "o")
    ca = generate_ca("owner-ca").cert_pem.decode()
    manifest = workflow_plane_cr("wp", reader, unique("fs"), secret=("agent-ca", "ca.crt"))
    manifest["spec"]["clusterAgent"]["clientCA"]["secretKeyRef"]["namespace"] = owner
    apply(control_plane, manifest)
    planes = gw.gateway.planes

    async def ca_now() -> bytes | None:
        return await planes.fresh_ca(reader, "wp")

    def message() -> str:
        try:
            planes.ca_of(planes.entries[f"{reader}/wp"])
        except Exception as exc:  # noqa: BLE001 - the message is what is compared
            return str(exc)
        return ""

    assert await ca_now() is None
    missing = message()
    kubectl(
        control_plane.kubeconfig,
        control_plane.context,
        "create",
        "secret",
        "generic",
        "agent-ca",
        "-n",
        owner,
        "--from-literal=ca.crt=" + ca,
    )
    assert await ca_now() is None and message() == missing  # exists, but does not consent
    assert "not found or not shared" in missing
    kubectl(
        control_plane.kubeconfig,
        control_plane.context,
        "annotate",
        "secret",
        "agent-ca",
        "-n",
        owner,
        f"{ANNOTATION_CLIENT_CA_SHARED_WITH}={reader}",
    )
    assert await ca_now() == ca.encode()
