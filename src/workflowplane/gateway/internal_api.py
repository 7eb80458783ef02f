"""The internal listener's control API: notify, status, reconnect, and connection events."""

from __future__ import annotations

import asyncio
import json
import logging

from aiohttp import web

from workflowplane.api import cr_key_of
from workflowplane.gateway.connections import ConnectionManager, Reverification
from workflowplane.gateway.kube_proxy import k8s_status
from workflowplane.gateway.plane_cache import PlaneCache
from workflowplane.kits.errors import KUBE_READ_ERRORS

log = logging.getLogger(__name__)
NOTIFY_EVENTS = frozenset({"created", "updated", "deleted"})
KEEPALIVE_SECONDS = 15


def notify_answer(event: str, result: Reverification) -> dict[str, object]:
    """OpenChoreo's ``PlaneNotificationResponse``: ``revalidate`` with the grants and
    revocations for created/updated, ``disconnect`` with the connections closed for deleted.
    Its other fields are ours to add (Go's struct has them all, omitempty): a revalidation
    that leaves a connection authorized for nothing closes it, and deleted revokes one CR."""
    counts = {
        "authorizationsGranted": result.granted,
        "authorizationsRevoked": result.revoked,
        "disconnectedAgents": result.disconnected,
    }
    action = "disconnect" if event == "deleted" else "revalidate"
    return {"success": True, "action": action, **counts}


def _notify_problem(payload: object) -> str:
    """Why a notify body cannot be acted on, or "" (a JSON object of strings, as Go's
    ``PlaneNotification`` decodes it; a name, except for ``deleted``)."""
    if not isinstance(payload, dict):
        return "notify's body must be a JSON object"
    fields = ("planeType", "planeID", "event", "namespace", "name")
    # a null is "", as Go decodes it into a string field (every read below takes it so)
    wrong = [k for k in fields if not isinstance(payload.get(k), str | None)]
    if wrong:
        return f"notify's {', '.join(wrong)} must be strings"
    needed: tuple[str, ...] = ("planeType", "planeID", "event")
    needed += () if payload.get("event") == "deleted" else ("name",)
    missing = [k for k in needed if not payload.get(k)]
    if missing or payload["event"] not in NOTIFY_EVENTS:
        return (
            f"notify needs planeType, planeID, event in {sorted(NOTIFY_EVENTS)} and, unless "
            f"deleted, name (missing: {', '.join(missing) or 'none'})"
        )
    return ""


class InternalAPI:
    """``/api/v1/planes/...`` for the controller and the CLI (mTLS with the internal CA).

    A thin HTTP layer: notify reads the changed CR afresh into the plane cache and lets the
    connection manager re-verify; status, reconnect and events read or act on the manager.
    """

    def __init__(self, connections: ConnectionManager, planes: PlaneCache) -> None:
        self._connections = connections
        self._planes = planes

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/api/v1/planes/notify", self.notify),
            web.get("/api/v1/planes/status", self.all_status),
            web.get("/api/v1/planes/events", self.events),
            web.get("/api/v1/planes/{type}/{id}/status", self.plane_status),
            web.post("/api/v1/planes/{type}/{id}/reconnect", self.reconnect),
        ]

    async def notify(self, request: web.Request) -> web.Response:
        """A CR was created, updated or deleted: grant or revoke it on every connection.
        ``deleted`` without a CR named closes every connection of the plane, as OpenChoreo's
        gateway does for any ``deleted`` (its agents reconnect and are admitted afresh)."""
        try:
            payload = await request.json()
        except ValueError:
            return k8s_status(400, "body must be JSON")
        problem = _notify_problem(payload)
        if problem:
            return k8s_status(400, problem)
        plane_type, plane_id, event = payload["planeType"], payload["planeID"], payload["event"]
        if not payload.get("name"):  # deleted: checked above
            closed = await self._connections.close_plane(plane_type, plane_id, b"plane deleted")
            return web.json_response(notify_answer(event, Reverification(0, 0, closed)))
        namespace = payload.get("namespace") or None
        key = cr_key_of(namespace, payload["name"])
        if event == "deleted":
            ca = await self._ca_after_deletion(namespace, payload["name"], key)
        else:
            try:
                ca = await self._planes.fresh_ca(namespace, payload["name"])
            except KUBE_READ_ERRORS as exc:
                return k8s_status(503, f"cannot read {key} right now: {exc}", "ServiceUnavailable")
        # The CR's planeID as read, not the notify's: a CR whose planeID changed, or a
        # namesake made since a deletion, must be judged where requests for it go.
        entry = self._planes.entries.get(key)
        where = entry.plane_id if entry is not None else plane_id
        result = await self._connections.reverify(plane_type, where, key, ca)
        return web.json_response(notify_answer(event, result))

    async def _ca_after_deletion(self, namespace: str | None, name: str, key: str) -> bytes | None:
        """None, unless a CR of that name was made since (this replica's notify came late:
        another replica answered it first, and this one's watch already holds the new CR):
        then that one's CA, read now, so its agents go on serving it. The deleted CR itself
        may still be there, terminating: the controller notifies before it lets it go. A
        read that fails revokes, as a deletion always did."""
        try:
            return await self._planes.fresh_ca(namespace, name)
        except KUBE_READ_ERRORS as exc:
            log.warning("notify: %s deleted; revoking it unread (cannot read it: %s)", key, exc)
            self._planes.remove(key)
            return None

    async def plane_status(self, request: web.Request) -> web.Response:
        """The plane's agents; with a CR named, only what that CR's own CA vouches for
        (``consentRefused``, ``unrestrictedSharedCA`` too: docs/security.md). The plane-wide
        count includes other tenants' agents and must not decide a CR's condition."""
        name = request.query.get("name")
        key = cr_key_of(request.query.get("namespace") or None, name) if name else None
        info = request.match_info
        return web.json_response(self._connections.status(info["type"], info["id"], key))

    async def all_status(self, _request: web.Request) -> web.Response:
        planes = self._connections.all_status()
        replica = self._connections.replica
        return web.json_response({"planes": planes, "total": len(planes), "replica": replica})

    async def reconnect(self, request: web.Request) -> web.Response:
        info = request.match_info
        closed = await self._connections.close_plane(
            info["type"], info["id"], b"reconnect requested"
        )
        return web.json_response({"success": True, "disconnectedAgents": closed})

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Newline-delimited JSON connection events; a blank line every 15 s keeps it honest."""
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        queue = self._connections.subscribe()
        try:
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), timeout=KEEPALIVE_SECONDS)
                    await response.write(json.dumps(event).encode() + b"\n")
                except TimeoutError:
                    await response.write(b"\n")
        except (ConnectionResetError, asyncio.CancelledError):
            # The subscriber went away, or the gateway stops: returning (not re-raising) lets
            # aiohttp end the chunked body, so a subscriber still there sees a clean end.
            pass
        finally:
            self._connections.unsubscribe(queue)
        return response
