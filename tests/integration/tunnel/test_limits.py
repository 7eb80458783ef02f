"""What one admitted agent (or one caller) can do to the gateway, and what it cannot: issue #10
items 4-6, gateway side. Agents here are scripted (``scripted.py``) so they can misbehave."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import socket
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from lightkube.resources.core_v1 import Secret

from tests.integration.harness import RunningGateway, eventually, running_gateway
from tests.integration.tunnel.scripted import (
    ScriptedAgent,
    answer,
    leaf_of,
    scripted_agent,
    scripted_plane,
)
from workflowplane.kits.clock import utcnow
from workflowplane.protocol.gateway_client import GATEWAY_NAMESPACE, INTERNAL_CLIENT_SECRET
from workflowplane.testenv import ApiServer

pytestmark = pytest.mark.integration
WP = "workflowplane"
FRAME_LIMIT = 1024 * 1024


def _sample(gw: RunningGateway, name: str, **labels: str) -> float:
    return gw.gateway.metrics.registry.get_sample_value(name, labels) or 0.0


async def _get(gw: RunningGateway, plane_id: str, namespace: str, path: str) -> Any:
    return await gw.client.proxy(
        "GET", plane_type=WP, plane_id=plane_id, cr_namespace=namespace, cr_name="wp", path=path
    )


async def by_path(agent: ScriptedAgent, frame: dict[str, Any]) -> None:
    """Answers by path: /big over the frame limit, /deep a 5000-deep frame first, /bad-status
    with status 99999, anything else a small 200."""
    rid, path = frame["requestID"], frame.get("path", "")
    if path == "/big":
        body = b"x" * (FRAME_LIMIT + 1)  # base64 makes the frame a third bigger still
        await agent.send(answer(rid, body=body))
    elif path == "/deep":
        nested = "[" * 5000 + "]" * 5000
        await agent.send(f'{{"requestID": "{rid}", "body": {nested}}}')
        await agent.send(answer(rid, body=b'{"after": "deep"}'))
    elif path == "/bad-status":
        await agent.send(answer(rid, status=99999))
    elif frame.get("isUpgrade") is not None:  # a stream init: header, then nothing
        await agent.send({**answer(rid, status=99999), "body": ""})
    else:
        await agent.send(answer(rid, body=b'{"ok": true}'))


@pytest.fixture
async def small_frames(
    control_plane: ApiServer, crds: Path, tmp_path: Path
) -> AsyncIterator[RunningGateway]:
    async with running_gateway(control_plane, tmp_path, max_frame_bytes=FRAME_LIMIT) as gw:
        yield gw


async def test_an_answer_over_the_frame_limit_fails_alone_and_at_once(
    control_plane: ApiServer, small_frames: RunningGateway, namespace: str, tmp_path: Path
) -> None:
    gw = small_frames
    plane_id, ca = await scripted_plane(control_plane, gw, namespace)
    async with scripted_agent(gw, plane_id, leaf_of(ca), tmp_path, by_path):
        (conn,) = gw.gateway.connections.for_plane(WP, plane_id)
        started = time.monotonic()
        big = await _get(gw, plane_id, namespace, "/big")
        elapsed = time.monotonic() - started
        assert big.status == 502, big.body[:200]
        assert "frame limit of 1048576 bytes" in big.json()["message"]
        assert big.json()["reason"] == "ResponseTooLarge"
        # The request timeout is 30 s; the answer comes as soon as the frame's head is in.
        assert elapsed < 10, elapsed
        assert _sample(gw, "workflowplane_gateway_oversized_messages_total") == 1
        ok = await _get(gw, plane_id, namespace, "/version")
        assert ok.status == 200 and ok.json() == {"ok": True}
        assert gw.gateway.connections.for_plane(WP, plane_id) == [conn] and not conn.ws.closed


async def test_a_frame_nested_5000_deep_is_dropped_and_the_connection_carries_on(
    control_plane: ApiServer, gw: RunningGateway, namespace: str, tmp_path: Path
) -> None:
    plane_id, ca = await scripted_plane(control_plane, gw, namespace)
    async with scripted_agent(gw, plane_id, leaf_of(ca), tmp_path, by_path):
        (conn,) = gw.gateway.connections.for_plane(WP, plane_id)
        deep = await _get(gw, plane_id, namespace, "/deep")
        assert deep.status == 200 and deep.json() == {"after": "deep"}
        assert _sample(gw, "workflowplane_gateway_dropped_frames_total") >= 1
        assert not conn.ws.closed and gw.gateway.connections.for_plane(WP, plane_id) == [conn]


async def test_a_status_code_http_cannot_carry_reaches_the_caller_as_a_502_naming_it(
    control_plane: ApiServer, gw: RunningGateway, namespace: str, tmp_path: Path
) -> None:
    plane_id, ca = await scripted_plane(control_plane, gw, namespace)
    async with scripted_agent(gw, plane_id, leaf_of(ca), tmp_path, by_path):
        bad = await _get(gw, plane_id, namespace, "/bad-status")
        assert bad.status == 502 and "99999" in bad.json()["message"]
        with pytest.raises(Exception, match="99999"):
            async for _ in gw.client.proxy_stream(
                "GET",
                plane_type=WP,
                plane_id=plane_id,
                cr_namespace=namespace,
                cr_name="wp",
                path="/api/v1/configmaps",
                query="watch=true",
            ):
                pass
        assert (await _get(gw, plane_id, namespace, "/version")).status == 200


async def _internal_context(gw: RunningGateway, tmp: Path) -> ssl.SSLContext:
    """What the controller dials the internal listener with."""
    secret = await gw.kube.get(Secret, INTERNAL_CLIENT_SECRET, namespace=GATEWAY_NAMESPACE)
    data = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
    return _context_from(data, tmp)


def _context_from(data: dict[str, bytes], tmp: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=data["ca.crt"].decode())
    cert, key = tmp / "internal.crt", tmp / "internal.key"
    cert.write_bytes(data["tls.crt"])
    key.write_bytes(data["tls.key"])
    context.load_cert_chain(cert, key)
    return context


class Recorded(dict[str, Any]):
    """A connection's stream table that remembers every buffer it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Any] = []

    def __setitem__(self, key: str, value: Any) -> None:
        self.seen.append(value)
        super().__setitem__(key, value)


