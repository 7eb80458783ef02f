"""The lean server begins a handler in the read that completes its request: what the handler
does before its first wait (a proxy sends the request on) happens before the loop's next pass;
what waits goes on as a task, and the connection serves its next request after it."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.unit.transports import RecordingTransport
from workflowplane.kits.http1_server import FrontServer, Handler, Limits, Request, Responder


def connected(handler: Handler) -> tuple[Any, RecordingTransport]:
    """A lean server's connection whose every request ``handler`` serves."""
    server = FrontServer(lambda method, target, headers: handler, asyncio.Protocol, Limits())
    protocol = server()
    transport = RecordingTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return protocol, transport


async def read(protocol: Any, data: bytes) -> None:
    """``data`` read as a socket's callback reads it: in a pass of the loop, outside any task
    (so a handler begun there has no current task, as in the server)."""
    done = asyncio.Event()

    def callback() -> None:
        protocol.data_received(data)
        done.set()

    asyncio.get_running_loop().call_soon(callback)
    await done.wait()


async def test_a_handler_begins_in_the_read_and_its_wait_goes_on_as_a_task() -> None:
    loop = asyncio.get_running_loop()
    answers: list[asyncio.Future[bytes]] = []
    began: list[str] = []
    answered = asyncio.Event()

    async def handler(request: Request, respond: Responder) -> None:
        began.append(request.target)  # a proxy sends the request on here
        assert asyncio.current_task() is None  # begun in the read, not in a task
        answer: asyncio.Future[bytes] = loop.create_future()
        answers.append(answer)
        respond.whole(200, [], await answer)
        answered.set()

    protocol, transport = connected(handler)
    for number in (1, 2):
        await read(protocol, b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % number)
        assert began[-1] == f"/{number}"  # in the read's own callback
        answered.clear()
        answers[-1].set_result(b"answer %d" % number)
        await answered.wait()
        assert transport.written.endswith(b"answer %d" % number)
    assert transport.written.count(b"HTTP/1.1 200 OK") == 2 and not transport.closed
    protocol.connection_lost(None)


async def test_a_request_sent_on_an_answer_written_before_its_handler_ended_is_served() -> None:
    """A proxy may write the answer from another socket's callback, its handler ending a
    pass of the loop later: the client's next request, sent on that answer, is not pipelining;
    it is read once the handler ends."""
    loop = asyncio.get_running_loop()
    finish: asyncio.Future[None] = loop.create_future()
    served: list[str] = []
    second = asyncio.Event()

    async def handler(request: Request, respond: Responder) -> None:
        served.append(request.target)
        respond.whole(200, [], b"answer " + request.target.encode())
        if request.target == "/1":
            await finish  # still running after its answer went out
        else:
            second.set()

    protocol, transport = connected(handler)
    await read(protocol, b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.written.endswith(b"answer /1")
    await read(protocol, b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n")  # before /1's handler ended
    assert served == ["/1"]
    finish.set_result(None)
    await asyncio.wait_for(second.wait(), 10)  # refused as pipelining, it never comes
    assert served == ["/1", "/2"] and transport.written.endswith(b"answer /2")
    assert b"pipelined" not in transport.written and not transport.closed
    protocol.connection_lost(None)


async def test_a_request_pipelined_behind_one_answered_at_once_is_refused_at_once() -> None:
    """The first handler never waits, so its end comes inside the read: the next request in
    that read was sent before its answer. It is refused there and then, not left to grow."""

    async def handler(request: Request, respond: Responder) -> None:
        respond.whole(502, [], b"no agent")

    protocol, transport = connected(handler)
    await read(protocol, b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nX-Pad: ")
    assert transport.written.startswith(b"HTTP/1.1 502")
    assert b"HTTP/1.1 400" in transport.written and b"pipelined" in transport.written
    await read(protocol, b" " * 100_000)  # read and dropped while the refusal lingers
    assert transport.written.count(b"HTTP/1.1") == 2
    protocol.connection_lost(None)
