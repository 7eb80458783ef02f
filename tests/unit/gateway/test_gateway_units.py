"""Gateway rules that need no server: path checks, streaming, CA bundles, answers a caller
can always parse, bounded stream buffers, frames that do not decode."""

from __future__ import annotations

import json
import logging

import pytest

from workflowplane.gateway.agent_endpoint import AgentEndpoint, JunkBudget
from workflowplane.gateway.config import GatewayConfig
from workflowplane.gateway.connections import AgentConnection, ConnectionManager
from workflowplane.gateway.kube_proxy import KubeProxy, bad_path, blocked_path, reply_headers
from workflowplane.gateway.metrics import GatewayMetrics
from workflowplane.gateway.plane_cache import PlaneCache
from workflowplane.gateway.streams import ITEM_OVERHEAD, StreamBuffer, StreamEnd
from workflowplane.gateway.tls import split_pems
from workflowplane.pki import generate_ca, issue_certificate
from workflowplane.protocol import TunnelError, TunnelResponse
from workflowplane.protocol.http import is_streaming_query as is_streaming


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


class NoConnections:
    """A connection manager nobody may consult: the answer comes before any lookup."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"no connection should be looked at ({name})")


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/namespaces/kube-system/secrets",  # OpenChoreo's gateway's own two
        "/api/v1/namespaces/kube-system/secrets/bootstrap-token-abc",
        "/apis/v1/serviceaccounts",
        "/api/v1/watch/namespaces/kube-system/secrets",  # what its substring check misses
        "/api/v1/namespaces//kube-system/secrets",
        "//api/v1/namespaces/kube-system/secrets/x",
        "/api/v1/namespaces/kube%2Dsystem/secrets",
        "/api/v1/namespaces/kube-system/%73ecrets",
    ],
)
def test_kube_systems_secrets_are_blocked_however_spelled(path: str) -> None:
    assert blocked_path(path)


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/namespaces/kube-system/configmaps",
        "/api/v1/namespaces/kube-system/pods",
        "/api/v1/namespaces/team-a/secrets",
        "/apis/example.com/v1/namespaces/kube-system/secrets",  # another group's "secrets"
        "/api/v1/namespaces/kube-systemx/secrets",
    ],
)
def test_other_paths_are_not_blocked(path: str) -> None:
    assert not blocked_path(path)


async def test_a_blocked_path_is_refused_before_any_agent_is_asked() -> None:
    """aiohttp's route (the lean one leaves such targets to it): a 403 the caller may retry
    nowhere else, as OpenChoreo's gateway answers; no connection is looked up."""
    from aiohttp.test_utils import make_mocked_request  # noqa: PLC0415

    proxy = KubeProxy(NoConnections(), GatewayConfig(), GatewayMetrics())  # type: ignore[arg-type]
    target = "/api/proxy/workflowplane/p/ns/cr/k8s/api/v1/namespaces/kube-system/secrets"
    request = make_mocked_request(
        "GET",
        target,
        match_info={
            "planeType": "workflowplane",
            "planeID": "p",
            "crNamespace": "ns",
            "crName": "cr",
            "path": "api/v1/namespaces/kube-system/secrets",
        },
    )
    response = await proxy.handle(request)
    assert response.status == 403
    assert "access to path is blocked" in json.loads(response.body)["message"]  # type: ignore[arg-type]


async def test_a_declared_body_over_the_limit_is_refused_before_any_agent_is_asked() -> None:
    """A 413 whether or not the plane has an agent (as OpenChoreo's gateway answers), not
    the 502 of a plane without one after the body was read."""
    from aiohttp.test_utils import make_mocked_request  # noqa: PLC0415

    config = GatewayConfig()
    proxy = KubeProxy(NoConnections(), config, GatewayMetrics())  # type: ignore[arg-type]
    info = {"planeType": "workflowplane", "planeID": "p", "crNamespace": "ns", "crName": "cr"}
    request = make_mocked_request(
        "POST",
        "/api/proxy/workflowplane/p/ns/cr/k8s/api/v1/namespaces/x/configmaps",
        headers={"Content-Length": str(config.max_body_bytes + 1)},
        match_info={**info, "path": "api/v1/namespaces/x/configmaps"},
    )
    response = await proxy.handle(request)
    assert response.status == 413
    assert str(config.max_body_bytes) in json.loads(response.body)["message"]  # type: ignore[arg-type]


def test_streaming_requests_are_recognised() -> None:
    assert is_streaming({"watch": "true"}) and is_streaming({"follow": "1"})
    assert not is_streaming({"watch": "false"}) and not is_streaming({})


