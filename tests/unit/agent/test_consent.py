"""Plane-side consent in the agent (issue #10, finding 1): the list from flags, env and the
ConfigMap; the leaf re-issued from the agent's own CA with the list as URI SANs when the list
changes (and only then); a leaf the agent cannot re-issue is never presented without the list."""

from __future__ import annotations

import argparse
import asyncio
import base64
import copy
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests import certmanager
from tests.identities import identity_of, leaf_uris
from workflowplane.agent import runner
from workflowplane.agent.bootstrap import AgentIdentity, _secret, new_identity
from workflowplane.agent.certworker import PemPair
from workflowplane.agent.command import add_arguments, config_from_args, main
from workflowplane.agent.config import AgentConfig
from workflowplane.agent.consent import ConfigMapConsent, parse_configmap
from workflowplane.agent.runner import Agent
from workflowplane.agent.tunnel import AgentTunnel, ConnectRefused
from workflowplane.api.consent import CONSENT_URI_PREFIX, Consent, ConsentError
from workflowplane.kits.failures import PermanentError, TransientError
from workflowplane.kits.process import FatalError
from workflowplane.pki import (
    KeyPair,
    generate_ca,
    issue_certificate,
    load_certificates,
    verify_client_certificate,
)

KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""
BASE = ["--server-url=wss://gw/ws", "--plane-id=p"]


def _uris(*entries: str) -> list[str]:
    return [CONSENT_URI_PREFIX + entry for entry in sorted(entries)]


# ---- the list from flags and env ------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_agent_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("CLUSTER_AGENT_"):
            monkeypatch.delenv(name)


def _config(argv: list[str]) -> AgentConfig:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return config_from_args(parser.parse_args([*BASE, *argv]))


def test_flags_take_comma_lists_and_repeat() -> None:
    config = _config(["--allowed-namespaces", "team-a, team-b/build", "--allowed-namespaces=/x"])
    assert config.allowed == ("/x", "team-a/*", "team-b/build")


def test_a_flag_replaces_the_environments_list(monkeypatch: pytest.MonkeyPatch) -> None:
    """As for every other setting, the flag wins over the variable: a flag given to narrow
    the list had been added to the variable's, widening it."""
    monkeypatch.setenv("CLUSTER_AGENT_ALLOWED_NAMESPACES", "team-a,/shared")
    assert _config([]).allowed == ("/shared", "team-a/*")
    assert _config(["-allowed-namespaces=team-c/p"]).allowed == ("team-c/p",)


@pytest.mark.parametrize("given", [",", " ", "a,,b", "team-a,"])
def test_a_list_with_an_empty_entry_is_refused_not_read_as_no_list(given: str) -> None:
    """``,`` parsed to no entries, which means "any CR that trusts the CA": the widest
    consent there is, from a value that meant to name someone."""
    with pytest.raises(FatalError, match="has an empty entry"):
        _config([f"--allowed-namespaces={given}"])


def test_no_list_anywhere_is_unrestricted() -> None:
    config = _config([])
    assert config.allowed == () and config.consent_configmap == "cluster-agent-consent"


def test_a_bad_entry_stops_the_agent_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FatalError, match="'Team_A'"):
        _config(["--allowed-namespaces", "ok,Team_A"])
    monkeypatch.setenv("CLUSTER_AGENT_ALLOWED_NAMESPACES", "a/b/c")
    with pytest.raises(FatalError, match=r"'a/b/c'.*is not ns"):
        _config([])


def test_cluster_agent_exits_with_the_message(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*BASE, "--allowed-namespaces", "bad entry"])
    assert exited.value.code == 2 and "'bad entry'" in capsys.readouterr().err


# ---- the list from the ConfigMap ------------------------------------------------------------


def test_configmap_entries_by_line_or_comma_with_comments() -> None:
    text = "# who may use this plane\nteam-a\nteam-b/build, /shared  # cluster-wide\n\n"
    assert parse_configmap({"allowed": text}).entries == {"team-a/*", "team-b/build", "/shared"}
    assert parse_configmap(None) == Consent(frozenset())
    assert parse_configmap({"other": "team-a"}) == Consent(frozenset())
    with pytest.raises(ConsentError, match="'UPPER'"):
        parse_configmap({"allowed": "team-a\nUPPER"})


