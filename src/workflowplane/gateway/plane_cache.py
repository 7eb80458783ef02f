"""Watch-fed cache of every plane CR and its client CA: what admission checks against.

Both plane kinds are listed once and then watched, and so are Secrets (only those some CR
references are kept, with their annotations), so admitting an agent never lists anything.
``on_change`` fires when the set of CAs may have changed, so the public listener can rebuild
its TLS trust. A WorkflowPlane may read a Secret of another namespace only if that Secret
consents (``SecretLocation.shared_with_reader``); otherwise its CA is unavailable, with the
same message as a missing Secret.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

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
    cr_key_of,
    decode_plane,
    effective_plane_id,
)
from workflowplane.api.constants import ANNOTATION_CLIENT_CA_SHARED_WITH
from workflowplane.api.kube import get_dict
from workflowplane.kits.errors import KUBE_READ_ERRORS, is_expected
from workflowplane.kits.grouped import Grouped
from workflowplane.kits.tasks import TaskSet
from workflowplane.pki import MAX_BUNDLE_CERTIFICATES, certificate_count, trust_bundle

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
    uid: str | None = None  # which object of that name (one made again has another)


@dataclass(frozen=True)
class CachedSecret:
    """What the cache keeps of a referenced Secret: its data, and the annotations that say
    which other namespaces may read it."""

    data: dict[str, str]
    annotations: Mapping[str, str] = field(default_factory=dict)


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
        plane.metadata.uid or None,
    )


def _watch_broke(what: str, exc: Exception) -> None:
    """A failure of the world is a warning; anything else is a bug and says so with its trace."""
    if is_expected(exc):
        log.warning("watch of %s broke (%s); restarting", what, exc)
    else:
        log.exception("bug: watch of %s raised; restarting", what)


class PlaneCache:
    """The gateway's view of plane CRs and their CAs, kept current by watches.

    It owns the data (entries by CR key, referenced Secrets) and the watch tasks that feed
    it; it decides nothing about connections. The connection manager asks it for the CRs of
    a planeID and each CR's CA; the public listener asks for the union of all CAs.
    """

    def __init__(self, client: AsyncClient, on_change: Callable[[], None] = lambda: None):
        self._client = client
        self._on_change = on_change
        # By CR key, and by planeID: an agent's admission reads its planeID's CRs.
        self._entries: Grouped[str, str, PlaneEntry] = Grouped(lambda e: e.plane_id)
        self.entries = self._entries.by_key
        # And by the Secret holding their CA: every Secret event in the cluster asks whether
        # a CR names it (a scan of every tenant's CR per event before).
        self._by_secret: Grouped[str, tuple[str, str] | None, PlaneEntry] = Grouped(_secret_of)
        self._secrets: dict[tuple[str, str], CachedSecret] = {}
        self.synced = asyncio.Event()
        self._tasks = TaskSet("plane-cache")
        self._judge: Callable[[str, str], None] = lambda key, plane_id: None

    def on_judge_again(self, callback: Callable[[str, str], None]) -> None:
        """Call ``callback(key, planeID)`` when the watches see what admits agents for CR
        ``key`` change: the CR appears, goes, turns invalid, another object takes its name,
        or its CA Secret changes. The controller's notify says the same, but only to the
        replicas it reaches."""
        self._judge = callback

    def _judge_again(self, key: str, plane_id: str) -> None:
        try:
            self._judge(key, plane_id)
        except Exception:  # the cache has changed already: the watch must go on
            log.exception("judging the connections of %s again failed", key)

    def ca_of(self, entry: PlaneEntry) -> bytes:
        """The CR's CA PEM from the cache; ClientCAError when it is not there."""
        if entry.inline_ca is not None:
            return entry.inline_ca
        location = entry.location
        if location is None:
            raise ClientCAError("ClientCANotFound", "client CA Secret has no namespace")
        secret = self._secrets.get((location.namespace, location.name))
        if secret is None or not location.shared_with_reader(secret.annotations):
            raise location.unavailable()
        return ca_from_secret_data(secret.data, location)

    def ca_or_none(self, entry: PlaneEntry | None) -> bytes | None:
        """``ca_of``, None for no CR or no CA it may use."""
        if entry is None:
            return None
        try:
            return self.ca_of(entry)
        except ClientCAError:
            return None

    def for_plane(self, plane_id: str) -> list[PlaneEntry]:
        return list(self._entries.group(plane_id).values())

    def all_cas(self) -> bytes:
        """Every readable CA, concatenated: the TLS trust union for the public listener."""
        pems: list[bytes] = []
        for entry in self.entries.values():
            pem = self.ca_or_none(entry)
            if (
                pem is not None and certificate_count(pem) <= MAX_BUNDLE_CERTIFICATES
            ):  # more admits nobody anyway
                pems.append(pem.strip() + b"\n")
        return b"".join(sorted(set(pems)))

    def upsert(self, entry: PlaneEntry) -> None:
        before = self._entries.by_key.get(entry.key)
        self._entries.put(entry.key, entry)
        self._by_secret.put(entry.key, entry)
        if before is not None:
            self._drop_if_unreferenced(_secret_of(before))
        self._on_change()

    def remove(self, key: str) -> None:
        self._by_secret.pop(key)
        before = self._entries.pop(key)
        if before is not None:
            self._drop_if_unreferenced(_secret_of(before))
            self._on_change()

    def _drop_if_unreferenced(self, secret: tuple[str, str] | None) -> None:
        """A Secret no CR names any more is not kept: its watch events are skipped from now
        on, so a copy kept would go stale, and be trusted when a CR named it again."""
        if secret is not None and not self._by_secret.group(secret):
            self._secrets.pop(secret, None)

    def put_secret(
        self,
        namespace: str,
        name: str,
        data: dict[str, str] | None,
        annotations: Mapping[str, str] | None = None,
    ) -> bool:
        """Keep (or, with ``data`` None, forget) a referenced Secret; whether what is kept
        changed (the TLS trust is rebuilt only then: it is O(every CA), and a tenant may
        edit its Secret's labels at will)."""
        where = (namespace, name)
        before = self._secrets.get(where)
        if data is None:
            self._secrets.pop(where, None)
        else:
            self._secrets[where] = CachedSecret(data, _sharing(annotations))
        if self._secrets.get(where) == before:
            return False
        self._on_change()
        return True

    def _referenced(self, namespace: str, name: str) -> bool:
        return bool(self._by_secret.group((namespace, name)))

    async def refresh_secret(self, location: SecretLocation) -> None:
        """Read one Secret now (notify must not trust a cache that may lag)."""
        await self._read_secret(location.namespace, location.name)

    async def _read_secret(
        self, namespace: str, name: str, *, first: bool = False, judge: bool = False
    ) -> bool:
        """Read one Secret and keep it (404: forget it); whether what is kept changed.
        ``first``: a first read, kept only if the watch has not brought the Secret meanwhile
        (its copy is as new or newer) and a CR still names it."""
        data: dict[str, str] | None = None
        annotations: Mapping[str, str] | None = None
        try:
            secret = await self._client.get(Secret, name, namespace=namespace)
            data, annotations = secret.data or {}, _annotations(secret)
        except ApiError as exc:
            if exc.status.code != 404:
                raise
        if first and ((namespace, name) in self._secrets or not self._referenced(namespace, name)):
            return False
        if judge:
            return self._put_judging(namespace, name, data, annotations)
        return self.put_secret(namespace, name, data, annotations)

    def _put_judging(
        self,
        namespace: str,
        name: str,
        data: dict[str, str] | None,
        annotations: Mapping[str, str] | None,
    ) -> bool:
        """``put_secret``, then the CRs whose CA it changed (what their CA admits by, or
        whether they may read it) are judged again, and only those: a tenant editing its
        Secret's other keys, its labels or annotations, or respelling its PEM, judges
        nobody (each judgement costs the CR's plane's every connection, on the shared
        loop)."""
        users = self._by_secret.group((namespace, name))
        before = {key: _ca_identity(self.ca_or_none(entry)) for key, entry in users.items()}
        changed = self.put_secret(namespace, name, data, annotations)
        if changed:
            for key, entry in list(users.items()):
                if before[key] != _ca_identity(self.ca_or_none(entry)):
                    self._judge_again(key, entry.plane_id)
        return changed

    async def fresh_ca(self, namespace: str | None, name: str) -> bytes | None:
        """The CR's CA read from the API now (not the cache), which is updated on the way;
        None when the CR or its CA is gone, or it is being deleted. ApiError (or a network
        error) when the API cannot say."""
        resource: Any = WorkflowPlaneResource if namespace else ClusterWorkflowPlaneResource
        data = await get_dict(self._client, resource, name, namespace)
        if data is not None and _terminating(data):
            data = None
        if data is None:
            self.remove(cr_key_of(namespace, name))
            return None
        data.setdefault("kind", "WorkflowPlane" if namespace else "ClusterWorkflowPlane")
        try:
            entry = entry_of(decode_plane(data))
        except InvalidManifest:
            self.remove(cr_key_of(namespace, name))  # its old CA must admit nobody now
            return None
        if entry.location is not None:
            await self.refresh_secret(entry.location)
        self.upsert(entry)
        try:
            return self.ca_of(entry)
        except ClientCAError:
            return None

    # ---- watches ------------------------------------------------------------------------

    def start(self) -> None:
        """List and watch both plane kinds and Secrets; ``synced`` is set after the lists."""
        self._tasks.spawn(self._follow_planes(WorkflowPlaneResource), "WorkflowPlanes")
        self._tasks.spawn(self._follow_planes(ClusterWorkflowPlaneResource), "ClusterPlanes")
        self._tasks.spawn(self._follow_secrets(), "Secrets")

    async def close(self) -> None:
        """Stop every watch and Secret read, and wait until they have."""
        await self._tasks.close()

    async def _follow_planes(self, resource: Any) -> None:
        """List, forget what the list lacks (deleted while no watch ran: no event will say
        so), then watch from the list's resourceVersion (no gap between the two)."""
        namespace = "*" if resource is WorkflowPlaneResource else None
        while True:
            try:
                kind = resource.__name__
                held = {k: e.uid for k, e in self.entries.items() if e.kind == kind}
                lister: Any = self._client.list
                listing = lister(resource, namespace=namespace)
                listed = {
                    self._apply_plane("ADDED", obj.to_dict(), resource) async for obj in listing
                }
                for key, uid in held.items():  # not one notify stored during the list
                    entry = self.entries.get(key)
                    if key not in listed and entry is not None and entry.uid == uid:
                        self._forget_from_watch(key)
                if resource is ClusterWorkflowPlaneResource:
                    self.synced.set()
                watcher: Any = self._client.watch
                version = listing.resourceVersion
                async for event, obj in watcher(
                    resource, namespace=namespace, resource_version=version
                ):
                    self._apply_plane(event, obj.to_dict(), resource)
            except Exception as exc:  # noqa: BLE001 - the watch must outlive anything; see _watch_broke
                _watch_broke(resource.__name__, exc)
            await asyncio.sleep(RESTART_DELAY)

    def _apply_plane(self, event: str, data: dict[str, Any], resource: Any) -> str:
        """Apply one event of a plane CR; its key."""
        data.setdefault("kind", resource.__name__)
        meta = data["metadata"]
        key = f"{meta.get('namespace') or ''}/{meta['name']}"
        if event == "DELETED" or _terminating(data):  # a CR being deleted admits nobody
            cached = self.entries.get(key)
            if cached is None or not cached.uid or cached.uid == meta.get("uid"):
                self._forget_from_watch(key)  # else a namesake's, made since (notify read it)
            return key
        try:
            entry = entry_of(decode_plane(data))
        except InvalidManifest as exc:
            # Its previous version (and CA) must not keep admitting agents: forgotten.
            log.warning("ignoring invalid plane %s (no agent is admitted for it): %s", key, exc)
            self._forget_from_watch(key)
            return key
        before = self.entries.get(key)
        self.upsert(entry)
        changed = before is None or _admits_otherwise(before, entry)
        location = entry.location
        unread = location is not None and (location.namespace, location.name) not in self._secrets
        if changed and (before is not None or not unread):
            # now: what admitted a replaced CR's agents is gone (a new CR whose CA is not
            # read yet is judged once it is)
            self._judge_again(key, entry.plane_id)
        if location is not None and unread:
            self._tasks.spawn(self._prefetch_secret(location, changed), f"Secret {location.name}")
        return key

    def _forget_from_watch(self, key: str) -> None:
        before = self.entries.get(key)
        self.remove(key)
        if before is not None:
            self._judge_again(key, before.plane_id)

    def _judge_users_of(self, namespace: str, name: str) -> None:
        """The CRs whose CA this Secret holds are judged again (it changed, or went)."""
        for entry in list(self._by_secret.group((namespace, name)).values()):
            self._judge_again(entry.key, entry.plane_id)

    async def _prefetch_secret(self, location: SecretLocation, judge: bool) -> None:
        """Read a newly referenced Secret now rather than when it next changes; kept only if
        the watch has not brought it meanwhile (its copy is as new or newer). ``judge``: the
        CRs using it are judged again once it is read."""
        namespace, name = location.namespace, location.name
        try:
            await self._read_secret(namespace, name, first=True)
        except KUBE_READ_ERRORS as exc:
            log.warning(
                "cannot read Secret %s/%s yet (%s); it is read again when it changes or on notify",
                namespace,
                name,
                exc,
            )
            return
        if judge:  # a Secret not there gives no CA: the CRs' agents are revoked
            self._judge_users_of(namespace, name)

    async def _read_kept_secrets_again(self) -> None:
        """After a gap in the Secrets watch: each kept Secret read again (one that cannot be
        read now is kept as it was, and read again after the next gap)."""
        for namespace, name in list(self._secrets):
            try:
                await self._read_secret(namespace, name, judge=True)
            except KUBE_READ_ERRORS as exc:
                log.warning("cannot read Secret %s/%s again (%s)", namespace, name, exc)

    async def _follow_secrets(self) -> None:
        """Watch Secrets, keeping the referenced ones. After a gap in the watch each kept one
        is read again: one deleted meanwhile sent no event, and its CA went on admitting."""
        gap = False
        while True:
            try:
                if gap:
                    await self._read_kept_secrets_again()
                watcher: Any = self._client.watch
                async for event, secret in watcher(Secret, namespace="*"):
                    meta = secret.metadata
                    if not self._referenced(meta.namespace, meta.name):
                        continue
                    gone = event == "DELETED"
                    data = None if gone else secret.data or {}
                    self._put_judging(meta.namespace, meta.name, data, _annotations(secret))
            except Exception as exc:  # noqa: BLE001 - the watch must outlive anything; see _watch_broke
                _watch_broke("Secrets", exc)
            gap = True
            await asyncio.sleep(RESTART_DELAY)