@pytest.mark.parametrize(
    ("query", "streaming"),
    [
        ("watch=true&watch=false", True),  # the API server acts on the first value: a watch
        ("watch=false&watch=true", False),
        ("follow=1&follow=0", True),
        ("limit=5&watch=true", True),
        ("watch=%74rue", True),
        # Any value but 0 or false is true to the API server (Convert_Slice_string_To_bool):
        # these went past the stream caps as ordinary requests.
        ("watch=yes", True),
        ("watch=True", True),
        ("watch=", True),
        ("watch", True),
        ("limit=1&follow", True),
        ("watch=FALSE", False),
        ("watch=0", False),
        ("watchx=1", False),
        ("limit=5", False),
    ],
)
def test_a_query_string_counts_as_the_api_server_reads_it(query: str, streaming: bool) -> None:
    assert is_streaming(query) is streaming


def test_bundles_split_so_one_bad_block_can_be_skipped() -> None:
    good = generate_ca("a").cert_pem + generate_ca("b").cert_pem
    bad = b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n"
    assert len(split_pems(good + bad)) == 3
    assert all(block.startswith("-----BEGIN") for block in split_pems(good))


# ---- answers the caller can always parse ---------------------------------------------------


def _proxy() -> tuple[KubeProxy, GatewayMetrics]:
    metrics = GatewayMetrics()
    manager = ConnectionManager(PlaneCache(None), metrics)  # type: ignore[arg-type]
    return KubeProxy(manager, GatewayConfig(), metrics), metrics


@pytest.mark.parametrize("code", [99999, 600, 99, 101, -1])
def test_a_status_code_http_cannot_carry_becomes_a_502_naming_it(code: int) -> None:
    proxy, metrics = _proxy()
    answer = proxy.to_response(TunnelResponse(request_id="r", status_code=code, body=b"x"))
    assert answer.status == 502
    assert str(code) in json.loads(answer.body)["message"]  # type: ignore[arg-type]
    assert (
        metrics.registry.get_sample_value("workflowplane_gateway_invalid_status_codes_total") == 1
    )
    failed = proxy.to_response(
        TunnelResponse(request_id="r", error=TunnelError(code=code, message="m"))
    )
    assert failed.status == 502


def test_valid_answers_pass_with_their_headers_minus_the_ones_that_would_break_http() -> None:
    proxy, _ = _proxy()
    answer = proxy.to_response(
        TunnelResponse(
            request_id="r",
            status_code=201,
            body=b"{}",
            headers={
                "Content-Type": ["application/json"],
                "X-Split": ["a\r\nSet-Cookie: evil=1"],
                "Bad Name": ["v"],
                "Connection": ["close"],
            },
        )
    )
    assert answer.status == 201 and answer.headers["Content-Type"] == "application/json"
    assert "X-Split" not in answer.headers and "Bad Name" not in answer.headers
    assert "Connection" not in answer.headers
    errored = proxy.to_response(
        TunnelResponse(request_id="r", status_code=0, error=TunnelError(code=404, message="gone"))
    )
    assert errored.status == 404 and "agent: gone" in errored.text  # type: ignore[operator]


@pytest.mark.parametrize("name", ["X-A\n", "X-A\r", "X-A\n\n", "\nX-A"])
def test_a_header_name_with_a_line_break_is_dropped_from_the_callers_answer(name: str) -> None:
    """``^token$`` took ``X-A\n`` (``$`` matches before a last newline): written as it
    came, the caller's client read the header block as ended and the next answer as this
    one's body."""
    headers = {"Content-Type": ["application/json"], name: ["1"]}
    assert reply_headers(headers) == [("Content-Type", "application/json")]


# ---- bounded streams --------------------------------------------------------------------


async def test_a_stream_buffer_is_bounded_and_overflows_once_when_the_caller_lags() -> None:
    buffer = StreamBuffer("ns/wp", limit=1000)
    cut: list[bool] = []
    buffer.on_overflow = lambda: cut.append(True)
    assert buffer.put(b"x" * 5000)  # one chunk always fits an empty buffer
    assert await buffer.get() == b"x" * 5000
    for _ in range(4):  # each item counts its bytes and ITEM_OVERHEAD
        assert buffer.put(b"y" * (250 - ITEM_OVERHEAD))
    assert buffer.buffered == 1000
    assert not buffer.put(b"z")  # past the bound: the stream is over
    assert buffer.overflowed and cut == [True] and buffer.buffered == 0
    end = await buffer.get()
    assert isinstance(end, StreamEnd) and "fell more than 1000 bytes behind" in str(end.problem)
    assert not buffer.put(b"more") and cut == [True]
    assert buffer.peak == 5000 + ITEM_OVERHEAD


# ---- frames that do not decode ------------------------------------------------------------


class _Socket:
    closed = False

    async def send_str(self, data: str) -> None:
        raise AssertionError(data)

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        raise AssertionError("the connection must survive")


