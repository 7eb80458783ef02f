"""Watch-fed cache of every plane CR and its client CA: what admission checks against.

Both plane kinds are listed once and then watched, and so are Secrets (only those some CR
references are kept), so admitting an agent never lists anything. ``on_change`` fires when
the set of CAs changes, so the public listener can rebuild its TLS trust.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import Secret

from workflowplane.api import (
    AnyPlane,
    ClientCAError,
    ClusterWorkflowPlaneResource,
    InvalidManifest,
    SecretLocation,
    WorkflowPlaneResource,
    ca_from_secret_data,
    client_ca_location,
    cr_key,
    decode_plane,
    effective_plane_id,
)
from workflowplane.pki import CertificateRejected, verify_client_certificate

log = logging.getLogger(__name__)
RESTART_DELAY = 2.0


@dataclass(frozen=True)
class PlaneEntry:
    key: str
    kind: str
    namespace: str | None
    name: str
    plane_id: str
    inline_ca: bytes | None
    location: SecretLocation | None


def entry_of(plane: AnyPlane) -> PlaneEntry:
    inline = plane.spec.cluster_agent.client_ca.value
    try:
        location = client_ca_location(plane)
    except ClientCAError:
        location = None
    namespace = plane.metadata.namespace if plane.kind == "WorkflowPlane" else None
    return PlaneEntry(
        cr_key(plane),
        plane.kind,
        namespace,
        plane.metadata.name,
        effective_plane_id(plane),
        inline.encode() if inline else None,
        location,
    )


class PlaneCache:
    def __init__(self, client: AsyncClient, on_change: Callable[[], None] = lambda: None):
        self._client = client
        self._on_change = on_change
        self.entries: dict[str, PlaneEntry] = {}
        self._secrets: dict[tuple[str, str], dict[str, str]] = {}
        self.synced = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    def ca_of(self, entry: PlaneEntry) -> bytes:
        """The CR's CA PEM from the cache; ClientCAError when it is not there."""
        if entry.inline_ca is not None:
            return entry.inline_ca
        if entry.location is None:
            raise ClientCAError("ClientCANotFound", "client CA Secret has no namespace")
        data = self._secrets.get((entry.location.namespace, entry.location.name))
        if data is None:
            raise ClientCAError(
                "ClientCANotFound",
                f"Secret {entry.location.namespace}/{entry.location.name} not found",
            )
        return ca_from_secret_data(data, entry.location)

    def for_plane(self, plane_id: str) -> list[PlaneEntry]:
        return [e for e in self.entries.values() if e.plane_id == plane_id]

    def all_cas(self) -> bytes:
        """Every readable CA, concatenated: the TLS trust union for the public listener."""
        pems: list[bytes] = []
        for entry in self.entries.values():
            try:
                pems.append(self.ca_of(entry).strip() + b"\n")
            except ClientCAError:
                continue
        return b"".join(sorted(set(pems)))

    def authorize(self, plane_id: str, leaf: x509.Certificate) -> tuple[set[str], dict[str, str]]:
        """CR keys whose CA verifies ``leaf`` (each CA separately), and why the others refuse."""
        granted: set[str] = set()
        refused: dict[str, str] = {}
        for entry in self.for_plane(plane_id):
            try:
                verify_client_certificate([leaf], self.ca_of(entry))
                granted.add(entry.key)
            except (ClientCAError, CertificateRejected) as exc:
                refused[entry.key] = str(exc)
        return granted, refused

    def upsert(self, entry: PlaneEntry) -> None:
        self.entries[entry.key] = entry
        self._on_change()

    def remove(self, key: str) -> None:
        if self.entries.pop(key, None) is not None:
            self._on_change()

    def put_secret(self, namespace: str, name: str, data: dict[str, str] | None) -> None:
        if data is None:
            self._secrets.pop((namespace, name), None)
        else:
            self._secrets[(namespace, name)] = data
        self._on_change()

    def _referenced(self, namespace: str, name: str) -> bool:
        return any(
            e.location and (e.location.namespace, e.location.name) == (namespace, name)
            for e in self.entries.values()
        )

    async def refresh_secret(self, location: SecretLocation) -> None:
        """Read one Secret now (notify must not trust a cache that may lag)."""
        try:
            secret = await self._client.get(Secret, location.name, namespace=location.namespace)
            self.put_secret(location.namespace, location.name, secret.data or {})
        except ApiError as exc:
            if exc.status.code != 404:
                raise
            self.put_secret(location.namespace, location.name, None)

    async def run(self) -> None:
        await asyncio.gather(
            self._follow_planes(WorkflowPlaneResource),
            self._follow_planes(ClusterWorkflowPlaneResource),
            self._follow_secrets(),
        )

    async def _follow_planes(self, resource: Any) -> None:
        namespaced = resource is WorkflowPlaneResource
        while True:
            try:
                lister: Any = self._client.list
                async for obj in lister(resource, namespace="*" if namespaced else None):
                    self._apply_plane("ADDED", obj.to_dict(), resource)
                if resource is ClusterWorkflowPlaneResource:
                    self.synced.set()
                watcher: Any = self._client.watch
                async for event, obj in watcher(resource, namespace="*" if namespaced else None):
                    self._apply_plane(event, obj.to_dict(), resource)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a watch breaks; start it again
                log.warning("watch of %s broke (%s); restarting", resource.__name__, exc)
            await asyncio.sleep(RESTART_DELAY)

    def _apply_plane(self, event: str, data: dict[str, Any], resource: Any) -> None:
        data.setdefault("kind", resource.__name__)
        meta = data["metadata"]
        key = f"{meta.get('namespace') or ''}/{meta['name']}"
        if event == "DELETED":
            self.remove(key)
            return
        try:
            entry = entry_of(decode_plane(data))
        except InvalidManifest as exc:
            log.warning("ignoring invalid plane %s: %s", key, exc)
            return
        self.upsert(entry)
        location = entry.location
        if location and (location.namespace, location.name) not in self._secrets:
            task = asyncio.create_task(self.refresh_secret(location))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _follow_secrets(self) -> None:
        while True:
            try:
                watcher: Any = self._client.watch
                async for event, secret in watcher(Secret, namespace="*"):
                    meta = secret.metadata
                    if not self._referenced(meta.namespace, meta.name):
                        continue
                    gone = event == "DELETED"
                    self.put_secret(meta.namespace, meta.name, None if gone else secret.data or {})
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a watch breaks; start it again
                log.warning("watch of Secrets broke (%s); restarting", exc)
            await asyncio.sleep(RESTART_DELAY)
