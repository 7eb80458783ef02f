"""Large WebSocket frames from the agent without aiohttp's two copies of each.

The agent is the WebSocket client, so it must mask what it sends. aiohttp's writer copies
every message into a new bytearray to mask it, then concatenates header, mask and payload
into a third buffer: for a 1 MiB chunk of a large answer that is two copies of a megabyte
per chunk, a good part of the agent's CPU for a 10 MB list. A message the agent hands over
as a ``bytearray`` is its own (built for this send and dropped after it), so it is masked in
place and written after its header with ``writelines`` (uvloop's and asyncio's TLS
transports take the pieces without joining them). Everything else goes through aiohttp's
own path unchanged.

This patches one method of aiohttp's ``WebSocketWriter`` instance (its ``transport``,
``use_mask``, ``get_random_bits`` and ``_output_size``), pinned with aiohttp;
tests/unit/agent/test_ws_writer.py checks the frames against aiohttp's reader.
"""

from __future__ import annotations

import struct
from typing import Any, Final

from aiohttp import ClientConnectionResetError
from aiohttp._websocket.helpers import websocket_mask

IN_PLACE_FROM: Final = 64 * 1024  # smaller messages: aiohttp's copies cost nothing here
_HEADER: Final = struct.Struct("!BBQL")  # fin+opcode, mask bit + 127, length, mask key
_FIN, _MASKED_LONG = 0x80, 0x80 | 127


def mask_in_place(writer: Any) -> None:
    """Make ``writer`` (a client ``WebSocketWriter``) mask large bytearray messages in place."""
    if not getattr(writer, "use_mask", False):
        return
    aiohttp_write = writer._write_websocket_frame

    def write_frame(message: bytes | bytearray, opcode: int, rsv: int) -> None:
        if not isinstance(message, bytearray) or rsv or len(message) < IN_PLACE_FROM:
            aiohttp_write(message, opcode, rsv)
            return
        if writer.transport.is_closing():
            raise ClientConnectionResetError("Cannot write to closing transport")
        key = writer.get_random_bits()
        header = _HEADER.pack(_FIN | opcode, _MASKED_LONG, len(message), key)
        websocket_mask(header[-4:], message)
        writer.transport.writelines((header, message))
        writer._output_size += len(header) + len(message)

    writer._write_websocket_frame = write_frame
