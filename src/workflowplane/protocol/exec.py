"""Exec and attach streams: the tunnel's stream bytes and Kubernetes' channel protocol.

On the tunnel (OpenChoreo's exec protocol, ``internal/cluster-agent/exec.go``) every stream
chunk's ``data`` starts with a stream byte: 0 stdin, 1 stdout, 2 stderr, 3 resize (JSON
``{"width", "height"}``); a stdin chunk of the byte alone closes stdin. The agent's first chunk
is ``[1]`` ("started"); its ``isClose`` ends the stream, with the error as ``data`` when there
is one. Kubernetes' WebSocket protocol (``v5.channel.k8s.io``/``v4``, what kubectl and the API
server speak) has channels 0 stdin, 1 stdout, 2 stderr, 3 error (a ``Status``), 4 resize
(``{"Width", "Height"}``), and in v5 ``[255, channel]`` closes a channel. Gateway and agent
translate between the two with these functions, so both ends agree byte for byte.
"""

from __future__ import annotations

import json
import re
from typing import Any

STDIN, STDOUT, STDERR, RESIZE = 0, 1, 2, 3  # tunnel stream bytes
K8S_ERROR, K8S_RESIZE, K8S_CLOSE = 3, 4, 255  # Kubernetes channels that differ
K8S_V5, K8S_V4 = "v5.channel.k8s.io", "v4.channel.k8s.io"
K8S_PROTOCOLS = (K8S_V5, K8S_V4)
STARTED = bytes([STDOUT])
# What OpenChoreo's gateway puts in the stream init for exec (its agent ignores it).
UPGRADE_PROTO = "SPDY/3.1"
# The only upgrades carried: a pod's exec or attach, the namespace (a DNS label) and the pod
# (a DNS subdomain) by Kubernetes' own rules, so that no segment can be read as another one,
# a query or a fragment (``%2F``, ``?``, ``#``, ``..``). Matched whole (``fullmatch``).
POD_STREAM = re.compile(
    r"/api/v1/namespaces/[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?"
    r"/pods/[a-z0-9](?:[-a-z0-9.]{0,251}[a-z0-9])?/(?:exec|attach)"
)


MAX_RESIZE_BYTES = 256  # {"Width": 65535, "Height": 65535} is 32


def _size(payload: bytes, width: str, height: str) -> dict[str, int] | None:
    """A resize's width and height, or None for anything else: a payload over
    ``MAX_RESIZE_BYTES`` (no deep nesting to recurse into), ``1e999`` (an OverflowError)."""
    if len(payload) > MAX_RESIZE_BYTES:
        return None
    try:
        size: Any = json.loads(payload)
        return {"w": int(size[width]), "h": int(size[height])}
    except (ValueError, TypeError, KeyError, OverflowError, RecursionError):
        return None


def k8s_to_tunnel(message: bytes) -> bytes | None:
    """A Kubernetes channel message as tunnel stream data; None when it has no tunnel meaning
    (an empty message, the error channel, an unknown channel, a bad resize)."""
    if not message:
        return None
    channel, payload = message[0], message[1:]
    if channel in (STDIN, STDOUT, STDERR):
        return message if payload else None
    if channel == K8S_RESIZE:
        size = _size(payload, "Width", "Height")
        if size is None:
            return None
        return bytes([RESIZE]) + json.dumps({"width": size["w"], "height": size["h"]}).encode()
    if channel == K8S_CLOSE and payload[:1] == bytes([STDIN]):
        return bytes([STDIN])  # stdin closed: the byte alone
    return None


def tunnel_to_k8s(data: bytes, *, v5: bool) -> bytes | None:
    """Tunnel stream data as a Kubernetes channel message; None when it has no channel."""
    if not data:
        return None
    stream, payload = data[0], data[1:]
    if stream in (STDOUT, STDERR):
        return data if payload else None  # ``[1]`` alone is "started"
    if stream == STDIN:
        if payload:
            return data
        return bytes([K8S_CLOSE, STDIN]) if v5 else None
    if stream == RESIZE:
        size = _size(payload, "width", "height")
        if size is None:
            return None
        return bytes([K8S_RESIZE]) + json.dumps({"Width": size["w"], "Height": size["h"]}).encode()
    return None


def status(message: str = "", *, reason: str = "InternalError", code: int = 500) -> bytes:
    """A ``Status`` for the error channel: success without a message, else a failure."""
    if not message:
        return json.dumps({"metadata": {}, "status": "Success"}).encode()
    body = {"metadata": {}, "status": "Failure", "message": message, "reason": reason}
    return json.dumps({**body, "code": code}).encode()


MAX_STATUS_BYTES = 64 * 1024  # an exec's Status is a few hundred bytes


def parse_status(data: bytes) -> dict[str, Any] | None:
    """``data`` as a Kubernetes ``Status`` object, or None when it is not one (too large,
    or nested too deeply for the parser: a peer's bytes must not raise out of here)."""
    if len(data) > MAX_STATUS_BYTES:
        return None
    try:
        found = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if isinstance(found, dict) and found.get("status") in ("Success", "Failure"):
        return found
    return None


def close_status(data: bytes | None) -> bytes:
    """The error channel's ``Status`` for the agent's ``isClose`` ``data``: none is success,
    a ``Status`` passes as it is (exit codes included), anything else is a failure saying it."""
    if not data:
        return status()
    if parse_status(data) is not None:
        return data
    return status(data.decode(errors="replace"))


def close_reason(data: bytes | None) -> str:
    """A one-line reason for a close frame (at most 123 bytes): the message of ``data``."""
    if not data:
        return ""
    found = parse_status(data)
    text = str(found.get("message", "")) if found else data.decode(errors="replace")
    return text.encode()[:123].decode(errors="ignore")
