"""A TLS-terminating byte relay, for ``bench/tunnel.py --peer --floor``: what two Python
processes that do nothing but decrypt and re-encrypt every byte cost on this machine.

    tls_relay.py LISTEN_PORT UPSTREAM_PORT CERT KEY [CLIENT_CERT CLIENT_KEY] [--threads]

Accepts TLS on 127.0.0.1:LISTEN_PORT with CERT/KEY, and for each connection opens TLS to
127.0.0.1:UPSTREAM_PORT (presenting CLIENT_CERT when given, verifying nothing) and copies
bytes both ways. No HTTP, no WebSocket, no framing: a chain of two of these is the floor of
any tunnel made of two Python processes with TLS on each hop. By default it runs as our
gateway and agent do (uvloop, TLS through memory BIOs: every byte is copied into OpenSSL's
buffer and out of it); ``--threads`` uses blocking ``ssl`` sockets, a thread per connection
(OpenSSL reads and writes the socket itself). Prints ``ready`` once listening.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import ssl
import sys
import threading
from typing import cast

import uvloop


def _contexts(argv: list[str]) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(argv[2], argv[3])
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE  # a benchmark's loopback hop
    if len(argv) >= 6:
        client.load_cert_chain(argv[4], argv[5])
    return server, client


class _Half(asyncio.Protocol):
    """One side of a relayed connection; writes what it reads to the other side."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Half | None = None
        self.early: list[bytes] = []  # read before the other side was connected
        self.lost = False
        self.doomed = False  # no upstream: closed as soon as it is connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        if self.doomed:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.peer is None or self.peer.transport is None:
            self.early.append(data)
        else:
            self.peer.transport.write(data)

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


async def _serve_uvloop(port: int, upstream: int, argv: list[str]) -> None:
    server_ssl, client_ssl = _contexts(argv)
    loop = asyncio.get_running_loop()

    dialling: set[asyncio.Task[None]] = set()

    def accepted() -> _Half:
        down = _Half()

        async def dial() -> None:
            try:
                _, up = await loop.create_connection(_Half, "127.0.0.1", upstream, ssl=client_ssl)
            except OSError:
                down.doomed = True
                if down.transport is not None:
                    down.transport.close()
                return
            up.peer, down.peer = down, up
            assert up.transport is not None
            if down.lost:  # the caller left while this was dialled
                up.transport.close()
                return
            for data in down.early:
                up.transport.write(data)
            down.early.clear()

        task = loop.create_task(dial())
        dialling.add(task)
        task.add_done_callback(dialling.discard)
        return down

    server = await loop.create_server(accepted, "127.0.0.1", port, ssl=server_ssl)
    print("ready", flush=True)
    await server.serve_forever()


def _relay(down: ssl.SSLSocket, up: ssl.SSLSocket) -> None:
    """Both directions of one connection in one thread (an SSL object must not be read and
    written from two threads at once), on non-blocking sockets: a readable socket may hold a
    record with no data for the caller (a TLS 1.3 session ticket), and a blocking read would
    then wait for data that only comes after the other side is read."""
    buffer = bytearray(256 * 1024)
    view = memoryview(buffer)
    other = {down: up, up: down}
    for end in (down, up):
        end.setblocking(False)
    try:
        while True:
            ready = [end for end in (down, up) if end.pending()]  # decrypted, not yet read
            if not ready:
                ready, _, _ = select.select([down, up], [], [])
            for source in ready:
                try:
                    count = source.recv_into(buffer)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    continue
                if not count:
                    return
                _send_all(other[source], view[:count])
    except OSError:
        pass
    finally:
        for end in (down, up):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()


def _send_all(sink: ssl.SSLSocket, data: memoryview) -> None:
    """Write all of ``data``, waiting for the socket as OpenSSL asks (the same data again
    after a want-write: OpenSSL may have sent some records of it already)."""
    while data:
        try:
            sent = sink.send(data)
        except ssl.SSLWantWriteError:
            select.select([], [sink], [])
            continue
        except ssl.SSLWantReadError:
            select.select([sink], [], [])
            continue
        data = data[sent:]


def _serve_threads(port: int, upstream: int, argv: list[str]) -> None:
    server_ssl, client_ssl = _contexts(argv)

    def relay(conn: socket.socket) -> None:
        down = server_ssl.wrap_socket(conn, server_side=True)
        up = client_ssl.wrap_socket(socket.create_connection(("127.0.0.1", upstream)))
        for end in (down, up):
            end.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _relay(down, up)

    listener = socket.create_server(("127.0.0.1", port))
    print("ready", flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=relay, args=(conn,), daemon=True).start()


def main() -> None:
    args = [arg for arg in sys.argv[1:] if arg != "--threads"]
    port, upstream = int(args[0]), int(args[1])
    if "--threads" in sys.argv:
        _serve_threads(port, upstream, args)
    else:
        uvloop.run(_serve_uvloop(port, upstream, args))


if __name__ == "__main__":
    main()
