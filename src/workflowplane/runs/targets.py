"""The plane CR a run goes to, and the record of it kept on the run (annotation
``openchoreo.dev/workflowplane``): written by the controller, read by tracking, cleanup and
``wpctl logs`` alike."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from workflowplane.api.constants import WORKFLOW_PLANE
from workflowplane.api.planes import PLANE_RESOURCES, plane_id_of
from workflowplane.api.workflows import PLANE_ANNOTATION
from workflowplane.runs.cache import Reader
from workflowplane.runs.plan import PlaneTarget

log = logging.getLogger(__name__)


async def plane_target(
    read: Reader, kind: str, namespace: str | None, name: str, *, terminating: bool = False
) -> PlaneTarget | None:
    """The plane CR as a target; one being deleted counts only when ``terminating``.
    ``read`` is ``get_dict`` bound to a client, or the controller's cache."""
    plane = await read(PLANE_RESOURCES[kind], name, namespace)
    if plane is None or (plane["metadata"].get("deletionTimestamp") and not terminating):
        return None
    spec = plane.get("spec") or {}
    return PlaneTarget(
        kind=kind,
        namespace=namespace,
        name=name,
        plane_id=plane_id_of(plane),
        secret_store=(spec.get("secretStoreRef") or {}).get("name") or "",
    )


def plane_record(target: PlaneTarget) -> str:
    """The annotation's value for a run sent to ``target``."""
    return json.dumps({"kind": target.kind, "name": target.name, "planeID": target.plane_id})


async def recorded_target(
    read: Reader, run: Mapping[str, Any], *, terminating: bool = False
) -> PlaneTarget | None:
    """The plane the run was sent to (its recorded planeID), if that CR still exists."""
    meta = run["metadata"]
    raw = (meta.get("annotations") or {}).get(PLANE_ANNOTATION)
    if not raw:
        return None
    try:
        record = json.loads(raw)
        kind, name = record["kind"], record["name"]
        namespace = meta["namespace"] if kind == WORKFLOW_PLANE else None
        current = await plane_target(read, kind, namespace, name, terminating=terminating)
    except (ValueError, KeyError, TypeError):
        log.warning("run %s has an unreadable %s annotation", meta["name"], PLANE_ANNOTATION)
        return None
    if current is None or not record.get("planeID"):
        return current
    return replace(current, plane_id=str(record["planeID"]))
