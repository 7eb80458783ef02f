"""What the controller needs from the cluster gateway's internal API (a structural type).

``workflowplane.gateway.client.GatewayClient`` satisfies it; tests may pass another object.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol


class GatewayAPI(Protocol):
    async def notify(
        self, *, plane_type: str, plane_id: str, event: str, namespace: str, name: str
    ) -> Mapping[str, Any]: ...

    async def plane_status(
        self,
        plane_type: str,
        plane_id: str,
        *,
        namespace: str | None = None,
        name: str | None = None,
    ) -> Mapping[str, Any]: ...

    async def proxy(
        self,
        method: str,
        *,
        plane_type: str,
        plane_id: str,
        cr_namespace: str | None,
        cr_name: str,
        path: str,
        query: str = "",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any: ...

    def proxy_stream(
        self,
        method: str,
        *,
        plane_type: str,
        plane_id: str,
        cr_namespace: str | None,
        cr_name: str,
        path: str,
        query: str,
    ) -> AsyncIterator[bytes]: ...

    def events(self) -> AsyncIterator[Mapping[str, Any]]: ...
