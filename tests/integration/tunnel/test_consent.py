"""Plane-side consent, agent side, against real API servers and a real gateway: the plane's
owner changes the agent's ConfigMap and the agent re-issues its leaf from its own CA with the new
list as URI SANs, stores it in its Secret and reconnects with it."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable

import pytest
from lightkube.resources.core_v1 import ConfigMap

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
from workflowplane.api.consent import CONSENT_URI_PREFIX, parse_allow_list
from workflowplane.cli.errors import CliError
from workflowplane.cli.main import build_parser
from workflowplane.pki import load_certificates, uri_sans, verify_client_certificate
from workflowplane.testenv import ApiServer, Environment
from workflowplane.testenv.tools import kubectl

pytestmark = pytest.mark.integration
AGENT_NAMESPACE = "openchoreo-workflow-plane"


def _stored_leaf_uris(workflow_plane: ApiServer, secret: str) -> Callable[[], list[str]]:
    def read() -> list[str]:
        out = kubectl(
            workflow_plane.kubeconfig,
            workflow_plane.context,
            "get",
            "secret",
            secret,
            "-n",
            AGENT_NAMESPACE,
            "-o",
            r"jsonpath={.data.tls\.crt}",
        ).stdout
        (leaf,) = load_certificates(base64.b64decode(out))
        return uri_sans(leaf)

    return read


def presented_by(gw: RunningGateway, plane_id: str) -> list[list[str]]:
    """The URI SANs of the leaves the gateway holds connections with for this planeID."""
    conns = gw.gateway.connections.for_plane("workflowplane", plane_id)
    return [uri_sans(conn.leaf) for conn in conns]


def _write_configmap(workflow_plane: ApiServer, name: str, allowed: str) -> None:
    manifest = {
        "apiVersion": "v1",
        "kind": ConfigMap.__name__,
        "metadata": {"name": name, "namespace": AGENT_NAMESPACE},
        "data": {"allowed": allowed},
    }
    kubectl(
        workflow_plane.kubeconfig,
        workflow_plane.context,
        "apply",
        "-f",
        "-",
        input=json.dumps(manifest),
    )


async def test_a_configmap_change_reissues_the_leaf_and_reconnects_with_it(
    control_plane: ApiServer, workflow_plane: ApiServer, gw: RunningGateway, namespace: str
) -> None:
    plane_id, secret, configmap = unique("consent"), unique("agent-tls"), unique("consent")
    own = f"{namespace}/wp"
    config = agent_config(
        workflow_plane, gw, plane_id, secret, allowed=(own,), consent_configmap=configmap
    )
    agent = await prepare_agent(config)
    ca = agent_ca(workflow_plane, secret)
    apply(control_plane, workflow_plane_cr("wp", namespace, plane_id, ca_pem=ca))
    stored = _stored_leaf_uris(workflow_plane, secret)
    assert stored() == parse_allow_list([own]).uris()  # the first leaf carries the flags' list

    def presented() -> list[list[str]]:
        return presented_by(gw, plane_id)

    running = await start_agent(agent)
    try:
        assert presented() == [parse_allow_list([own]).uris()]

        _write_configmap(workflow_plane, configmap, "# the owner's list\nteam-x\n/shared, ci/b")
        wanted = parse_allow_list([own, "team-x", "/shared", "ci/b"]).uris()
        await eventually(lambda: stored() == wanted, timeout=20, interval=0.2)
        await eventually(lambda: presented() == [wanted], timeout=20)
        (conn,) = gw.gateway.connections.for_plane("workflowplane", plane_id)
        verify_client_certificate([conn.leaf], ca.encode())  # the same CA: the CR is unchanged

        kubectl(
            workflow_plane.kubeconfig,
            workflow_plane.context,
            "delete",
            "configmap",
            configmap,
            "-n",
            AGENT_NAMESPACE,
        )
        back = parse_allow_list([own]).uris()
        await eventually(lambda: stored() == back, timeout=20, interval=0.2)
        await eventually(lambda: presented() == [back], timeout=20)
    finally:
        await running.stop()


async def test_wpctl_register_writes_the_consent_the_agent_then_carries(
    environment: Environment,
    control_plane: ApiServer,
    workflow_plane: ApiServer,
    gw: RunningGateway,
    namespace: str,
) -> None:
    """The whole chain: ``wpctl register`` (both contexts, one kubeconfig, as a user runs it)
    adds the CR to the agent's ConfigMap; the agent re-issues its leaf with it and connects."""
    agent_namespace, plane_id = unique("agent"), unique("reg")
    config = agent_config(
        workflow_plane, gw, plane_id, "cluster-agent-tls", namespace=agent_namespace
    )
    running = await start_agent(config, wait=False)  # no CR trusts its CA yet
    try:
        args = build_parser().parse_args(
            [
                *("register", "wp", "-n", namespace, "--plane-id", plane_id),
                *("--kubeconfig", str(environment.kubeconfig)),
                *("--wp-context", workflow_plane.context, "--cp-context", control_plane.context),
                *("--agent-namespace", agent_namespace),
            ]
        )
        assert await asyncio.to_thread(args.handler, args) == 0
        wanted = [CONSENT_URI_PREFIX + f"{namespace}/wp"]
        await eventually(lambda: presented_by(gw, plane_id) == [wanted], timeout=20)
    finally:
        await running.stop()


async def test_wpctl_register_that_the_control_plane_refuses_changes_no_consent(
    environment: Environment,
    control_plane: ApiServer,
    workflow_plane: ApiServer,
    gw: RunningGateway,
) -> None:
    """The control plane judges the manifests (a server-side dry run) before the agent's
    consent list is written: a refusal there (here: a namespace that does not exist) had
    come after the list was changed, leaving an entry for a CR that never came."""
    agent_namespace, plane_id = unique("agent"), unique("reg")
    config = agent_config(
        workflow_plane, gw, plane_id, "cluster-agent-tls", namespace=agent_namespace
    )
    running = await start_agent(config, wait=False)  # it creates its CA Secret
    try:
        await eventually(
            lambda: (
                kubectl(
                    environment.kubeconfig,
                    workflow_plane.context,
                    *("get", "secret", "cluster-agent-tls", "-n", agent_namespace),
                    check=False,
                ).returncode
                == 0
            ),
            timeout=20,
        )
        args = build_parser().parse_args(
            [
                *("register", "wp", "-n", unique("missing"), "--plane-id", plane_id),
                *("--kubeconfig", str(environment.kubeconfig)),
                *("--wp-context", workflow_plane.context, "--cp-context", control_plane.context),
                *("--agent-namespace", agent_namespace),
            ]
        )
        with pytest.raises(CliError, match="checking the manifests on"):
            await asyncio.to_thread(args.handler, args)
        consent = kubectl(
            environment.kubeconfig,
            workflow_plane.context,
            *("get", "configmap", "cluster-agent-consent", "-n", agent_namespace),
            check=False,
        )
        assert consent.returncode != 0 and "NotFound" in consent.stderr
    finally:
        await running.stop()
