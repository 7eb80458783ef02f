"""Agent rules that need no server: backoff bounds, header hygiene, errors as responses."""

from __future__ import annotations

import datetime as dt
import json
import random

import pytest

from workflowplane.agent.bootstrap import new_identity
from workflowplane.agent.tunnel import FrameServer, dial_url, full_jitter_delay
from workflowplane.agent.upstream import USER_AGENT, forwardable_headers


def test_full_jitter_stays_within_the_capped_exponential_envelope() -> None:
    random.seed(7)
    for attempt in range(12):
        ceiling = min(30.0, 1.0 * 2**attempt)
        delays = [full_jitter_delay(attempt, 1.0, 30.0) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # spread over the whole range, not a fixed step
        assert min(delays) < ceiling * 0.2


def test_credentials_impersonation_and_hop_by_hop_headers_never_travel() -> None:
    kept = forwardable_headers(
        {
            "Authorization": ["Bearer control-plane"],
            "impersonate-user": ["admin"],
            "Impersonate-Group": ["system:masters"],
            "Connection": ["keep-alive"],
            "Expect": ["100-continue"],
            "Accept": ["application/json"],
            "Content-Type": ["application/json"],
        }
    )
    assert kept == [
        ("Accept", "application/json"),
        ("Content-Type", "application/json"),
        USER_AGENT,  # the agent's, as the caller named none
    ]


def test_the_callers_user_agent_travels_instead_of_the_agents() -> None:
    kept = forwardable_headers({"user-agent": ["kubectl/v1.36"]})
    assert kept == [("user-agent", "kubectl/v1.36")]


async def test_renewal_is_due_in_the_last_third_of_the_leaf_lifetime() -> None:
    identity = await new_identity("p", ca_days=3650, cert_days=30)
    now = dt.datetime.now(dt.UTC)
    assert not identity.renewal_due(1 / 3, now)
    assert identity.renewal_due(1 / 3, now + dt.timedelta(days=21))


class _Unreachable:
    async def request(self, *_: object) -> object:
        raise AssertionError("must not reach the upstream")


async def _answers(raw: str) -> list[dict[str, object]]:
    sent: list[bytes] = []

    async def send(data: bytes) -> None:
        sent.append(data)

    server = FrameServer(_Unreachable(), send, timeout=1, max_concurrent=2)  # type: ignore[arg-type]
    server.dispatch(raw)
    await server.idle()
    await server.close()
    return [json.loads(s) for s in sent]


@pytest.mark.parametrize(
    ("frame", "status"),
    [
        ({"requestID": "a", "target": "metrics", "method": "GET", "path": "/"}, 404),
        ({"requestID": "b", "target": "k8s", "method": "BREW", "path": "/"}, 500),
        ({"requestID": "c", "target": "k8s", "method": "GET", "path": "no-slash"}, 500),
    ],
)
async def test_errors_come_back_as_responses_never_silence(
    frame: dict[str, str], status: int
) -> None:
    (response,) = await _answers(json.dumps(frame))
    assert response["requestID"] == frame["requestID"] and response["statusCode"] == status
    assert response["error"]["message"]  # type: ignore[index]


async def test_malformed_frames_are_dropped_without_an_answer() -> None:
    assert await _answers("{not json") == []
    assert await _answers('{"target": "k8s"}') == []  # no requestID


async def test_a_frame_dispatched_after_the_server_closed_is_dropped() -> None:
    """The connection is going: nothing it still reads may reach the plane."""
    sent: list[bytes] = []

    async def send(data: bytes) -> None:
        sent.append(data)

    server = FrameServer(_Unreachable(), send, timeout=1, max_concurrent=2)  # type: ignore[arg-type]
    await server.close()
    server.dispatch(json.dumps({"requestID": "a", "method": "GET", "path": "/api"}))
    assert server.requests_in_flight == 0
    await server.idle()
    assert sent == []


@pytest.mark.parametrize(
    ("given", "dialled"),
    [
        ("wss://gw:8443/ws", "wss://gw:8443/ws?planeID=p+1&planeType=workflowplane"),
        ("wss://gw:8443", "wss://gw:8443/ws?planeID=p+1&planeType=workflowplane"),
        ("wss://gw/ws?x=1", "wss://gw/ws?planeID=p+1&planeType=workflowplane&x=1"),
        ("wss://gw/t/ws?planeID=old&a=b", "wss://gw/t/ws?a=b&planeID=p+1&planeType=workflowplane"),
    ],
)
def test_the_gateway_url_is_dialled_with_the_plane_merged_into_its_query(
    given: str, dialled: str
) -> None:
    """As OpenChoreo's agent merges them (Go's ``query.Encode()``, sorted): a URL that has a
    query of its own had become ``…/ws?x=1?planeType=…``, and its planeType unreadable."""
    assert dial_url(given, "workflowplane", "p 1") == dialled


def test_a_gateway_url_with_a_query_is_taken_from_the_command_line() -> None:
    """OpenChoreo's agent accepts it and merges planeID and planeType into its query; ours
    had refused it at start (so the merge above was out of reach)."""
    import argparse  # noqa: PLC0415

    from workflowplane.agent.command import add_arguments, config_from_args  # noqa: PLC0415

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--server-url=wss://gw:8443/ws?tenant=a", "--plane-id=p"])
    config = config_from_args(args)
    assert dial_url(config.server_url, config.plane_type, config.plane_id) == (
        "wss://gw:8443/ws?planeID=p&planeType=workflowplane&tenant=a"
    )