def test_a_bad_configmap_keeps_the_last_good_list(caplog: pytest.LogCaptureFixture) -> None:
    changes: list[Consent] = []
    source = ConfigMapConsent(lambda: None, "ns", "cm", lambda: changes.append(source.current))  # type: ignore[arg-type,return-value]
    assert source.apply({"allowed": "team-a"})
    with caplog.at_level(logging.ERROR):
        assert not source.apply({"allowed": "team-a\nteam b"})
    assert source.current.entries == {"team-a/*"} and len(changes) == 1
    assert "'team b'" in caplog.text and "keeping the last good list (team-a/*)" in caplog.text
    assert not source.apply({"allowed": "team-a/*"})  # the same list: no change
    assert source.apply(None)  # deleted: no entries from it
    assert not source.current.restricted and len(changes) == 2


class FakeConfigMaps:
    """``get`` of the consent ConfigMap: its data, or the error ``fail`` names."""

    def __init__(self, data: dict[str, str] | None = None, fail: BaseException | None = None):
        self.data, self.fail = data, fail

    async def get(self, path: str) -> dict[str, Any]:
        assert path == "/api/v1/namespaces/ns/configmaps/cm"
        if self.fail is not None:
            raise self.fail
        return {"kind": "ConfigMap", "data": self.data}

    async def close(self) -> None:
        return None


