"""The agent's few calls to its own API server (its Secret, its consent ConfigMap), as JSON
over the upstream's pooled session and credentials.

No typed client: lightkube would add its HTTP client and models to the agent's memory for
five calls. An answer that is not a success raises ``kits.failures`` errors with its status.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

from workflowplane.agent.upstream import Upstream, read_bounded
from workflowplane.kits.failures import from_status

FIELD_MANAGER = "cluster-agent"
ANSWER_BYTES = 4 << 20  # a Secret or ConfigMap is at most 1 MiB
CALL_SECONDS = 30.0
JSON = {"Content-Type": ["application/json"], "Accept": ["application/json"]}
MERGE_PATCH = {"Content-Type": ["application/merge-patch+json"], "Accept": ["application/json"]}


def core_path(namespace: str, plural: str, name: str = "") -> str:
    """``/api/v1/namespaces/<ns>/<plural>[/<name>]``; ``namespaces`` itself without ``ns``."""
    base = "/api/v1/namespaces" + (f"/{namespace}/{plural}" if plural != "namespaces" else "")
    return f"{base}/{name}" if name else base


class AgentKube:
    """get, create, merge-patch and watch of core objects; ``close`` keeps the session (the
    upstream's)."""

    def __init__(self, upstream: Upstream) -> None:
        self._upstream = upstream

    async def _call(
        self, method: str, path: str, body: Any = None, headers: dict[str, list[str]] = JSON
    ) -> dict[str, Any]:
        query = urlencode({"fieldManager": FIELD_MANAGER}) if method in ("POST", "PATCH") else ""
        data = json.dumps(body).encode() if body is not None else b""
        opened = self._upstream.open(method, path, query, headers, data, CALL_SECONDS)
        async with opened as response:
            content = await read_bounded(response, ANSWER_BYTES)
            answer = _json(content)
            if response.status >= 300:
                message = answer.get("message") or content[:200].decode(errors="replace")
                raise from_status(response.status, f"{method} {path}: {message}", answer)
            return answer

    async def get(self, path: str) -> dict[str, Any]:
        return await self._call("GET", path)

    async def create(self, collection: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._call("POST", collection, body)

    async def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._call("PATCH", path, body, MERGE_PATCH)

    async def watch(self, collection: str, name: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """(type, object) of the one object ``name`` until the server ends the watch; the first
        event is the object as it is now. An ERROR event raises with its status."""
        query = urlencode({"watch": "true", "fieldSelector": f"metadata.name={name}"})
        async with contextlib.aclosing(self._upstream.stream("GET", collection, query, JSON)) as (
            stream
        ):
            head = await anext(stream)
            if isinstance(head, bytes) or head.status >= 300:
                raise from_status(getattr(head, "status", 0), f"watch {collection}: refused")
            async for line in _lines(stream):
                event = _json(line)
                kind, item = str(event.get("type", "")), event.get("object") or {}
                if kind == "ERROR":
                    raise from_status(int(item.get("code") or 0), f"watch {collection}: {item}")
                yield kind, item

    async def close(self) -> None:
        return None


async def _lines(chunks: AsyncIterator[Any]) -> AsyncIterator[bytes]:
    """Newline-separated events, each bounded in size."""
    pending = b""
    async for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line.strip():
                yield line
        if len(pending) > ANSWER_BYTES:
            raise from_status(0, f"a watch event over {ANSWER_BYTES} bytes")


def _json(content: bytes) -> dict[str, Any]:
    try:
        value = json.loads(content) if content.strip() else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
