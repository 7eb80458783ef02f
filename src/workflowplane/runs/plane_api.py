"""The plane's Kubernetes API as a run sees it: every call goes through the gateway's proxy,
on a connection authorized for the run's plane CR — never a direct connection.

Raw JSON in and out (no models): the objects are whatever the workflow definition renders.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import urlencode

from workflowplane.api.constants import PLANE_TYPE
from workflowplane.kits.errors import Failure, PermanentError, TransientError
from workflowplane.kits.text import shortened
from workflowplane.protocol.gateway_client import ProxyResponse, TunnelAPI, UnroutablePath
from workflowplane.protocol.http import GATEWAY_ERROR_HEADER
from workflowplane.runs.plan import PlaneTarget

TRANSIENT_STATUSES = {0, 403, 404, 408, 429, 500, 502, 503, 504}


MAX_ANSWER_MESSAGE_CHARS = 1024
LIST_PAGE = 250  # Argo Workflows with their node status are large; keep a page well in bounds


class WatchExpired(Exception):
    """The watch's resourceVersion is too old (410): list again."""


def request_error(response: ProxyResponse, what: str) -> Failure:
    """The error for a non-success response, with the API server's own message.

    Stricter than the generic mapping for a run: 403 and 404 from the gateway mean "no agent
    authorized or not there yet", which an agent connecting cures."""
    try:
        message = str(response.json().get("message") or "")
    except (ValueError, AttributeError):
        message = ""
    # the plane's text, shown in the run's conditions and logged on every retry: bounded
    message = message or response.body[:200].decode(errors="replace")
    message = shortened(message, MAX_ANSWER_MESSAGE_CHARS)
    from_gateway = any(k.lower() == GATEWAY_ERROR_HEADER.lower() for k in response.headers)
    if response.status == 403 and not from_gateway:
        transient = False  # the plane's RBAC refused it: retrying will not help
    else:
        transient = response.status in TRANSIENT_STATUSES or response.status >= 500
    error = TransientError if transient else PermanentError
    return error(f"{what}: HTTP {response.status}: {message}", status=response.status)


def _group_path(api_version: str) -> str:
    """``/api/v1`` for the core group, ``/apis/<group>/<version>`` for the others."""
    return f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"


class Discovery:
    """kind → (plural, namespaced) per plane, learnt from the plane's discovery documents."""

    def __init__(self) -> None:
        self._known: dict[tuple[str, str, str], tuple[str, bool]] = {}

    def get(self, plane_id: str, api_version: str, kind: str) -> tuple[str, bool] | None:
        return self._known.get((plane_id, api_version, kind))

    def learn(self, plane_id: str, api_version: str, resources: list[Mapping[str, Any]]) -> None:
        for resource in resources:
            if "/" not in resource.get("name", ""):
                key = (plane_id, api_version, str(resource.get("kind")))
                self._known[key] = (str(resource["name"]), bool(resource.get("namespaced")))