@pytest.mark.parametrize(
    ("fail", "said"),
    [
        (PermanentError("not found", status=404), None),
        (PermanentError("forbidden", status=403), "may not read"),
    ],
    ids=["absent", "forbidden"],
)
async def test_a_configmap_absent_or_forbidden_at_start_adds_nothing_and_is_not_fatal(
    fail: BaseException, said: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    source = ConfigMapConsent(lambda: FakeConfigMaps(fail=fail), "ns", "cm", lambda: None)  # type: ignore[arg-type,return-value]
    with caplog.at_level(logging.WARNING):
        await source.load()
    assert not source.current.restricted
    assert (said in caplog.text) if said else not caplog.records


@pytest.mark.parametrize(
    "fail",
    [
        ConnectionRefusedError("API server down"),
        TimeoutError("no answer"),
        TransientError("etcd leader changed", status=500),
    ],
    ids=["unreachable", "timeout", "5xx"],
)
async def test_a_configmap_unreadable_at_start_stands_as_the_list_the_leaf_carries(
    fail: BaseException, make_agent: Any
) -> None:
    """The agent still connects (it answers 502s while its API server is down), but a read
    that failed is no list: taken for one, the leaf was re-issued open to any CR that trusts
    the agent's CA, while the owner had narrowed it."""
    agent: Agent = make_agent()
    agent.configmap = ConfigMapConsent(
        lambda: FakeConfigMaps(fail=fail),  # type: ignore[arg-type,return-value]
        "ns",
        "cm",
        agent._consent_changed,
    )
    agent.identity = carried = await new_identity("p", 3650, 90, _uris("team-a/*"))
    kube = FakeKube(carried)
    agent._kube = lambda: kube  # type: ignore[method-assign]

    await agent._know_identity_and_consent()

    assert agent.consent == carried.consent
    assert await agent.keep_leaf_current()
    assert kube.patches == []  # not re-issued to less
    agent.configmap.apply({"allowed": "team-b/*"})  # the watch reads it at last
    assert not agent.configmap.unread
    assert await agent.keep_leaf_current(consent_changed=True)
    assert leaf_uris(_patched_leaf(kube)) == _uris("team-b/*")


async def test_the_configmap_read_at_start_is_applied() -> None:
    source = ConfigMapConsent(  # type: ignore[arg-type]
        lambda: FakeConfigMaps({"allowed": "team-a"}),  # type: ignore[return-value]
        "ns",
        "cm",
        lambda: None,
    )
    await source.load()
    assert source.current.entries == {"team-a/*"}


# ---- the leaf follows the list --------------------------------------------------------------


SECRET_PATH = "/api/v1/namespaces/openchoreo-workflow-plane/secrets/cluster-agent-tls"


class FakeKube:
    """The agent's Kubernetes client for its own Secret (holding ``stored``, or absent):
    records patches and creates."""

    def __init__(self, stored: AgentIdentity | None = None, fail: bool = False) -> None:
        self.patches: list[dict[str, Any]] = []
        self.created: list[dict[str, Any]] = []
        self.fail = fail
        self.secret = (
            _secret("openchoreo-workflow-plane", "cluster-agent-tls", stored) if stored else None
        )
        if self.secret is not None:
            self.secret["metadata"]["resourceVersion"] = "7"

    async def get(self, path: str) -> dict[str, Any]:
        assert path == SECRET_PATH
        if self.fail:
            raise ConnectionRefusedError("the API server is down")
        if self.secret is None:
            raise PermanentError("not found", status=404)
        return copy.deepcopy(self.secret)

    async def create(self, collection: str, body: dict[str, Any]) -> dict[str, Any]:
        assert collection + "/cluster-agent-tls" == SECRET_PATH
        self.created.append(body)
        self.secret = body
        return body

    async def merge_patch(self, path: str, body: dict[str, Any]) -> None:
        assert path == SECRET_PATH
        if self.fail:
            raise ConnectionRefusedError("the API server is down")
        self.patches.append(body)

    async def close(self) -> None:
        return None


def _patched_leaf(kube: FakeKube) -> PemPair:
    data = kube.patches[-1]["data"]
    return PemPair(base64.b64decode(data["tls.crt"]), base64.b64decode(data["tls.key"]))


@pytest.fixture
async def make_agent(tmp_path: Path) -> AsyncIterator[Any]:
    (tmp_path / "kubeconfig").write_text(KUBECONFIG)
    made: list[Agent] = []

    def make(**settings: Any) -> Agent:
        config = AgentConfig(
            server_url="wss://gw/ws", plane_id="p", kubeconfig=tmp_path / "kubeconfig"
        )
        agent = Agent(replace(config, **settings))
        made.append(agent)
        return agent

    yield make
    for agent in made:
        await agent.upstream.close()


async def test_the_leaf_is_reissued_with_the_list_and_only_when_it_changes(
    make_agent: Any,
) -> None:
    agent: Agent = make_agent(allowed=("team-a/*",))
    agent.identity = before = await new_identity("p", 3650, 90)  # a leaf without a list
    kube = FakeKube(before)
    agent._kube = lambda: kube  # type: ignore[method-assign]
    assert leaf_uris(before.client) == []

    assert await agent.keep_leaf_current()
    leaf = _patched_leaf(kube)
    assert leaf_uris(leaf) == _uris("team-a/*")
    assert agent.identity is not None and agent.identity.client == leaf
    assert list(agent.identity.leaf.uris) == _uris("team-a/*")  # what the worker read
    (certificate,) = load_certificates(leaf.cert_pem)
    verify_client_certificate([certificate], before.ca.cert_pem)  # the same CA
    assert agent.tunnel.reconnect_requested.is_set()

    agent.tunnel.reconnect_requested.clear()
    assert await agent.keep_leaf_current(consent_changed=True)  # nothing changed
    assert len(kube.patches) == 1 and not agent.tunnel.reconnect_requested.is_set()

    assert agent.configmap is not None
    agent.configmap.apply({"allowed": "team-b/build\n/shared"})
    assert agent._leaf_check.is_set()  # wakes the renewal loop at once
    assert await agent.keep_leaf_current(consent_changed=True)
    assert leaf_uris(_patched_leaf(kube)) == _uris("team-a/*", "team-b/build", "/shared")
    assert agent.tunnel.reconnect_requested.is_set()


async def test_an_emptied_list_reissues_an_unrestricted_leaf(make_agent: Any) -> None:
    agent: Agent = make_agent()
    identity = await new_identity("p", 3650, 90, _uris("team-a/*"))
    kube = FakeKube(identity)
    agent._kube = lambda: kube  # type: ignore[method-assign]
    agent.identity = identity
    assert await agent.keep_leaf_current()
    assert leaf_uris(_patched_leaf(kube)) == []


async def test_a_failed_reissue_never_connects_with_the_old_list(make_agent: Any) -> None:
    agent: Agent = make_agent(allowed=("team-a/build",))
    agent._kube = lambda: FakeKube(fail=True)  # type: ignore[method-assign]
    agent.identity = await new_identity("p", 3650, 90, _uris("team-a/*"))
    assert not await agent.keep_leaf_current()  # the caller retries soon
    assert agent.tunnel.reconnect_requested.is_set()  # the open connection goes
    with pytest.raises(ConnectRefused, match="does not carry the consent list"):
        await agent._ssl_context()


async def test_a_leaf_with_the_list_connects(make_agent: Any) -> None:
    agent: Agent = make_agent(allowed=("team-a/*",))
    agent.identity = await new_identity("p", 3650, 90, _uris("team-a/*"))
    await agent._ssl_context()
    assert await agent.consent_refusal() is None


# ---- a leaf the agent cannot re-issue: fail closed -------------------------------------------


def _cert_manager_identity() -> AgentIdentity:
    cert, key = certmanager.self_signed_leaf("p")
    return identity_of(KeyPair(cert, b""), KeyPair(cert, key))


async def test_cert_manager_secret_with_a_list_is_refused_and_said_at_start(
    make_agent: Any, caplog: pytest.LogCaptureFixture
) -> None:
    agent: Agent = make_agent(allowed=("team-a/*",))
    agent.identity = _cert_manager_identity()
    with pytest.raises(ConnectRefused) as refused:
        await agent._ssl_context()
    message = str(refused.value)
    assert "team-a/*" in message and "cannot re-issue" in message and "no ca.key" in message
    assert "refusing to connect (fail closed)" in message
    assert CONSENT_URI_PREFIX + "team-a/*" in message  # how to carry it with cert-manager
    with caplog.at_level(logging.ERROR, logger="workflowplane.agent.runner"):
        await agent._say_consent()
    assert "refusing to connect" in caplog.text


async def test_cert_manager_secret_without_a_list_still_connects(make_agent: Any) -> None:
    agent: Agent = make_agent()
    agent.identity = _cert_manager_identity()
    await agent._ssl_context()


async def test_a_list_from_the_configmap_closes_a_cert_manager_connection(
    make_agent: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent: Agent = make_agent()
    identity = _cert_manager_identity()

    async def load(*_: object) -> AgentIdentity:
        return identity

    monkeypatch.setattr("workflowplane.agent.runner.load_or_create", load)
    agent.identity = identity
    assert agent.configmap is not None
    agent.configmap.apply({"allowed": "team-a"})
    assert await agent.keep_leaf_current(consent_changed=True)
    assert agent.tunnel.reconnect_requested.is_set()  # the open connection goes
    with pytest.raises(ConnectRefused, match="fail closed"):
        await agent._ssl_context()


async def test_certificate_files_must_carry_the_list(make_agent: Any, tmp_path: Path) -> None:
    ca = generate_ca("p")
    for name, uris in (("without", []), ("with", _uris("team-a/*"))):
        leaf = issue_certificate(ca, "agent", uris=uris)
        (tmp_path / f"{name}.crt").write_bytes(leaf.cert_pem)
        (tmp_path / f"{name}.key").write_bytes(leaf.key_pem)
    settings = {"allowed": ("team-a/*",), "client_key_file": tmp_path / "without.key"}
    agent: Agent = make_agent(client_cert_file=tmp_path / "without.crt", **settings)
    with pytest.raises(ConnectRefused, match=r"--client-cert .*without\.crt carries none"):
        await agent._ssl_context()
    settings["client_key_file"] = tmp_path / "with.key"
    agent = make_agent(client_cert_file=tmp_path / "with.crt", **settings)
    await agent._ssl_context()  # the files carry it: fine


async def test_no_tls_cannot_carry_a_list(make_agent: Any) -> None:
    agent: Agent = make_agent(tls_enabled=False, allowed=("team-a/*",))
    with pytest.raises(ConnectRefused, match="presents no certificate"):
        await agent._ssl_context()


class UnusedUpstream:
    """Never reached: every connection attempt is refused before a request can arrive."""

    def observe(self, _trace: object) -> None:
        pass


def _refused_tunnel(refuse: Callable[[], Awaitable[Any]], backoff: float) -> AgentTunnel:
    """A tunnel whose every connection attempt ``refuse`` ends, redialled at ``backoff``."""
    return AgentTunnel(
        "wss://127.0.0.1:1",
        "workflowplane",
        "p",
        refuse,
        UnusedUpstream(),  # type: ignore[arg-type]
        initial_backoff=backoff,
        max_backoff=2 * backoff,
        stable_after=30,
        dead_after=90,
        max_frame=1 << 20,
        timeout=5,
        max_concurrent=1,
    )


async def _refused(times: int, reason: str, backoff: float) -> None:
    """A tunnel run until it has been refused ``times`` (each attempt is), then stopped."""
    attempts = 0
    enough = asyncio.Event()

    async def refuse() -> Any:
        nonlocal attempts
        attempts += 1
        if attempts == times:
            enough.set()
        raise ConnectRefused(reason)

    running = asyncio.create_task(_refused_tunnel(refuse, backoff).run())
    await asyncio.wait_for(enough.wait(), 5)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running


async def test_a_refused_connection_is_retried_not_fatal() -> None:
    await _refused(2, "not now", backoff=0.01)


async def test_a_gateway_refusing_again_and_again_is_said_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With replicas the agent redials each every few seconds: a refusal for good (a CA no CR
    trusts) wrote two lines per attempt per replica, for ever."""
    with caplog.at_level(logging.INFO, logger="workflowplane.agent.tunnel"):
        await _refused(20, "the gateway refused this agent (401 not-authorized)", backoff=0.001)
    said = [r for r in caplog.records if "not connecting" in r.getMessage()]
    assert len(said) == 1 and "401 not-authorized" in said[0].getMessage()
    assert len([r for r in caplog.records if "reconnecting in" in r.getMessage()]) == 1


async def test_a_reissue_takes_the_ca_an_operator_rotated_in_the_secret(make_agent: Any) -> None:
    """Writing this agent's old CA back would undo the rotation (and replicas would flip the
    Secret between CAs): the new leaf is the new CA's, written over what was read."""
    agent: Agent = make_agent(allowed=("team-a/*",))
    agent.identity = old = await new_identity("p", 3650, 90)
    rotated = await new_identity("p", 3650, 90)
    kube = FakeKube(rotated)
    agent._kube = lambda: kube  # type: ignore[method-assign]

    assert await agent.keep_leaf_current()

    (patch,) = kube.patches
    assert patch["metadata"] == {"resourceVersion": "7"}  # over what was read only
    assert base64.b64decode(patch["data"]["ca.crt"]) == rotated.ca.cert_pem
    (certificate,) = load_certificates(_patched_leaf(kube).cert_pem)
    verify_client_certificate([certificate], rotated.ca.cert_pem)
    assert agent.identity is not None and agent.identity.ca == rotated.ca != old.ca


async def test_a_reissue_makes_a_deleted_secret_again_with_the_agents_ca(make_agent: Any) -> None:
    """Else a replica that restarts finds none and makes a CA no CR trusts."""
    agent: Agent = make_agent(allowed=("team-a/*",))
    agent.identity = identity = await new_identity("p", 3650, 90)
    kube = FakeKube(None)
    agent._kube = lambda: kube  # type: ignore[method-assign]

    assert await agent.keep_leaf_current()

    (made,) = kube.created
    assert base64.b64decode(made["data"]["ca.crt"]) == identity.ca.cert_pem
    assert base64.b64decode(made["data"]["ca.key"]) == identity.ca.key_pem
    assert leaf_uris(PemPair(base64.b64decode(made["data"]["tls.crt"]), b"")) == _uris("team-a/*")


async def test_an_api_server_down_at_start_is_waited_for(
    make_agent: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent exited with a traceback, and came back only after the pod's crash-loop
    backoff (minutes) once the API server answered again."""
    monkeypatch.setattr(runner, "IDENTITY_BACKOFF_SECONDS", (0.01, 0.02))
    agent: Agent = make_agent()
    stored = await new_identity("p", 3650, 90)
    kube = FakeKube(stored)
    reads = 0
    real_get = kube.get

    async def down_twice(path: str) -> dict[str, Any]:
        nonlocal reads
        reads += 1
        if reads <= 2:
            raise ConnectionRefusedError("the API server is down")
        return await real_get(path)

    kube.get = down_twice  # type: ignore[method-assign]
    agent._kube = lambda: kube  # type: ignore[method-assign]
    await agent._first_identity()
    assert reads == 3 and agent.identity is not None and agent.identity.ca == stored.ca


async def test_a_forbidden_read_at_start_is_not_waited_for(make_agent: Any) -> None:
    agent: Agent = make_agent()
    kube = FakeKube(None)

    async def forbidden(path: str) -> dict[str, Any]:
        raise PermanentError("secrets is forbidden", status=403)

    kube.get = forbidden  # type: ignore[method-assign]
    agent._kube = lambda: kube  # type: ignore[method-assign]
    with pytest.raises(PermanentError, match="forbidden"):
        await agent._first_identity()
