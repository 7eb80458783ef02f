"""Agent identity and admission per CR (spec: Agent admission, Multi-tenancy)."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

import aiohttp
import pytest
from cryptography.x509 import BasicConstraints

from tests.integration.harness import (
    RunningGateway,
    agent_ca,
    agent_config,
    apply,
    eventually,
    prepare_agent,
    start_agent,
    unique,
    workflow_plane_cr,
)
from tests.pki_chains import intermediate_ca, root_ca
from workflowplane.agent.bootstrap import load_or_create, renew
from workflowplane.agent.kube import AgentKube
from workflowplane.agent.upstream import Upstream
from workflowplane.pki import (
    generate_ca,
    issue_certificate,
    load_certificates,
    verify_client_certificate,
)
from workflowplane.testenv import ApiServer
from workflowplane.testenv.tools import kubectl

pytestmark = pytest.mark.integration
WP = "workflowplane"


async def test_agent_creates_its_secret_and_the_reference_command_prints_the_ca(
    workflow_plane: ApiServer, gw: RunningGateway
) -> None:
    config = agent_config(workflow_plane, gw, unique("p"), unique("agent-tls"))
    agent = await prepare_agent(config)
    pem = agent_ca(workflow_plane, config.secret_name)
    (ca,) = load_certificates(pem)
    assert ca.extensions.get_extension_for_class(BasicConstraints).value.ca
    assert pem.startswith("-----BEGIN CERTIFICATE-----")
    assert agent.identity is not None
    (leaf,) = load_certificates(agent.identity.client.cert_pem)
    verify_client_certificate([leaf], pem.encode())
    again = await prepare_agent(config)  # a second start reuses the Secret
    assert again.identity is not None and again.identity.ca.cert_pem == pem.encode()
    await agent.upstream.close()
    await again.upstream.close()


async def test_renewal_issues_a_new_leaf_from_the_same_ca(workflow_plane: ApiServer) -> None:
    upstream = Upstream.from_kubeconfig(workflow_plane.kubeconfig, workflow_plane.context, 1 << 20)
    client = AgentKube(upstream)
    name = unique("agent-tls")
    first = await load_or_create(client, "openchoreo-workflow-plane", name, "p", 3650, 1)
    assert first.renewal_due(1 / 3, dt.datetime.now(dt.UTC) + dt.timedelta(hours=20))
    renewed = await renew(client, "openchoreo-workflow-plane", name, first, "p", 1)
    assert renewed.client.cert_pem != first.client.cert_pem
    (leaf,) = load_certificates(renewed.client.cert_pem)
    verify_client_certificate([leaf], first.ca.cert_pem)
    stored = await load_or_create(client, "openchoreo-workflow-plane", name, "p", 3650, 1)
    assert stored.client.cert_pem == renewed.client.cert_pem
    await upstream.close()


async def test_inline_and_secret_ref_cas_both_admit(
    control_plane: ApiServer, workflow_plane: ApiServer, gw: RunningGateway, namespace: str
) -> None:
    plane_id = unique("p")
    config = agent_config(workflow_plane, gw, plane_id, unique("agent-tls"))
    agent = await prepare_agent(config)
    pem = agent_ca(workflow_plane, config.secret_name)
    kubectl(
        control_plane.kubeconfig,
        control_plane.context,
        "create",
        "secret",
        "generic",
        "agent-ca",
        "-n",
        namespace,
        "--from-literal=ca.crt=" + pem,
    )
    apply(control_plane, workflow_plane_cr("inline", namespace, plane_id, ca_pem=pem))
    apply(
        control_plane,
        workflow_plane_cr("by-secret", namespace, plane_id, secret=("agent-ca", "ca.crt")),
    )
    await eventually(lambda: len(gw.gateway.planes.for_plane(plane_id)) == 2)
    await eventually(lambda: gw.gateway.planes.all_cas().count(b"BEGIN") >= 1)
    running = await start_agent(agent)
    try:
        for name in ("inline", "by-secret"):
            status = await gw.client.plane_status(WP, plane_id, namespace=namespace, name=name)
            assert status["connected"] is True and status["connectedAgents"] == 1
    finally:
        await running.stop()


async def test_agent_no_cr_trusts_is_refused_and_the_reason_logged(
    control_plane: ApiServer,
    workflow_plane: ApiServer,
    gw: RunningGateway,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    plane_id = unique("p")
    trusted = generate_ca("trusted-elsewhere").cert_pem.decode()
    apply(control_plane, workflow_plane_cr("wp", namespace, plane_id, ca_pem=trusted))
    await eventually(lambda: gw.gateway.planes.for_plane(plane_id))
    running = await start_agent(
        agent_config(workflow_plane, gw, plane_id, unique("agent-tls")), wait=False
    )
    try:
        # Refused after the handshake with a 401 saying why (as OpenChoreo's gateway does),
        # not with a bare TLS alert the agent cannot explain.
        await eventually(lambda: "verifies against no CR's CA" in caplog.text, timeout=10)
        assert not running.agent.tunnel.connected.is_set()
        status = await gw.client.plane_status(WP, plane_id)
        assert status["connectedAgents"] == 0
    finally:
        await running.stop()


def _client_context(
    gw: RunningGateway, cert_pem: bytes, key_pem: bytes, tmp: Path
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(gw.server_ca_file))
    (tmp / "c.crt").write_bytes(cert_pem)
    (tmp / "c.key").write_bytes(key_pem)
    context.load_cert_chain(tmp / "c.crt", tmp / "c.key")
    return context


async def _dial(gw: RunningGateway, plane_id: str, context: ssl.SSLContext | None) -> int | str:
    url = f"https://127.0.0.1:{gw.gateway.ports['public']}/ws?planeType={WP}&planeID={plane_id}"
    async with aiohttp.ClientSession() as session:
        try:
            async with session.ws_connect(
                url, ssl=context or ssl.create_default_context(cafile=str(gw.server_ca_file))
            ):
                return 101
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status
        except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError) as exc:
            return f"tls: {exc!r}"  # refused in the handshake


async def test_expired_wrong_eku_and_missing_certificates_are_refused(
    control_plane: ApiServer, gw: RunningGateway, namespace: str, tmp_path: Path
) -> None:
    plane_id = unique("p")
    ca = generate_ca("agent-ca")
    apply(control_plane, workflow_plane_cr("wp", namespace, plane_id, ca_pem=ca.cert_pem.decode()))
    await eventually(lambda: gw.gateway.planes.for_plane(plane_id))
    await eventually(lambda: ca.cert_pem.strip() in gw.gateway.planes.all_cas())
    good = issue_certificate(ca, "agent")
    assert (
        await _dial(gw, plane_id, _client_context(gw, good.cert_pem, good.key_pem, tmp_path)) == 101
    )
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    expired = issue_certificate(ca, "old", valid_for=dt.timedelta(days=1), not_before=past)
    result = await _dial(
        gw, plane_id, _client_context(gw, expired.cert_pem, expired.key_pem, tmp_path)
    )
    assert result == 401
    server_only = issue_certificate(ca, "srv", client=False, server=True, dns_names=["x"])
    result = await _dial(
        gw, plane_id, _client_context(gw, server_only.cert_pem, server_only.key_pem, tmp_path)
    )
    assert result == 401
    stranger = issue_certificate(generate_ca("no-cr-trusts-it"), "stranger")
    result = await _dial(
        gw, plane_id, _client_context(gw, stranger.cert_pem, stranger.key_pem, tmp_path)
    )
    assert result == 401
    assert await _dial(gw, plane_id, None) == 401  # no client certificate at all
    url = f"https://127.0.0.1:{gw.gateway.ports['public']}/ws?planeType={WP}"
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, ssl=ssl.create_default_context(cafile=str(gw.server_ca_file))) as resp,
    ):
        assert resp.status == 400 and "planeID" in await resp.text()


async def test_a_leaf_an_intermediate_issued_is_admitted_with_the_chain_it_sends(
    control_plane: ApiServer, gw: RunningGateway, namespace: str, tmp_path: Path
) -> None:
    """The CR names the root; the agent's certificate file holds its leaf and the
    intermediate that issued it (cert-manager's chain), sent in the handshake: admitted, as
    OpenChoreo's gateway admits it. The leaf alone chains to nothing the CR trusts."""
    plane_id = unique("p")
    root = root_ca("org-root")
    inter = intermediate_ca(root, "org-agents")
    ca_pem = root.cert_pem.decode()
    apply(control_plane, workflow_plane_cr("wp", namespace, plane_id, ca_pem=ca_pem))
    await eventually(lambda: gw.gateway.planes.for_plane(plane_id))
    await eventually(lambda: root.cert_pem.strip() in gw.gateway.planes.all_cas())
    agent = issue_certificate(inter, "agent")
    chain_file = agent.cert_pem + inter.cert_pem
    context = _client_context(gw, chain_file, agent.key_pem, tmp_path)
    assert await _dial(gw, plane_id, context) == 101
    alone = _client_context(gw, agent.cert_pem, agent.key_pem, tmp_path)
    assert await _dial(gw, plane_id, alone) == 401


async def test_shared_plane_id_each_agent_only_for_its_own_cr(
    control_plane: ApiServer,
    workflow_plane: ApiServer,
    gw: RunningGateway,
    make_namespace: object,
) -> None:
    plane_id = unique("shared")
    ns_x = make_namespace(control_plane, "tx")  # type: ignore[operator]
    ns_y = make_namespace(control_plane, "ty")  # type: ignore[operator]
    agent_x = await prepare_agent(agent_config(workflow_plane, gw, plane_id, unique("tls-x")))
    agent_y = await prepare_agent(agent_config(workflow_plane, gw, plane_id, unique("tls-y")))
    apply(
        control_plane,
        workflow_plane_cr(
            "x", ns_x, plane_id, ca_pem=agent_ca(workflow_plane, agent_x.config.secret_name)
        ),
    )
    apply(
        control_plane,
        workflow_plane_cr(
            "y", ns_y, plane_id, ca_pem=agent_ca(workflow_plane, agent_y.config.secret_name)
        ),
    )
    await eventually(lambda: len(gw.gateway.planes.for_plane(plane_id)) == 2)
    running_x = await start_agent(agent_x)
    try:
        only_x = await gw.client.proxy(
            "GET",
            plane_type=WP,
            plane_id=plane_id,
            cr_namespace=ns_y,
            cr_name="y",
            path="/api/v1/namespaces",
        )
        assert only_x.status == 403, only_x.body
        assert "not" in only_x.json()["message"] or "authorized" in only_x.json()["message"]
        ok = await gw.client.proxy(
            "GET",
            plane_type=WP,
            plane_id=plane_id,
            cr_namespace=ns_x,
            cr_name="x",
            path="/api/v1/namespaces",
        )
        assert ok.status == 200
        running_y = await start_agent(agent_y)
        try:
            for name, ns in (("x", ns_x), ("y", ns_y)):
                status = await gw.client.plane_status(WP, plane_id, namespace=ns, name=name)
                assert status["connectedAgents"] == 1
            assert (await gw.client.plane_status(WP, plane_id))["connectedAgents"] == 2
            conns = gw.gateway.connections.for_plane(WP, plane_id)
            assert sorted(sorted(c.authorized) for c in conns) == [[f"{ns_x}/x"], [f"{ns_y}/y"]]
        finally:
            await running_y.stop()
    finally:
        await running_x.stop()