def _admits_otherwise(before: PlaneEntry, now: PlaneEntry) -> bool:
    """Whether the CR's agents are to be judged again: another object took its name, or its
    planeID or CA (inline, or where it is read) changed."""
    replaced = bool(before.uid and now.uid and before.uid != now.uid)
    return replaced or (before.plane_id, _ca_identity(before.inline_ca), before.location) != (
        now.plane_id,
        _ca_identity(now.inline_ca),
        now.location,
    )


def _ca_identity(pem: bytes | None) -> object:
    """What a CA admits by (its certificates), not how its PEM is spelled: a trailing
    newline or text around the blocks is no change to judge agents for. Parsed once per
    distinct PEM (the process's bundle cache)."""
    if pem is None:
        return None
    bundle = trust_bundle(pem)
    return (bundle.ders, bundle.problem)


def _sharing(annotations: Mapping[str, str] | None) -> dict[str, str]:
    """Of a Secret's annotations, the one the cache reads (who may use it); a tenant editing
    any other is no change."""
    shared = (annotations or {}).get(ANNOTATION_CLIENT_CA_SHARED_WITH)
    return {} if shared is None else {ANNOTATION_CLIENT_CA_SHARED_WITH: shared}


def _annotations(secret: Secret) -> Mapping[str, str]:
    return (secret.metadata.annotations if secret.metadata else None) or {}


def _secret_of(entry: PlaneEntry) -> tuple[str, str] | None:
    location = entry.location
    return None if location is None else (location.namespace, location.name)


def _terminating(data: Mapping[str, Any]) -> bool:
    meta = data.get("metadata")
    return isinstance(meta, Mapping) and bool(meta.get("deletionTimestamp"))
