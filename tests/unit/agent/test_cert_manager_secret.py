"""The agent runs on OpenChoreo's cert-manager Secret: a self-signed leaf, no ca.key. It uses the
leaf as it is, never renews it, says so, and picks up the leaf cert-manager renews."""

from __future__ import annotations

import base64
import logging
import ssl
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests import certmanager
from tests.identities import identity_of
from workflowplane.agent.bootstrap import AgentIdentity, identity_from_secret, new_identity
from workflowplane.agent.config import AgentConfig
from workflowplane.agent.runner import Agent
from workflowplane.pki import KeyPair, load_certificates

KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""


def _secret(data: dict[str, str]) -> dict[str, Any]:
    return {"kind": "Secret", "metadata": {"name": "cluster-agent-tls"}, "data": data}


async def test_cert_manager_secret_is_used_as_it_is_and_not_renewable() -> None:
    data = certmanager.secret_data("default")
    identity = await identity_from_secret(_secret(data))
    assert not identity.renewable
    assert identity.client.cert_pem == base64.b64decode(data["tls.crt"])
    assert identity.ca.cert_pem == identity.client.cert_pem  # ca.crt == tls.crt
    (leaf,) = load_certificates(identity.client.cert_pem)
    assert leaf.subject.rfc4514_string() == "CN=default,O=OpenChoreo"
    assert identity.leaf.not_after == leaf.not_valid_after_utc  # read by the worker


async def test_a_leaf_without_ca_crt_is_its_own_ca() -> None:
    data = certmanager.secret_data("p")
    del data["ca.crt"]
    identity = await identity_from_secret(_secret(data))
    assert identity.ca.cert_pem == base64.b64decode(data["tls.crt"])


async def test_our_own_secret_stays_renewable() -> None:
    ours = await new_identity("p", 3650, 90)
    data = {
        name: base64.b64encode(pem).decode()
        for name, pem in {
            "ca.crt": ours.ca.cert_pem,
            "ca.key": ours.ca.key_pem,
            "tls.crt": ours.client.cert_pem,
            "tls.key": ours.client.key_pem,
        }.items()
    }
    assert (await identity_from_secret(_secret(data))).renewable


@pytest.mark.parametrize(("drop", "named"), [("tls.key", "tls.key"), ("tls.crt", "tls.crt")])
async def test_an_incomplete_secret_names_what_it_lacks(drop: str, named: str) -> None:
    data = certmanager.secret_data("p")
    del data[drop]
    with pytest.raises(ValueError, match=named):
        await identity_from_secret(_secret(data))


def _identity(plane_id: str) -> AgentIdentity:
    cert, key = certmanager.self_signed_leaf(plane_id)
    return identity_of(KeyPair(cert, b""), KeyPair(cert, key))


@pytest.fixture
async def agent(tmp_path: Path) -> Any:
    (tmp_path / "kubeconfig").write_text(KUBECONFIG)
    made = Agent(
        AgentConfig(server_url="wss://gw/ws", plane_id="p", kubeconfig=tmp_path / "kubeconfig")
    )
    yield made
    await made.upstream.close()


async def test_the_log_says_the_leaf_is_not_renewed(
    agent: Agent, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def load(*_: object) -> AgentIdentity:
        return _identity("p")

    monkeypatch.setattr("workflowplane.agent.runner.load_or_create", load)
    with caplog.at_level(logging.INFO, logger="workflowplane.agent.runner"):
        await agent.ensure_identity()
        await agent.ensure_identity()  # a re-read does not repeat it
    said = [r.getMessage() for r in caplog.records if "no ca.key" in r.getMessage()]
    assert len(said) == 1 and "will not renew" in said[0]


async def test_a_leaf_renewed_by_cert_manager_reconnects(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = [_identity("p")]

    async def load(*_: object) -> AgentIdentity:
        return stored[-1]

    monkeypatch.setattr("workflowplane.agent.runner.load_or_create", load)
    first = await agent.ensure_identity()
    assert first is not None
    await agent._reload_external(first)
    assert not agent.tunnel.reconnect_requested.is_set()  # same leaf: nothing to do
    stored.append(_identity("p"))
    await agent._reload_external(first)
    assert agent.tunnel.reconnect_requested.is_set()
    assert agent.identity is stored[-1]


async def test_ssl_context_loads_the_rsa_leaf(agent: Agent) -> None:
    agent.identity = _identity("p")
    context = await agent._ssl_context()  # load_cert_chain raises on a key it cannot use
    assert context.verify_mode == ssl.CERT_REQUIRED


async def test_tls_disabled_is_openchoreos_single_cluster_mode(tmp_path: Path) -> None:
    (tmp_path / "kubeconfig").write_text(KUBECONFIG)
    config = AgentConfig(server_url="wss://gw/ws", plane_id="p", kubeconfig=tmp_path / "kubeconfig")
    agent = Agent(replace(config, tls_enabled=False))
    try:
        assert await agent.ensure_identity() is None  # no Secret is read or created
        context = await agent._ssl_context()
        assert context.verify_mode == ssl.CERT_NONE and not context.check_hostname
    finally:
        await agent.upstream.close()