async def _open(
    port: int, context: ssl.SSLContext | None, *, receive_buffer: int | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(
        sock=sock, ssl=context, server_hostname="localhost" if context else None, limit=4096
    )


async def test_a_caller_that_does_not_read_loses_its_stream_and_gateway_memory_stays_bounded(
    control_plane: ApiServer, crds: Path, namespace: str, tmp_path: Path
) -> None:
    chunk = b"e" * 65536
    limit = 256 * 1024
    opened: dict[str, int] = {}

    async def flood(agent: ScriptedAgent, frame: dict[str, Any]) -> None:
        rid = frame["requestID"]
        if frame.get("isUpgrade") is None:
            await agent.send(answer(rid, body=b'{"ok": true}'))
            return
        await agent.send({**answer(rid), "body": ""})
        data = base64.b64encode(chunk).decode()
        opened[rid] = 0
        while rid not in agent.closed_streams and opened[rid] < 4000:  # 256 MiB at most
            await agent.send({"requestID": rid, "data": data})
            opened[rid] += 1

    async with running_gateway(control_plane, tmp_path, max_stream_buffer_bytes=limit) as gw:
        plane_id, ca = await scripted_plane(control_plane, gw, namespace)
        async with scripted_agent(gw, plane_id, leaf_of(ca), tmp_path, flood) as agent:
            (conn,) = gw.gateway.connections.for_plane(WP, plane_id)
            conn.streams = buffers = Recorded()
            path = f"/api/proxy/{WP}/{plane_id}/{namespace}/wp/k8s/api/v1/configmaps?watch=true"
            _, writer = await _open(
                gw.gateway.ports["internal"],
                await _internal_context(gw, tmp_path),
                receive_buffer=4096,
            )
            writer.write(f"GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n".encode())
            await writer.drain()
            # The caller reads nothing from here on.
            await eventually(
                lambda: _sample(gw, "workflowplane_gateway_slow_streams_closed_total") == 1,
                timeout=60,
            )
            (rid,) = opened
            await eventually(lambda: rid in agent.closed_streams, timeout=10)  # agent told
            assert conn.streams == {}
            (buffer,) = buffers.seen
            assert buffer.overflowed and buffer.peak <= limit + len(chunk)
            assert opened[rid] < 4000  # cut off long before the agent ran out of data
            assert (await _get(gw, plane_id, namespace, "/version")).status == 200
            writer.close()


async def test_a_certificate_that_expires_while_connected_is_closed_at_its_not_after(
    control_plane: ApiServer,
    gw: RunningGateway,
    namespace: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    plane_id, ca = await scripted_plane(control_plane, gw, namespace)
    start = utcnow() - dt.timedelta(minutes=1)
    short = leaf_of(ca, not_before=start, valid_for=dt.timedelta(minutes=1, seconds=8))
    async with scripted_agent(gw, plane_id, short, tmp_path, by_path) as agent:
        assert (await _get(gw, plane_id, namespace, "/version")).status == 200
        await eventually(lambda: agent.ws.closed, timeout=30)
        assert agent.ws.close_code == 1008
        assert utcnow() >= short.certificate.not_valid_after_utc
    assert _sample(gw, "workflowplane_gateway_expired_connections_total") == 1
    assert "client certificate expired at" in caplog.text
    assert not gw.gateway.connections.for_plane(WP, plane_id)


async def _closed_by_server(reader: asyncio.StreamReader, within: float) -> float:
    """Seconds until the server closed the connection (EOF or reset)."""
    started = time.monotonic()
    try:
        while await asyncio.wait_for(reader.read(1024), within):
            pass
    except (ConnectionResetError, ssl.SSLError):
        pass
    return time.monotonic() - started


async def test_half_open_clients_are_closed_by_every_listener(
    control_plane: ApiServer, crds: Path, namespace: str, tmp_path: Path
) -> None:
    async with (
        running_gateway(
            control_plane, tmp_path, header_timeout_seconds=1.0, tls_handshake_timeout_seconds=1.0
        ) as gw,
        contextlib.AsyncExitStack() as stack,
    ):
        plane_id, ca = await scripted_plane(control_plane, gw, namespace)
        agent = await stack.enter_async_context(
            scripted_agent(gw, plane_id, leaf_of(ca), tmp_path, by_path)
        )
        public, internal = gw.gateway.ports["public"], gw.gateway.ports["internal"]
        server_ca = ssl.create_default_context(cafile=str(gw.server_ca_file))
        # A TLS handshake that never finishes (a ClientHello's first bytes, then nothing).
        reader, writer = await _open(public, None)
        writer.write(b"\x16\x03\x01\x00")
        assert await _closed_by_server(reader, within=15) < 15
        writer.close()
        # A finished handshake, then headers that never end, on both TLS listeners.
        internal_context = await _internal_context(gw, tmp_path)
        for port, context in ((public, server_ca), (internal, internal_context)):
            reader, writer = await _open(port, context)
            writer.write(b"GET /ws?planeType=workflowplane HTTP/1.1\r\nHost: gw\r\nX-Slow: ")
            await writer.drain()
            assert await _closed_by_server(reader, within=15) < 15
            writer.close()
        # A connection that sent its headers long ago is not a half-open one.
        assert not agent.ws.closed
        assert (await _get(gw, plane_id, namespace, "/version")).status == 200


@pytest.mark.parametrize("control", ["ping", "pong"])
async def test_a_flood_of_pings_or_pongs_is_read_slower_too(
    control: str, control_plane: ApiServer, crds: Path, namespace: str, tmp_path: Path
) -> None:
    """Control frames are useless beyond a few a minute: a flood counts against the same
    budget (answered pings too), and the connection still serves requests."""
    async with running_gateway(control_plane, tmp_path, max_junk_frames_per_second=200) as gw:
        plane_id, ca = await scripted_plane(control_plane, gw, namespace)
        async with scripted_agent(gw, plane_id, leaf_of(ca), tmp_path, by_path) as agent:
            send = agent.ws.ping if control == "ping" else agent.ws.pong
            for _ in range(600):
                await send(b"")
            await eventually(
                lambda: _sample(gw, "workflowplane_gateway_throttled_reads_total") >= 1,
                timeout=30,
            )
            assert (await _get(gw, plane_id, namespace, "/version")).status == 200


async def test_a_flood_of_useless_frames_is_read_slower_and_logged_once(
    control_plane: ApiServer,
    crds: Path,
    namespace: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with running_gateway(control_plane, tmp_path, max_junk_frames_per_second=200) as gw:
        plane_id, ca = await scripted_plane(control_plane, gw, namespace)
        async with scripted_agent(gw, plane_id, leaf_of(ca), tmp_path, by_path) as agent:
            for index in range(600):
                await agent.send(answer(f"nobody-waits-{index}"))
            await eventually(
                lambda: _sample(gw, "workflowplane_gateway_late_responses_total") == 600,
                timeout=30,
            )
            assert _sample(gw, "workflowplane_gateway_throttled_reads_total") >= 1
            assert (await _get(gw, plane_id, namespace, "/version")).status == 200
    lines = [r for r in caplog.records if "timed-out request dropped" in r.getMessage()]
    assert len(lines) == 1  # not 600
