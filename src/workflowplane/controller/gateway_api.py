"""What the controller needs from the cluster gateway's internal API (a structural type).

``workflowplane.protocol.gateway_client.GatewayClient`` satisfies it; tests may pass another object.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

from workflowplane.protocol.gateway_client import TunnelAPI


class GatewayAPI(TunnelAPI, Protocol):
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

    def events(self) -> AsyncIterator[Mapping[str, Any]]: ...