@pytest.mark.parametrize(
    "raw",
    [
        "[" * 5000 + "]" * 5000,
        '{"requestID": "r", "body": ' + "[" * 5000 + "]" * 5000 + "}",
        '{"requestID": "r", "headers": {"a": ' + "{" * 5000 + "}" * 5000 + "}}",
        '{"requestID": 5}',
        '{"requestID": "r", "statusCode": "200"}',
        '{"requestID": "r", "statusCode": 1e999}',
        '{"requestID": "r", "data": "not base64!"}',
        "null",
        "[]",
        b"\xff\xfe\x00",
        "",
    ],
)
def test_any_undecodable_frame_is_dropped_and_counted(
    raw: str | bytes, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = GatewayMetrics()
    manager = ConnectionManager(PlaneCache(None), metrics)  # type: ignore[arg-type]
    endpoint = AgentEndpoint(manager, GatewayConfig(), metrics)
    conn = AgentConnection("workflowplane", "p", _Socket(), _LEAF, {"ns/wp"})
    with caplog.at_level(logging.INFO):
        for _ in range(50):
            endpoint._route_frame(conn, raw)
    assert metrics.registry.get_sample_value("workflowplane_gateway_dropped_frames_total") == 50
    lines = [r for r in caplog.records if r.name.endswith("agent_endpoint")]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING  # one line, not fifty


_LEAF = issue_certificate(generate_ca("any"), "agent").certificate


def test_an_agent_past_its_useless_frame_budget_is_not_read_for_the_rest_of_the_second() -> None:
    now = [50.0]
    budget = JunkBudget(3, clock=lambda: now[0])
    assert [budget.spend() for _ in range(3)] == [0.0, 0.0, 0.0]
    now[0] += 0.25
    assert budget.spend() == pytest.approx(0.75)
    now[0] += 0.75
    assert budget.spend() == 0.0  # a new second, a new budget
    unlimited = JunkBudget(0, clock=lambda: now[0])
    assert all(unlimited.spend() == 0.0 for _ in range(10_000))


@pytest.mark.parametrize(
    ("path", "streaming"),
    [
        ("/api/v1/namespaces/x/pods/p/log", True),
        ("/api/proxy/workflowplane/p/ns/wp/k8s/api/v1/namespaces/x/pods/p/log", True),
        ("/api/v1/namespaces/x/services/s:80/proxy/feed", False),  # the application's own
        ("/api/v1/namespaces/x/pods", False),
    ],
)
def test_follow_streams_a_log_only(path: str, streaming: bool) -> None:
    """``follow`` means a stream to the API server on a pod's log alone (as OpenChoreo's
    gateway reads it): elsewhere it was taken for one, and a v1 agent's request lost it."""
    assert is_streaming("follow=true", path) is streaming
    assert is_streaming("watch=true", path) is True


@pytest.mark.parametrize(
    ("path", "status", "said"),
    [
        ("/api/proxy/workflowplane/p/ns/cr/k8s", 400, "invalid proxy URL format"),
        ("/api/proxy/a/b/c", 400, "invalid proxy URL format"),
        ("/api/proxy/workflowplane//ns/cr/k8s/api", 400, "invalid proxy URL format"),
        ("/api/proxy/workflowplane/p/ns/cr/bogus/x", 403, "target not allowed: 'bogus'"),
        ("/api/proxy/workflowplane/p/ns/cr/monitoring/x", 404, "unknown target: monitoring"),
        ("/api/proxy/workflowplane/p/ns/cr/logs/x/y", 404, "unknown target: logs"),
    ],
)
async def test_a_proxy_url_without_k8s_in_its_place_is_answered_as_openchoreos_is(
    path: str, status: int, said: str
) -> None:
    """Its gateway answers these 400 (too few parts) and 403 (a target it does not know);
    its observability targets it forwards, and every agent answers them 404 "unknown
    target", which this gateway says itself. No connection is looked at."""
    from aiohttp import web  # noqa: PLC0415
    from aiohttp.test_utils import TestClient, TestServer  # noqa: PLC0415

    proxy = KubeProxy(NoConnections(), GatewayConfig(), GatewayMetrics())  # type: ignore[arg-type]
    app = web.Application()
    app.add_routes(proxy.routes())
    async with TestClient(TestServer(app)) as client:
        reply = await client.get(path)
        assert reply.status == status
        assert said in (await reply.json())["message"]


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ([], "must be a JSON object"),
        ({"planeType": "workflowplane", "planeID": "p", "event": "updated", "name": 5}, "name"),
        ({"planeType": "workflowplane", "planeID": "p", "event": "x", "name": "n"}, "needs"),
        (
            {"planeType": "workflowplane", "planeID": "p", "event": "updated", "name": "n"}
            | {"namespace": []},
            "namespace must be",
        ),
        ({"planeType": "workflowplane", "planeID": "p", "event": "updated"}, "missing: name"),
    ],
)
def test_a_notify_that_is_no_notification_is_named(body: object, problem: str) -> None:
    from workflowplane.gateway.internal_api import _notify_problem  # noqa: PLC0415

    said = _notify_problem(body)
    assert said and problem in said


def test_a_null_in_a_notify_is_the_empty_string_go_decodes() -> None:
    from workflowplane.gateway.internal_api import _notify_problem  # noqa: PLC0415

    body = {"planeType": "workflowplane", "planeID": "p", "event": "deleted", "namespace": None}
    assert _notify_problem({**body, "name": None}) == ""
