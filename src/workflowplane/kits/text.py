"""Text that came from a peer, a tenant or an exception, made short enough to keep."""

from __future__ import annotations


def shortened(text: str, limit: int) -> str:
    """``text`` as shown in a log line or an answer: its first ``limit`` characters and, when
    it is longer, how long it was."""
    if len(text) <= limit:
        return text
    return text[:limit] + _cut(text)


def decoded(data: bytes | bytearray, limit: int) -> str:
    """Bytes from a peer as text (UTF-8, bad bytes replaced) in at most ``limit``
    characters, a note of the size included when cut: only what is shown is decoded, so a
    peer's 64 MiB costs no 64 MiB string."""
    if len(data) <= limit:
        return bytes(data).decode(errors="replace")
    note = f"... ({len(data)} bytes)"
    return (bytes(data[: max(0, limit - len(note))]).decode(errors="replace") + note)[:limit]


def within(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` characters, the same note included: for a schema's
    maxLength, where one character over makes the API server refuse the whole write."""
    if len(text) <= limit:
        return text
    note = _cut(text)
    return (text[: max(0, limit - len(note))] + note)[:limit]


def _cut(text: str) -> str:
    return f"... ({len(text)} characters)"
