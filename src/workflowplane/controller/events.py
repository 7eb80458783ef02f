"""Kubernetes Events for plane transitions, posted with lightkube (works from any task)."""

from __future__ import annotations

import logging
import uuid
from typing import Any, Literal

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.core_v1 import EventSource, ObjectReference
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Event

from workflowplane.kits.clock import utcnow

log = logging.getLogger(__name__)
COMPONENT = "workflowplane-controller"
EventType = Literal["Normal", "Warning"]


class EventRecorder:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def record(
        self, obj: dict[str, Any], type_: EventType, reason: str, message: str
    ) -> None:
        """Best effort: an event that cannot be posted is logged, never fails a reconcile."""
        meta = obj["metadata"]
        namespace = meta.get("namespace") or "default"
        now = utcnow()
        event = Event(
            metadata=ObjectMeta(
                name=f"{_prefix(meta['name'])}.{uuid.uuid4().hex[:12]}", namespace=namespace
            ),
            involvedObject=ObjectReference(
                apiVersion=obj.get("apiVersion"),
                kind=obj.get("kind"),
                name=meta["name"],
                namespace=meta.get("namespace"),
                uid=meta.get("uid"),
                resourceVersion=meta.get("resourceVersion"),
            ),
            type=type_,
            reason=reason,
            message=message[:1024],
            count=1,
            firstTimestamp=now,
            lastTimestamp=now,
            source=EventSource(component=COMPONENT),
            reportingComponent=COMPONENT,
        )
        try:
            await self._client.create(event)
        except ApiError as exc:
            log.warning("could not post event %s for %s: %s", reason, meta["name"], exc)


def _prefix(name: str) -> str:
    """The CR's name cut so that it and the 13-character suffix fit an object name (253): a
    CR named near the limit had every Event refused. A cut ending in '-' or '.' is trimmed."""
    return name[:240].rstrip("-.")
