"""uvloop's descriptor bug (MagicStack/uvloop#653), made on a real uvloop loop: a dial whose
socket has the descriptor of a transport uvloop still holds is aiohttp's connection error.

The state uvloop's bug leaves behind is made on purpose: a new, unconnected socket is put on
the descriptor of a transport uvloop holds (``dup2``), and aiohttp's dialer is handed it
(``close`` lets it go without closing it: the transport's close does that).
"""

from __future__ import annotations

import ast
import asyncio
import os
import socket
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import uvloop

import workflowplane
from workflowplane.kits.dialing import Connector, is_descriptor_clash


class Borrowed(socket.socket):
    """A socket object on another's descriptor; closing it hands the descriptor back."""

    def close(self) -> None:
        self.detach()


def on_uvloop(main: Callable[[], Awaitable[Any]]) -> Any:
    """``main`` run on a uvloop loop of its own thread (pytest's loop stays as it was)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = uvloop.run(main())  # type: ignore[arg-type]
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


async def dial_on_a_held_descriptor(connector: Callable[..., aiohttp.TCPConnector]) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    held, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
    descriptor = held.get_extra_info("socket").fileno()

    def same_descriptor(_: Any) -> socket.socket:
        with socket.socket() as fresh:
            os.dup2(fresh.fileno(), descriptor)
        return Borrowed(fileno=descriptor)

    try:
        async with aiohttp.ClientSession(connector=connector(socket_factory=same_descriptor)) as s:
            await s.get(f"http://127.0.0.1:{port}/")
    finally:
        held.close()
        server.close()


def test_a_dial_on_a_descriptor_uvloop_still_holds_is_a_connection_error() -> None:
    with pytest.raises(aiohttp.ClientConnectorError, match="uvloop's descriptor bug") as caught:
        on_uvloop(lambda: dial_on_a_held_descriptor(Connector))
    assert is_descriptor_clash(caught.value.__cause__)  # type: ignore[arg-type]


def test_aiohttp_alone_lets_uvloops_runtime_error_through() -> None:
    """What the connector is for: if aiohttp ever maps it, the connector can go."""
    with pytest.raises(RuntimeError, match="is used by transport"):
        on_uvloop(lambda: dial_on_a_held_descriptor(aiohttp.TCPConnector))


def test_another_runtime_error_of_a_dial_stays_a_bug() -> None:
    def broken(_: Any) -> socket.socket:
        raise RuntimeError("a bug")

    async def dial() -> None:
        async with aiohttp.ClientSession(connector=Connector(socket_factory=broken)) as session:
            await session.get("http://127.0.0.1:9/")

    with pytest.raises(RuntimeError, match="a bug"):
        on_uvloop(dial)


def test_every_client_session_of_the_project_dials_with_the_connector() -> None:
    """The bug is under every aiohttp dial on uvloop, so no session may use aiohttp's own."""
    source = Path(workflowplane.__file__).parent
    unguarded = []
    for path in sorted(source.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            where = f"{path.relative_to(source)}:{node.lineno}"
            keywords = {keyword.arg for keyword in node.keywords}
            if node.func.attr == "ClientSession" and "connector" not in keywords:
                unguarded.append(f"{where} ClientSession without a connector")
            if node.func.attr == "TCPConnector" and path.name != "dialing.py":
                unguarded.append(f"{where} aiohttp's TCPConnector")
    assert unguarded == []
