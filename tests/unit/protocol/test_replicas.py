"""Replica Leases, the rotation over replicas, status merged by agent instance, and where a
watch stream is (pure parts of HA on the callers' side)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from lightkube.resources.coordination_v1 import Lease

from workflowplane.protocol.gateway_client import _summed
from workflowplane.protocol.replica_status import merge_all_status, merge_plane_status
from workflowplane.protocol.replicas import (
    INTERNAL_URL_ANNOTATION,
    ReplicaRotation,
    StaticDirectory,
    replica_of,
    valid_internal_url,
)
from workflowplane.protocol.watch_position import (
    MAX_EVENT_LINE_BYTES,
    WatchPosition,
    is_watch,
    resource_version_of,
)

NOW = dt.datetime(2025, 1, 1, 12, 0, 0, tzinfo=dt.UTC)


def lease(
    renewed_seconds_ago: float = 1, url: str | None = "https://10.0.0.1:8444", holder: str = "gw-0"
) -> Lease:
    annotations = {INTERNAL_URL_ANNOTATION: url} if url is not None else {}
    renewed = NOW - dt.timedelta(seconds=renewed_seconds_ago)
    return Lease.from_dict(
        {
            "metadata": {"name": f"cluster-gateway-{holder}", "annotations": annotations},
            "spec": {
                "holderIdentity": holder,
                "leaseDurationSeconds": 15,
                "renewTime": renewed.isoformat().replace("+00:00", "Z"),
            },
        }
    )


@pytest.mark.parametrize(
    ("item", "live"),
    [
        (lease(), True),
        (lease(renewed_seconds_ago=14), True),
        (lease(renewed_seconds_ago=15), False),  # renewTime + duration is past: gone
        (lease(url=None), False),
        (lease(url="http://10.0.0.1:8444"), False),  # not TLS
        (lease(url="https://10.0.0.1:8444/elsewhere"), False),
        (lease(url="https://10.0.0.1:port"), False),
        (lease(holder=""), False),
    ],
)
def test_a_lease_announces_a_live_replica(item: Lease, live: bool) -> None:
    replica = replica_of(item, NOW)
    assert (replica is not None) == live
    if replica is not None:
        assert (replica.name, replica.internal_url) == ("gw-0", "https://10.0.0.1:8444")


def test_internal_urls_are_bounded() -> None:
    assert not valid_internal_url("https://" + "a" * 3000 + ":8444")
    assert not valid_internal_url("https://host\n:8444")


@pytest.mark.parametrize(
    "url", ["https://u:p@10.0.0.1:8444", "https://10.0.0.1:8444?x=1", "https://10.0.0.1:8444#f"]
)
def test_a_lease_url_that_would_carry_credentials_or_a_query_is_skipped(url: str) -> None:
    """The check the controller's --gateway-url uses too: a request built on such a URL
    would send the credentials to that replica, or end its path in the query."""
    assert not valid_internal_url(url)
    assert valid_internal_url("https://10.0.0.1:8444")


async def test_the_rotation_starts_at_the_next_replica_and_puts_failed_ones_last() -> None:
    now = [0.0]
    rotation = ReplicaRotation(StaticDirectory(["a", "b", "c"]), clock=lambda: now[0])
    assert await rotation.order() == ["a", "b", "c"]
    assert await rotation.order() == ["b", "c", "a"]
    rotation.failed("c")
    assert await rotation.order() == ["a", "b", "c"]  # c's turn, but c failed: last
    now[0] = 60.0  # the failure is forgotten
    assert await rotation.order() == ["a", "b", "c"]
    assert await rotation.order() == ["b", "c", "a"]


def test_a_static_directory_needs_a_url() -> None:
    with pytest.raises(ValueError, match="no gateway URL"):
        StaticDirectory(["", " "])


# ---- status: agents, not connections ---------------------------------------------------------


def answer(replica: str, agents: list[str] | None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"planeType": "workflowplane", "planeID": "p", "replica": replica}
    if agents is not None:
        body |= {"agents": agents, "connectedAgents": len(agents), "connected": bool(agents)}
    return body | extra


MERGE_CASES = {
    "one agent on three replicas is one agent": (
        [answer("r0", ["a"]), answer("r1", ["a"]), answer("r2", ["a"])],
        1,
    ),
    "one replica dropped its connection: still one": (
        [answer("r0", ["a"]), answer("r1", []), answer("r2", ["a"])],
        1,
    ),
    "two agents and a Go agent's connection": (
        [answer("r0", ["a", "b"]), answer("r1", ["b", "conn-r1-7"])],
        3,
    ),
    "every replica dropped it": ([answer("r0", []), answer("r1", [])], 0),
    "a replica without agents counts connections": (
        [answer("r0", None, connectedAgents=2)],
        2,
    ),
    "garbage instance ids are ignored": ([answer("r0", ["a", 7, "", "x" * 300])], 1),  # type: ignore[list-item]
}


@pytest.mark.parametrize(("answers", "agents"), MERGE_CASES.values(), ids=MERGE_CASES.keys())
def test_merge_counts_agents(answers: list[dict[str, Any]], agents: int) -> None:
    merged = merge_plane_status(answers)
    assert merged["connectedAgents"] == agents
    assert merged["connected"] is (agents > 0)


def test_merge_keeps_the_newest_last_seen_and_the_cr_fields() -> None:
    merged = merge_plane_status(
        [
            answer("r0", ["a"], lastSeen="2025-01-01T12:00:00+00:00", consentRefusedAgents=0),
            answer(
                "r1",
                ["a"],
                lastSeen="2025-01-01T12:00:05+00:00",
                consentRefusedAgents=1,
                unrestrictedSharedCA=["org1", "org2"],
            ),
            answer("r2", [], lastSeen="not a time"),
        ]
    )
    assert merged["lastSeen"] == "2025-01-01T12:00:05+00:00"
    assert merged["consentRefusedAgents"] == 1 and merged["consentRefused"] is True
    assert merged["unrestrictedSharedCA"] == ["org1", "org2"]
    assert merged["replicas"] == ["r0", "r1", "r2"]


def test_merge_all_status_merges_each_plane() -> None:
    merged = merge_all_status(
        [
            {"replica": "r0", "planes": [answer("", ["a"], crs=["ns/x"])]},
            {
                "replica": "r1",
                "planes": [answer("", ["a"], crs=["/y"]), {**answer("", ["b"]), "planeID": "q"}],
            },
        ]
    )
    assert [(p["planeID"], p["connectedAgents"], p.get("crs")) for p in merged["planes"]] == [
        ("p", 1, ["/y", "ns/x"]),
        ("q", 1, None),
    ]
    assert merged["total"] == 2


# ---- where a watch is ------------------------------------------------------------------------


def line(kind: Any, version: Any) -> bytes:
    return json.dumps({"type": kind, "object": {"metadata": {"resourceVersion": version}}}).encode()


@pytest.mark.parametrize(
    ("raw", "version"),
    [
        (line("ADDED", "5"), "5"),
        (line("MODIFIED", "6") + b"\n", "6"),
        (line("DELETED", "7"), "7"),
        (line("BOOKMARK", "8"), "8"),
        (line("ERROR", "9"), None),  # an error (410 among them) moves nothing
        (line("ADDED", 9), None),
        (line("ADDED", ""), None),
        (line("ADDED", "x" * 300), None),
        (line("ADDED", "5\x00"), None),
        (b'{"type": "ADDED", "object": []}', None),
        (b'{"type": "ADDED"}', None),
        (b"[1, 2]", None),
        (b"not json at all", None),
        (b"\xff\xfe", None),
        (b"", None),
        (
            b'{"type": "ADDED", "object": {"metadata": {"resourceVersion": "1"}}, "pad": "'
            + b"x" * MAX_EVENT_LINE_BYTES
            + b'"}',
            None,
        ),
    ],
)
def test_resource_version_of(raw: bytes, version: str | None) -> None:
    assert resource_version_of(raw) == version


def test_a_resumed_watch_starts_at_the_last_version() -> None:
    position = WatchPosition()
    query = "watch=true&labelSelector=a%3Db&resourceVersion=1&sendInitialEvents=true"
    assert position.resume_query(query) == query
    for raw in (line("ADDED", "5"), b"garbage", line("BOOKMARK", "9"), line("ERROR", "10")):
        position.observe(raw)
    assert position.resume_query(query) == "watch=true&labelSelector=a%3Db&resourceVersion=9"


def test_a_resumed_watch_keeps_only_what_is_left_of_its_timeout() -> None:
    position = WatchPosition()
    query = "watch=true&timeoutSeconds=300&resourceVersion=1"
    assert position.resume_query(query, 120.2) == "watch=true&timeoutSeconds=121&resourceVersion=1"
    position.observe(line("MODIFIED", "7"))
    assert position.resume_query(query, 0.3) == "watch=true&timeoutSeconds=1&resourceVersion=7"


@pytest.mark.parametrize(
    ("query", "watch"),
    [("watch=true", True), ("a=b&watch=1", True), ("follow=true", False), ("watch=false", False)],
)
def test_is_watch(query: str, watch: bool) -> None:
    assert is_watch(query) is watch


def test_counts_a_replica_cannot_give_are_zero_not_an_exception() -> None:
    """A gateway of another make (or a broken one) answering "many": before, ``int()`` raised
    out of the controller's pass, which then retried it as a bug every 300 s."""
    merged = merge_plane_status(
        [
            answer("r0", ["a"], consentRefusedAgents="many"),
            answer("r1", ["a"], consentRefusedAgents=[1]),
            answer("r2", ["a"], consentRefusedAgents=2),
        ]
    )
    assert merged["consentRefusedAgents"] == 2
    summed = _summed(
        [{"authorizationsGranted": "3", "replica": "r0"}, {"authorizationsGranted": 1}],
        ("authorizationsGranted",),
    )
    assert summed["authorizationsGranted"] == 1
