"""Gateway rules that need no server: path checks, routing, round-robin, authorization."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from workflowplane.gateway.internal_api import bad_path, is_streaming
from workflowplane.gateway.registry import AgentConnection, Registry
from workflowplane.gateway.server import split_pems
from workflowplane.pki import generate_ca


@pytest.mark.parametrize(
    "path",
    [
        "/api/proxy/wp/p/ns/cr/k8s/api/../../secrets",
        "/api/proxy/wp/p/ns/cr/k8s/%2e%2e/x",
        "/api/proxy/wp/p/ns/cr/k8s/%252e%252e/x",
        "/api/proxy/wp/p/ns/cr/k8s/a%00b",
    ],
)
def test_traversal_and_nul_are_bad_paths(path: str) -> None:
    assert bad_path(path)


def test_ordinary_paths_pass() -> None:
    assert not bad_path("/api/proxy/wp/p/ns/cr/k8s/api/v1/namespaces/a..b/pods")


def test_streaming_requests_are_recognised() -> None:
    assert is_streaming({"watch": "true"}) and is_streaming({"follow": "1"})
    assert not is_streaming({"watch": "false"}) and not is_streaming({})


class _FakeWS:
    closed = False


def _conn(plane: str, keys: set[str], ident: str) -> AgentConnection:
    return AgentConnection("workflowplane", plane, _FakeWS(), None, keys, id=ident)  # type: ignore[arg-type]


def test_round_robin_only_over_connections_authorized_for_the_cr() -> None:
    registry = Registry()
    for conn in (
        _conn("p", {"a/x"}, "1"),
        _conn("p", {"a/x", "b/y"}, "2"),
        _conn("p", {"b/y"}, "3"),
        _conn("q", {"a/x"}, "4"),
    ):
        registry.add(conn)
    picks = [registry.pick("workflowplane", "p", "a/x").id for _ in range(6)]  # type: ignore[union-attr]
    assert picks == ["1", "2"] * 3  # alternates; "3" and plane q are never chosen
    assert registry.pick("workflowplane", "p", "c/z") is None
    status = registry.status("workflowplane", "p", "b/y")
    assert status["connectedAgents"] == 2 and status["connected"] is True
    assert registry.status("workflowplane", "p", None)["connectedAgents"] == 3


def test_events_reach_subscribers_with_the_cr_keys() -> None:
    registry = Registry()
    queue = registry.subscribe()
    conn = _conn("p", {"a/x"}, "1")
    registry.add(conn)
    registry.remove(conn)
    first: dict[str, Any] = queue.get_nowait()
    second: dict[str, Any] = queue.get_nowait()
    assert (first["type"], second["type"]) == ("connected", "disconnected")
    assert first["crKeys"] == ["a/x"] and first["planeID"] == "p"
    assert dt.datetime.fromisoformat(second["lastSeen"])


def test_bundles_split_so_one_bad_block_can_be_skipped() -> None:
    good = generate_ca("a").cert_pem + generate_ca("b").cert_pem
    bad = b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n"
    assert len(split_pems(good + bad)) == 3
    assert all(block.startswith("-----BEGIN") for block in split_pems(good))
