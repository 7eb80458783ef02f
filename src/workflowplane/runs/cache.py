"""The newest copy of each object the runs controller reads, fed by kopf's events and by the
answers to its own writes, so a reconcile pass reads the control plane's API server only for
an object it has not seen yet.

Why: every pass used to GET the run, its definition and its plane, and every status write
woke the run for one more pass that did the same; at a few hundred runs those reads were
about half the controller's CPU (bench/runs.py, docs/runs.md "Performance"). This is what
controller-runtime's informer cache does: a pass may see a copy one event old, and the event
that follows wakes it again.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from lightkube import AsyncClient

from workflowplane.api.kube import get_dict

ObjectKey = tuple[str, str | None, str]  # kind, namespace (None: cluster-scoped), name
Reader = Callable[[Any, str, str | None], Awaitable[dict[str, Any] | None]]


def kind_of(resource: Any) -> str:
    """The kind of a lightkube resource class (generic resources carry it in their API info)."""
    return str(resource._api_info.resource.kind)


def _version(obj: Mapping[str, Any]) -> int | None:
    """resourceVersion as a number where it is one (etcd's), else None (not comparable)."""
    text = str((obj.get("metadata") or {}).get("resourceVersion") or "")
    return int(text) if text.isdigit() else None


class ObjectCache:
    """Objects by (kind, namespace, name); a copy older than the one held is ignored, so an
    event that arrives after our own write's answer cannot roll the object back."""

    def __init__(self, kube: AsyncClient) -> None:
        self._kube = kube
        self._objects: dict[ObjectKey, dict[str, Any]] = {}
        # Deleted, as an event said: the next read answers "gone" without asking the API
        # server (a run's last pass used to GET it, for a 404, once per deleted run).
        self._gone: set[ObjectKey] = set()

    def __len__(self) -> int:
        return len(self._objects)

    def remember(self, kind: str, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        key = _key_of(kind, meta)
        self._gone.discard(key)
        held = self._objects.get(key)
        if held is not None:
            new, old = _version(obj), _version(held)
            if new is not None and old is not None and new < old:
                return
        kept = dict(obj)  # event bodies and answers are fresh: never changed
        if "managedFields" in meta:
            # Never read here; they were 3/4 of a run's metadata, copied on every pass.
            kept["metadata"] = {k: v for k, v in meta.items() if k != "managedFields"}
        self._objects[key] = kept

    def forget(self, kind: str, namespace: str | None, name: str) -> None:
        self._objects.pop((kind, namespace or None, name), None)

    def deleted(self, kind: str, obj: Mapping[str, Any]) -> None:
        """The object's deletion event: forgotten, and the one read that follows (its last
        pass) is answered without a request. Only that one: a tombstone is not kept.

        kopf hands each UID's events to its own worker, so the deletion of an object may
        come after the creation of its successor of the same name: a held copy of another
        UID is the successor's, and stays."""
        meta = obj.get("metadata") or {}
        key = _key_of(kind, meta)
        held = self._objects.get(key)
        if held is not None and (held.get("metadata") or {}).get("uid") != meta.get("uid"):
            return
        self._objects.pop(key, None)
        self._gone.add(key)

    async def get(
        self, resource: Any, name: str, namespace: str | None = None
    ) -> dict[str, Any] | None:
        """Like :func:`api.kube.get_dict`, from the cache when held, else read once from the
        API server and kept. Shared: change only a :meth:`copy`."""
        kind = kind_of(resource)
        key = (kind, namespace or None, name)
        held = self._objects.get(key)
        if held is not None:
            return held
        if key in self._gone:
            self._gone.discard(key)
            return None
        found = await get_dict(self._kube, resource, name, namespace)
        if found is not None:
            self.remember(kind, found)
        return found

    async def copy(
        self, resource: Any, name: str, namespace: str | None = None
    ) -> dict[str, Any] | None:
        """:meth:`get`, as a copy whose metadata and status the caller may change; the rest
        (the spec) is the held object's own, to read only.

        Only those are copied: a tenant's spec may be about 1.5 MB, and copying it on every
        pass and every Argo change of its run held the shared loop 0.6-0.8 s each time."""
        found = await self.get(resource, name, namespace)
        if found is None:
            return None
        made = dict(found)
        for part in ("metadata", "status"):
            if isinstance(found.get(part), dict):
                made[part] = json_copy(found[part])
        return made


def _key_of(kind: str, meta: Mapping[str, Any]) -> ObjectKey:
    return (kind, meta.get("namespace") or None, str(meta.get("name", "")))


def json_copy(obj: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of JSON-like data made without recursion: a tenant's run nested deeper than
    Python's recursion limit (the API server accepts far more) made ``copy.deepcopy`` raise on
    every pass, so the run never got an error and, once started, never its cleanup."""
    top: dict[str, Any] = {}
    stack: list[tuple[Any, Any]] = [(obj, top)]
    while stack:
        source, target = stack.pop()
        items = source.items() if isinstance(source, Mapping) else enumerate(source)
        for key, value in items:
            if isinstance(value, Mapping):
                made: Any = {}
            elif isinstance(value, list):
                made = [None] * len(value)
            else:
                made = copy.copy(value)
            target[key] = made
            if isinstance(value, (Mapping, list)):
                stack.append((value, made))
    return top
