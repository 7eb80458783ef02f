"""The internal listener's bounds on a caller and an agent that never finish: a caller that
reads nothing of a chunked answer, a caller trickling its request body, an agent trickling a
chunked answer's body. Each ends within a bound, the agent told to stop once and the body's
buffer dropped, on the lean path and on aiohttp's (a ``%`` in the path hands a connection to
aiohttp).

The listener is the gateway's own (``Gateway._serve_internal``: TLS, the lean server in
front of aiohttp), around one agent connection whose socket records what it is sent. Time is
looptime's: the bounds are reached without waiting for them."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from tests.unit.gateway.stand_ins import LEAF, AgentSocket, OneAgent
from workflowplane.gateway.agent_endpoint import AgentEndpoint
from workflowplane.gateway.config import GatewayConfig
from workflowplane.gateway.connections import AgentConnection
from workflowplane.gateway.kube_proxy import MIN_BYTES_PER_WINDOW
from workflowplane.gateway.pki_store import GatewayPKI
from workflowplane.gateway.server import Gateway
from workflowplane.gateway.tls import ChainFiles
from workflowplane.pki import generate_ca, issue_certificate
from workflowplane.protocol import StreamChunk, TunnelRequest, TunnelResponse

TIMEOUT = 2.0  # the request timeout (loop time)
FRAME = 8 << 20  # the largest agent message, so the bound of a chunked answer's buffer
LEAN = "/api/proxy/workflowplane/p1/team-a/build/k8s/api/v1/namespaces/x/pods"
HANDED = LEAN.replace("/pods", "/p%6Fds")  # a `%`: the lean server hands it to aiohttp
PATHS = pytest.mark.parametrize("path", [LEAN, HANDED], ids=["lean", "aiohttp"])
CHUNK = b"x" * (256 << 10)


class Internal(NamedTuple):
    gateway: Gateway
    port: int
    conn: AgentConnection
    agent: AgentSocket
    endpoint: AgentEndpoint
    client: ssl.SSLContext


@pytest.fixture
async def internal(tmp_path: Path) -> AsyncIterator[Internal]:
    """The gateway's internal listener (no client certificates asked) serving CR
    team-a/build of plane p1 through one v3 agent connection."""
    config = GatewayConfig(
        host="127.0.0.1",
        internal_port=0,
        internal_mtls=False,
        request_timeout_seconds=TIMEOUT,
        max_frame_bytes=FRAME,
    )
    kube: Any = None
    gateway = Gateway(config, kube)
    ca = generate_ca("server-ca")
    server = issue_certificate(ca, "gw", client=False, server=True, ip_addresses=["127.0.0.1"])
    gateway.pki = GatewayPKI(ca, server, b"")
    agent = AgentSocket()
    ws: Any = agent
    conn = AgentConnection("workflowplane", "p1", ws, LEAF, {"team-a/build"}, v2=True, binary=True)
    serving: Any = OneAgent(conn)
    gateway._proxy._connections = serving  # both paths pick this connection
    gateway._fast._connections = serving
    await gateway._serve_internal(ChainFiles.write(tmp_path, server))
    client = ssl.create_default_context(cadata=ca.cert_pem.decode())
    try:
        yield Internal(
            gateway,
            gateway.ports["internal"],
            conn,
            agent,
            AgentEndpoint(serving, config, gateway.metrics),
            client,
        )
    finally:
        for runner in gateway._runners:
            await runner.cleanup()
        if gateway._front is not None:
            gateway._front.close_all()
        gateway._files.cleanup()


async def _caller(
    site: Internal, head: str, *, limit: int = 1 << 16
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", site.port, ssl=site.client, limit=limit
    )
    writer.write(head.encode())
    return reader, writer


async def _asked(site: Internal) -> str:
    """The requestID of the request the agent was sent."""
    await site.agent.sent.wait()
    (frame,) = site.agent.frames
    assert isinstance(frame, TunnelRequest)
    return frame.request_id


async def _until(done: Any, what: str) -> None:
    """Wait for ``done()`` (loop time: looptime moves the clock), or fail saying ``what``."""
    try:
        async with asyncio.timeout(50 * TIMEOUT):
            while not done():  # noqa: ASYNC110 - polls a plain predicate
                await asyncio.sleep(TIMEOUT / 10)
    except TimeoutError:
        pytest.fail(f"still waiting after {50 * TIMEOUT:g}s (loop time): {what}")


@pytest.mark.looptime
@PATHS
async def test_a_caller_that_reads_nothing_of_a_chunked_answer_is_cut_off(
    internal: Internal, path: str
) -> None:
    """The reviewer's case: on aiohttp's path the handler waited in aiohttp's drain without
    end, its body buffer filling to the bound and the agent never told to stop. Now the
    connection is stall-guarded on either path: cut off once its peer read nothing for the
    request timeout, the agent told ``isClose`` once, the buffer dropped."""
    site = internal
    _, writer = await _caller(site, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n", limit=1024)
    rid = await _asked(site)
    head = TunnelResponse(request_id=rid, status_code=200, chunked=True)
    assert site.endpoint._dispatch(site.conn, head)
    for _ in range(4 * FRAME // len(CHUNK)):  # until its writes wait (or its buffer is full)
        body = site.conn.bodies.get(rid)
        if body is None or body.ended or body.buffered >= len(CHUNK) * 4:
            break
        site.endpoint._dispatch(site.conn, StreamChunk(request_id=rid, data=CHUNK))
        for _ in range(3):
            await asyncio.sleep(0)
    assert site.agent.closes(rid) == 0 and rid in site.conn.bodies  # the relay waits
    await _until(lambda: site.agent.closes(rid), "the agent to be told isClose")
    await _until(lambda: site.gateway._in_flight.count == 0, "the handler to end")
    assert site.agent.closes(rid) == 1
    assert site.conn.bodies == {} and site.conn.pending == {}
    writer.close()


@pytest.mark.looptime
async def test_a_request_body_trickled_on_aiohttps_path_gets_a_408_naming_the_timeout(
    internal: Internal,
) -> None:
    """One byte per 0.25 s of a 1 MB body: ``request.read()`` waited for it without end.
    Now the caller has a 408 at the request timeout, the connection closed, and nothing
    reached the agent."""
    site = internal
    head = f"POST {HANDED} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n"
    reader, writer = await _caller(site, head)

    async def trickle() -> None:
        while not writer.is_closing():
            writer.write(b"x")
            await asyncio.sleep(0.25)

    trickling = asyncio.create_task(trickle())
    try:
        async with asyncio.timeout(50 * TIMEOUT):
            answer = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1])
                for line in answer.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            body = await reader.readexactly(length)
            rest = await reader.read()  # the connection ends
    finally:
        trickling.cancel()
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b"did not arrive within 2s" in body and b"--request-timeout" in body
    assert rest == b""
    assert site.agent.frames == [] and site.gateway._in_flight.count == 0


@pytest.mark.looptime
@PATHS
async def test_an_agent_trickling_a_chunked_answer_is_cut_at_the_first_short_window(
    internal: Internal, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """One byte every 0.9 request timeouts never met the idle timeout between chunks, and a
    plain answer had no other bound: its caller waited without end. A slow answer that keeps
    the minimum pace (MIN_BYTES_PER_WINDOW per request timeout) goes on; the first window
    short of it cuts the caller off (not a clean end) and tells the agent once."""
    site = internal
    reader, writer = await _caller(site, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")
    received = bytearray()

    async def read_all() -> None:
        try:
            while data := await reader.read(1 << 16):
                received.extend(data)
        except (ConnectionError, ssl.SSLError):
            pass

    reading = asyncio.create_task(read_all())
    rid = await _asked(site)
    assert site.endpoint._dispatch(
        site.conn, TunnelResponse(request_id=rid, status_code=200, chunked=True)
    )
    slow = b"s" * (MIN_BYTES_PER_WINDOW + 1024)
    for _ in range(4):  # slow but steady: one window after another holds enough
        await asyncio.sleep(0.9 * TIMEOUT)
        assert site.endpoint._dispatch(site.conn, StreamChunk(request_id=rid, data=slow))
    await asyncio.sleep(0.9 * TIMEOUT)  # the fourth window was judged: enough
    assert site.agent.closes(rid) == 0 and rid in site.conn.bodies
    with caplog.at_level(logging.WARNING, logger="workflowplane.gateway"):
        for _ in range(30):  # one byte just within each idle timeout
            if rid not in site.conn.bodies:
                break
            site.endpoint._dispatch(site.conn, StreamChunk(request_id=rid, data=b"t"))
            await asyncio.sleep(0.9 * TIMEOUT)
        async with asyncio.timeout(10 * TIMEOUT):
            await reading
    writer.close()
    assert site.agent.closes(rid) == 1 and site.conn.bodies == {}
    _, _, body = bytes(received).partition(b"\r\n\r\n")
    assert body.count(b"s") == 4 * len(slow)  # chunk lines are hex: no "s"
    assert not received.endswith(b"0\r\n\r\n")  # cut off: the body does not look complete
    assert "below the gateway's minimum" in caplog.text
    assert site.gateway._in_flight.count == 0


class _NoAgentHere:
    """No agent of the plane connected to this replica: its requests go to ``on_miss``."""

    def serves(self, *_: Any) -> bool:
        return False

    def connected(self, *_: Any) -> bool:
        return False


@pytest.mark.looptime
async def test_a_request_body_trickled_to_a_replica_without_the_agent_gets_a_408_too(
    internal: Internal,
) -> None:
    """A request forwarded to a peer replica (``on_miss``) had its body read there, without a
    deadline either; now it is read within the request timeout before the miss handler runs
    (which takes what was read)."""
    site = internal
    nobody: Any = _NoAgentHere()
    site.gateway._proxy._connections = nobody
    site.gateway._fast._connections = nobody
    missed: list[bytes] = []

    async def forward(request: Any, target: Any, refusal: Any) -> Any:
        missed.append(await request.read())
        return refusal

    site.gateway._proxy.on_miss = forward
    head = f"POST {LEAN} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\nx"
    reader, writer = await _caller(site, head)
    try:
        async with asyncio.timeout(50 * TIMEOUT):
            answer = await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408 ") and missed == []
