"""Level-triggered reconciliation of one plane CR: finalizer, gateway notification, status.

Every trigger (kopf change handlers, the resync timer, a gateway connection event, a change to
a CA Secret) calls :meth:`PlaneReconciler.reconcile` for a CR; it reads the current object and
the world, computes the status from scratch (``status.py``), and writes only what changed.
Calls for one CR are serialized, so triggers arriving together cannot interleave their writes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError

from workflowplane.api import (
    CLUSTER_WORKFLOW_PLANE,
    FINALIZERS,
    PLANE_TYPE,
    WORKFLOW_PLANE,
    AnyPlane,
    ClientCAError,
    ClusterWorkflowPlane,
    ClusterWorkflowPlaneResource,
    Condition,
    InvalidManifest,
    Reason,
    WorkflowPlaneResource,
    cr_key_of,
    decode_plane,
    effective_plane_id,
    read_client_ca,
)
from workflowplane.api.conditions import (
    Verdict,
    find_condition,
    remove_condition,
    set_condition,
)
from workflowplane.api.kube import get_dict, merge_patch
from workflowplane.api.planes import (
    ClusterObservabilityPlaneResource,
    ObservabilityPlaneResource,
)
from workflowplane.controller.events import EventRecorder
from workflowplane.controller.gateway_api import GatewayAPI
from workflowplane.controller.status import (
    AgentObservation,
    CAHealth,
    assess_ca,
    next_agent_connection,
    readiness,
)
from workflowplane.kits.clock import parse_rfc3339

log = logging.getLogger(__name__)
RESOURCES: dict[str, Any] = {
    WORKFLOW_PLANE: WorkflowPlaneResource,
    CLUSTER_WORKFLOW_PLANE: ClusterWorkflowPlaneResource,
}
CREATED_REASONS = {
    WORKFLOW_PLANE: Reason.WORKFLOW_PLANE_CREATED,
    CLUSTER_WORKFLOW_PLANE: Reason.CLUSTER_WORKFLOW_PLANE_CREATED,
}
EXTERNAL_SECRETS_VERSIONS = ("v1", "v1beta1")


class RetryLater(Exception):
    """A transient failure (gateway or API unavailable): the trigger should retry."""

    def __init__(self, message: str, delay: float = 5.0) -> None:
        super().__init__(message)
        self.delay = delay


@dataclass(frozen=True)
class PlaneRef:
    kind: str
    namespace: str | None
    name: str

    @property
    def key(self) -> str:
        return cr_key_of(self.namespace, self.name)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _parse_time(value: Any) -> dt.datetime | None:
    return parse_rfc3339(str(value)) if value else None


class PlaneReconciler:
    def __init__(
        self,
        kube: AsyncClient,
        gateway: GatewayAPI,
        events: EventRecorder,
        clock: Callable[[], dt.datetime] = _now,
    ) -> None:
        self._kube = kube
        self._gateway = gateway
        self._events = events
        self._clock = clock
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def reconcile(self, ref: PlaneRef, *, force_notify: bool = False) -> None:
        """Bring one CR's finalizer, gateway authorization and status up to date."""
        async with self._locks[f"{ref.kind}:{ref.key}"]:
            raw = await self._get(ref)
            if raw is None:
                return
            if raw["metadata"].get("deletionTimestamp"):
                await self._finalize(ref, raw)
                return
            await self._reconcile_live(ref, raw, force_notify)

    async def _get(self, ref: PlaneRef) -> dict[str, Any] | None:
        try:
            data = await get_dict(self._kube, RESOURCES[ref.kind], ref.name, ref.namespace)
        except ApiError as exc:
            raise RetryLater(f"reading {ref.kind} {ref.key}: {exc}") from exc
        if data is not None:
            data.setdefault("kind", ref.kind)
        return data

    async def _reconcile_live(self, ref: PlaneRef, raw: dict[str, Any], force: bool) -> None:
        try:
            plane = decode_plane(raw)
        except InvalidManifest as exc:  # the CRD should make this impossible; say so loudly
            await self._events.record(raw, "Warning", "InvalidSpec", str(exc))
            return
        await self._ensure_finalizer(ref, raw)
        status: dict[str, Any] = dict(raw.get("status") or {})
        generation = raw["metadata"].get("generation")
        first_time = find_condition(status.get("conditions", []), Condition.CREATED) is None
        spec_changed = generation != status.get("observedGeneration")
        retry: RetryLater | None = None
        refused: str | None = None
        if first_time or spec_changed or force:
            retry, refused = await self._notify(
                ref, plane, raw, "created" if first_time else "updated"
            )
        new_status = await self._observe(ref, plane, raw, status, generation, refused)
        await self._write_status(ref, raw, status, new_status)
        if first_time:
            await self._events.record(
                raw, "Normal", "ReconcileComplete", f"{ref.kind} accepted by the controller"
            )
        if retry is not None:
            raise retry

    async def _ensure_finalizer(self, ref: PlaneRef, raw: dict[str, Any]) -> None:
        finalizers: list[str] = raw["metadata"].get("finalizers") or []
        wanted = FINALIZERS[ref.kind]
        if wanted in finalizers:
            return
        patch = {
            "metadata": {
                "finalizers": [*finalizers, wanted],
                "resourceVersion": raw["metadata"]["resourceVersion"],
            }
        }
        await self._patch(ref, patch)

    async def _notify(
        self, ref: PlaneRef, plane: AnyPlane, raw: dict[str, Any], event: str
    ) -> tuple[RetryLater | None, str | None]:
        """Tell the gateway. A transient failure comes back to be retried; a permanent one is
        recorded (Warning event, and the Ready condition says it) and not retried."""
        try:
            await self._gateway.notify(
                plane_type=PLANE_TYPE,
                plane_id=effective_plane_id(plane),
                event=event,
                namespace=ref.namespace or "",
                name=ref.name,
            )
        except Exception as exc:  # noqa: BLE001 - classified below
            if getattr(exc, "transient", True):
                log.info("gateway notify %s for %s failed, will retry: %s", event, ref.key, exc)
                return RetryLater(f"gateway notify {event} failed: {exc}"), None
            message = f"gateway refused notify {event}: {exc}"
            log.error("%s: %s", ref.key, message)
            await self._events.record(raw, "Warning", Reason.GATEWAY_NOTIFY_FAILED, message)
            return None, message
        return None, None

    async def _observe(
        self,
        ref: PlaneRef,
        plane: AnyPlane,
        raw: dict[str, Any],
        status: dict[str, Any],
        generation: int | None,
        refused: str | None = None,
    ) -> dict[str, Any]:
        now = self._clock()
        ca = await self._assess_ca(plane, now)
        seen = await self._observe_agents(ref, plane)
        ready = readiness(ca, seen)
        if refused is not None:
            ready = Verdict("False", Reason.GATEWAY_NOTIFY_FAILED, refused)
        elif ready.status == "True" and ca.expiring_soon(now) and ca.expires is not None:
            ready = Verdict(
                "True",
                Reason.READY,
                f"{ready.message}; client CA expires {ca.expires:%Y-%m-%d}: rotate it soon",
            )
        conditions: list[dict[str, Any]] = list(status.get("conditions", []))
        conditions = set_condition(
            conditions,
            Condition.CREATED,
            Verdict("True", CREATED_REASONS[ref.kind], f"{ref.kind} accepted"),
            generation,
            now,
        )
        conditions = set_condition(conditions, Condition.READY, ready, generation, now)
        conditions = await self._secret_store_condition(
            ref, plane, seen, conditions, generation, now
        )
        conditions = await self._observability_condition(ref, plane, conditions, generation, now)
        result: dict[str, Any] = {"observedGeneration": generation, "conditions": conditions}
        if seen is not None:
            result["agentConnection"] = next_agent_connection(
                status.get("agentConnection"), seen, now
            )
        elif status.get("agentConnection"):
            result["agentConnection"] = status["agentConnection"]
        return result

    async def _assess_ca(self, plane: AnyPlane, now: dt.datetime) -> CAHealth:
        try:
            pem = await read_client_ca(self._kube, plane)
        except ClientCAError as exc:
            return CAHealth(Verdict("False", exc.reason, exc.message))
        except ApiError as exc:
            raise RetryLater(f"reading the client CA: {exc}") from exc
        return assess_ca(pem, now)

    async def _observe_agents(self, ref: PlaneRef, plane: AnyPlane) -> AgentObservation | None:
        plane_id = effective_plane_id(plane)
        try:
            mine = await self._gateway.plane_status(
                PLANE_TYPE, plane_id, namespace=ref.namespace, name=ref.name
            )
            everyone = await self._gateway.plane_status(PLANE_TYPE, plane_id)
        except Exception as exc:  # noqa: BLE001 - the gateway may be down; status says so
            log.info("gateway status for %s unavailable: %s", ref.key, exc)
            return None
        return AgentObservation(
            connected_agents=int(mine.get("connectedAgents") or 0),
            last_seen=_parse_time(mine.get("lastSeen")),
            plane_agents=int(everyone.get("connectedAgents") or 0),
        )

    async def _secret_store_condition(
        self,
        ref: PlaneRef,
        plane: AnyPlane,
        seen: AgentObservation | None,
        conditions: list[dict[str, Any]],
        generation: int | None,
        now: dt.datetime,
    ) -> list[dict[str, Any]]:
        store = plane.spec.secret_store_ref
        if store is None:
            return remove_condition(conditions, Condition.SECRET_STORE_READY)
        if seen is None or seen.connected_agents == 0:
            verdict = Verdict(
                "Unknown",
                Reason.AGENT_NOT_CONNECTED,
                f"cannot check ClusterSecretStore {store.name!r}: no agent connected",
            )
        else:
            verdict = await self._check_secret_store(ref, plane, store.name)
        return set_condition(conditions, Condition.SECRET_STORE_READY, verdict, generation, now)

    async def _check_secret_store(self, ref: PlaneRef, plane: AnyPlane, name: str) -> Verdict:
        """Look the ClusterSecretStore up in the *plane* cluster, through the tunnel."""
        for version in EXTERNAL_SECRETS_VERSIONS:
            try:
                response = await self._gateway.proxy(
                    "GET",
                    plane_type=PLANE_TYPE,
                    plane_id=effective_plane_id(plane),
                    cr_namespace=ref.namespace,
                    cr_name=ref.name,
                    path=f"apis/external-secrets.io/{version}/clustersecretstores/{name}",
                )
            except Exception as exc:  # noqa: BLE001 - reported in the condition
                return Verdict("Unknown", "SecretStoreCheckFailed", f"tunnel request failed: {exc}")
            code = int(getattr(response, "status", 0))
            if 200 <= code < 300:
                return Verdict(
                    "True",
                    "SecretStoreFound",
                    f"ClusterSecretStore {name!r} exists in the workflow plane",
                )
            if code != 404:
                return Verdict(
                    "Unknown",
                    "SecretStoreCheckFailed",
                    f"workflow plane answered {code} for ClusterSecretStore {name!r}",
                )
        return Verdict(
            "False",
            "SecretStoreNotFound",
            f"ClusterSecretStore {name!r} not found in the workflow plane "
            "(is External Secrets Operator installed there?)",
        )

    async def _observability_condition(
        self,
        ref: PlaneRef,
        plane: AnyPlane,
        conditions: list[dict[str, Any]],
        generation: int | None,
        now: dt.datetime,
    ) -> list[dict[str, Any]]:
        explicit = plane.spec.observability_plane_ref
        if explicit is not None:
            kind, name = explicit.kind, explicit.name
        elif isinstance(plane, ClusterWorkflowPlane):
            return remove_condition(conditions, Condition.OBSERVABILITY_PLANE_RESOLVED)
        else:
            kind, name = "ObservabilityPlane", "default"
        found = await self._exists_observability_plane(kind, name, ref.namespace)
        if explicit is None and not found:
            return remove_condition(conditions, Condition.OBSERVABILITY_PLANE_RESOLVED)
        where = f"{kind} {name!r}" + (
            f" in namespace {ref.namespace}" if kind == "ObservabilityPlane" else ""
        )
        verdict = (
            Verdict("True", "ObservabilityPlaneFound", f"{where} found")
            if found
            else Verdict("False", "ObservabilityPlaneNotFound", f"{where} not found")
        )
        return set_condition(
            conditions, Condition.OBSERVABILITY_PLANE_RESOLVED, verdict, generation, now
        )

    async def _exists_observability_plane(
        self, kind: str, name: str, namespace: str | None
    ) -> bool:
        resource = (
            ObservabilityPlaneResource
            if kind == "ObservabilityPlane"
            else ClusterObservabilityPlaneResource
        )
        try:
            found = await get_dict(self._kube, resource, name, namespace)
        except ApiError as exc:
            raise RetryLater(f"reading {kind} {name}: {exc}") from exc
        return found is not None

    async def _write_status(
        self,
        ref: PlaneRef,
        raw: dict[str, Any],
        before: dict[str, Any],
        after: dict[str, Any],
    ) -> None:
        if all(before.get(key) == value for key, value in after.items()):
            return
        await self._patch(ref, {"status": after}, status=True)
        await self._emit_transition_events(raw, before, after)

    async def _emit_transition_events(
        self, raw: dict[str, Any], before: dict[str, Any], after: dict[str, Any]
    ) -> None:
        """Warning on every move into a bad state, Normal on recovery; nothing when unchanged."""
        old = find_condition(before.get("conditions", []), Condition.READY) or {}
        new = find_condition(after["conditions"], Condition.READY) or {}
        expiring = "client CA expires" in new.get("message", "")
        if expiring and "client CA expires" not in old.get("message", ""):
            await self._events.record(
                raw, "Warning", Reason.CLIENT_CA_EXPIRING_SOON, new["message"]
            )
        if (old.get("status"), old.get("reason")) == (new.get("status"), new.get("reason")):
            return
        if new.get("status") == "True":
            await self._events.record(raw, "Normal", new["reason"], new["message"])
        elif new.get("status") == "False":
            await self._events.record(raw, "Warning", new["reason"], new["message"])

    async def _patch(self, ref: PlaneRef, body: dict[str, Any], *, status: bool = False) -> None:
        try:
            await merge_patch(
                self._kube,
                RESOURCES[ref.kind],
                ref.name,
                body,
                namespace=ref.namespace,
                status=status,
            )
        except ApiError as exc:
            if exc.status.code == 404:
                return
            raise RetryLater(f"patching {ref.kind} {ref.key}: {exc}", delay=1.0) from exc

    async def _finalize(self, ref: PlaneRef, raw: dict[str, Any]) -> None:
        """On delete: revoke this CR (only) at the gateway, then release the finalizer."""
        finalizers: list[str] = raw["metadata"].get("finalizers") or []
        ours = FINALIZERS[ref.kind]
        if ours not in finalizers:
            return
        plane_id = (raw.get("spec") or {}).get("planeID") or ref.name
        try:
            await self._gateway.notify(
                plane_type=PLANE_TYPE,
                plane_id=plane_id,
                event="deleted",
                namespace=ref.namespace or "",
                name=ref.name,
            )
        except Exception as exc:
            if getattr(exc, "transient", True):
                raise RetryLater(f"gateway notify deleted failed: {exc}") from exc
            log.error("gateway refused notify deleted for %s: %s", ref.key, exc)
        remaining = [f for f in finalizers if f != ours]
        await self._patch(
            ref,
            {
                "metadata": {
                    "finalizers": remaining,
                    "resourceVersion": raw["metadata"]["resourceVersion"],
                }
            },
        )
        log.info("released finalizer of %s %s", ref.kind, ref.key)