class PlaneAPI:
    def __init__(self, gateway: TunnelAPI, target: PlaneTarget, discovery: Discovery) -> None:
        self._gateway = gateway
        self._target = target
        self._discovery = discovery

    def _route(self, path: str) -> dict[str, Any]:
        """The proxy route: this plane CR's connections only."""
        target = self._target
        return {
            "plane_type": PLANE_TYPE,
            "plane_id": target.plane_id,
            "cr_namespace": target.namespace,
            "cr_name": target.name,
            "path": path,
        }

    async def request(
        self, method: str, path: str, *, query: str = "", body: Any = None, what: str = ""
    ) -> ProxyResponse:
        try:
            response = await self._gateway.proxy(
                method,
                **self._route(path),
                query=query,
                body=None if body is None else json.dumps(body).encode(),
            )
        except UnroutablePath:
            raise  # no retry sends it: it is the name's fault, not the gateway's
        except Failure as exc:
            raise TransientError(f"{what or path}: {exc.message}", status=exc.status) from exc
        return response

    async def path_of(
        self, api_version: str, kind: str, namespace: str | None, name: str = ""
    ) -> str:
        plural, namespaced = await self._resource(api_version, kind)
        base = _group_path(api_version)
        scope = f"/namespaces/{namespace}" if namespaced and namespace else ""
        return f"{base}{scope}/{plural}" + (f"/{name}" if name else "")

    async def _resource(self, api_version: str, kind: str) -> tuple[str, bool]:
        plane_id = self._target.plane_id
        known = self._discovery.get(plane_id, api_version, kind)
        if known is None:
            path = _group_path(api_version)
            what = f"discovery of {api_version}"
            response = await self.request("GET", path, what=what)
            if response.status not in (200, 404):
                raise request_error(response, what)
            if response.status == 200:
                self._discovery.learn(plane_id, api_version, response.json().get("resources") or [])
            known = self._discovery.get(plane_id, api_version, kind)
        if known is None:
            raise TransientError(
                f"the plane does not serve {kind} in {api_version} (is its CRD installed there?)",
                status=404,
            )
        return known

    async def create(self, obj: Mapping[str, Any]) -> bool:
        """True when created, False when it already existed (creation is idempotent)."""
        meta = obj["metadata"]
        path = await self.path_of(obj["apiVersion"], obj["kind"], meta.get("namespace"))
        what = f"create {obj['kind']} {meta.get('namespace', '')}/{meta['name']}".replace(" /", " ")
        response = await self.request("POST", path, body=obj, what=what)
        if response.status in (200, 201, 202):
            return True
        if response.status == 409:
            return False
        raise request_error(response, what)

    async def get(self, ref: Mapping[str, Any]) -> dict[str, Any] | None:
        path = await self.path_of(ref["apiVersion"], ref["kind"], ref.get("namespace"), ref["name"])
        response = await self.request("GET", path, what=f"get {ref['kind']} {ref['name']}")
        if response.status == 404:
            return None
        if response.status != 200:
            raise request_error(response, f"get {ref['kind']} {ref['name']}")
        try:
            found = response.json()
        except ValueError:  # not JSON, or not UTF-8
            found = None
        if not isinstance(found, dict):
            # The plane's answer (its agent's) is untrusted: an unreadable one is an error of
            # the request, not a crash of every pass that reads it.
            what = f"get {ref['kind']} {ref['name']}"
            raise TransientError(f"{what}: the plane's answer is not a JSON object", status=502)
        return found

    async def delete(self, ref: Mapping[str, Any], *, foreground: bool = False) -> None:
        """Delete; an object already gone is fine. A ref with a ``uid`` deletes only the
        object of that UID (a precondition): one of the same name made since (409) is not
        this ref's, and is left. ``foreground``: the object stays (terminating) until the
        plane's garbage collector has deleted what it owns, so nothing it owns outlives it."""
        what = f"delete {ref['kind']} {ref['name']}"
        try:
            path = await self.path_of(
                ref["apiVersion"], ref["kind"], ref.get("namespace"), ref["name"]
            )
        except Failure as exc:
            if exc.status == 404:  # the kind is not served there: nothing of it can exist
                return
            raise
        body: dict[str, Any] = {"propagationPolicy": "Foreground" if foreground else "Background"}
        if ref.get("uid"):
            body["preconditions"] = {"uid": ref["uid"]}
        response = await self.request("DELETE", path, body=body, what=what)
        if response.status in (200, 202, 404) or (response.status == 409 and ref.get("uid")):
            return
        raise request_error(response, what)

    async def list(
        self, api_version: str, kind: str, label_selector: str, *, page_size: int = LIST_PAGE
    ) -> tuple[list[Any], str]:
        """Every matching object, a page at a time (a busy plane's whole list in one answer
        would be too large for the tunnel), and the list's resourceVersion to watch from."""
        path = await self.path_of(api_version, kind, None)
        items: list[Any] = []
        token = ""
        while True:
            query = {"labelSelector": label_selector, "limit": str(page_size)}
            if token:
                query["continue"] = token
            what = f"list {kind}"
            response = await self.request("GET", path, query=urlencode(query), what=what)
            if response.status != 200:
                raise request_error(response, what)
            body = response.json()
            items.extend(body.get("items") or [])
            token = str(body["metadata"].get("continue") or "")
            if not token:
                return items, str(body["metadata"].get("resourceVersion", ""))

    async def stream(self, path: str, query: str) -> AsyncIterator[bytes]:
        """A streamed GET (``watch=true``, ``follow=true``): the body's lines as they arrive;
        a 410 before the stream starts is WatchExpired."""
        try:
            async for line in self._gateway.proxy_stream("GET", **self._route(path), query=query):
                yield line
        except Failure as exc:
            if exc.status == 410:
                raise WatchExpired() from exc
            raise TransientError(f"{path}: {exc.message}", status=exc.status) from exc

    async def watch(
        self, api_version: str, kind: str, label_selector: str, resource_version: str
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """(type, object) events until the server ends the watch; 410 → WatchExpired."""
        path = await self.path_of(api_version, kind, None)
        query = urlencode(
            {
                "watch": "true",
                "labelSelector": label_selector,
                "resourceVersion": resource_version,
                "allowWatchBookmarks": "true",
                "timeoutSeconds": "300",
            }
        )
        async for line in self.stream(path, query):
            if not line.strip():
                continue
            event = json.loads(line)
            if event.get("type") == "ERROR":
                if (event.get("object") or {}).get("code") == 410:
                    raise WatchExpired()
                raise TransientError(
                    f"watch {kind}: {shortened(str(event.get('object')), MAX_ANSWER_MESSAGE_CHARS)}"
                )
            yield str(event.get("type")), event.get("object") or {}
