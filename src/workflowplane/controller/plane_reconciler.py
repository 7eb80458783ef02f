"""The executor of plane reconciliation: one pass over one CR, all of its I/O.

:class:`PlaneReconciler` is the work queue's handler for planes. A pass reads the CR, asks
``plane_decision`` what to do, performs it (finalizer, gateway notification, observations of
the CA, the agents, the secret store and the observability plane, the status write, events)
and returns when to look again. It decides nothing itself: every rule lives in
``plane_decision.py`` and ``status.py``, where it is unit-tested without a server.

Failures follow ``kits.errors``: what the pass can report in the status (a CA that cannot be
had, a gateway that cannot say) is observed, not raised; a Kubernetes API error propagates to
the work queue, which retries a transient one with backoff and parks a permanent one until the
next event. A notification the gateway could not take is owed: the CR is marked so that its
next pass notifies again even if nothing else changed.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError

from workflowplane.api import (
    FINALIZERS,
    PLANE_RESOURCES,
    PLANE_TYPE,
    AnyPlane,
    ClientCAError,
    InvalidManifest,
    decode_plane,
    effective_plane_id,
    plane_id_of,
    read_client_ca,
)
from workflowplane.api.conditions import Verdict
from workflowplane.api.constants import OBSERVABILITY_PLANE
from workflowplane.api.kube import get_dict, merge_patch
from workflowplane.api.planes import (
    ClusterObservabilityPlaneResource,
    ObservabilityPlaneResource,
    is_object_name,
)
from workflowplane.controller.directory import PlaneRef
from workflowplane.controller.events import EventRecorder
from workflowplane.controller.gateway_api import GatewayAPI
from workflowplane.controller.plane_decision import (
    DISCONNECT_GRACE_SECONDS,
    Decision,
    NotifyEvent,
    NotifyOutcome,
    ObservabilityLookup,
    ObservabilityTarget,
    Observed,
    SecretStoreCheck,
    decide_deletion,
    decide_status,
    invalid_spec,
    observability_target,
    plan_deletion,
    plan_notify,
    wants_secret_store_check,
)
from workflowplane.controller.status import (
    AgentObservation,
    CAHealth,
    agent_observation,
    assess_ca,
)
from workflowplane.kits.clock import Clock, utcnow
from workflowplane.kits.errors import NETWORK_ERRORS, Failure, is_transient

log = logging.getLogger(__name__)
EXTERNAL_SECRETS_VERSIONS = ("v1", "v1beta1")
# What a gateway call can fail with that is the world's fault (anything else is a bug).
GATEWAY_FAILURES: tuple[type[BaseException], ...] = (Failure, *NETWORK_ERRORS)
GONE = "gone"


class PlaneReconciler:
    """Performs one pass over one plane CR; owns the notifications still owed to the gateway.

    Calls for one CR never overlap: the work queue serializes them per key. ``notify_owed``
    is the one piece of state across passes: a set of CRs whose next pass must notify the
    gateway ``updated`` whether or not their spec changed (their CA Secret changed, or an
    earlier notification failed transiently). A pass consumes the mark and puts it back if
    it does not get the notification through. ``agents_changed`` works the same way for the
    moment (``time.monotonic``) an agent change was first heard of: the first pass that
    completes after it reports the delay to ``on_status_lag``.
    """

    def __init__(
        self,
        kube: AsyncClient,
        gateway: GatewayAPI,
        events: EventRecorder,
        *,
        resync_seconds: float = 60.0,
        disconnect_grace_seconds: float = DISCONNECT_GRACE_SECONDS,
        clock: Clock = utcnow,
        on_status_lag: Callable[[float], None] | None = None,
    ) -> None:
        self._kube = kube
        self._gateway = gateway
        self._events = events
        self._resync = resync_seconds
        self._grace = disconnect_grace_seconds
        self._clock = clock
        self._on_status_lag = on_status_lag
        self.notify_owed: set[PlaneRef] = set()
        self.agents_changed: dict[PlaneRef, float] = {}
        self.agents_missing_since: dict[PlaneRef, dt.datetime] = {}

    def agents_changed_at(self, ref: PlaneRef, since: float) -> None:
        """An agent of this CR's planeID connected or left at ``since``; the earliest wins."""
        self.agents_changed[ref] = min(since, self.agents_changed.get(ref, since))

    async def reconcile(self, ref: PlaneRef) -> float | None:
        """One pass; returns seconds until the next (the resync period, or sooner to retry)."""
        force = ref in self.notify_owed
        self.notify_owed.discard(ref)
        since = self.agents_changed.pop(ref, None)
        try:
            decision = await self._pass(ref, force)
        except BaseException:
            if force:  # not notified: still owed
                self.notify_owed.add(ref)
            if since is not None:  # not reflected yet
                self.agents_changed_at(ref, since)
            raise
        if decision.notify_owed:
            self.notify_owed.add(ref)
        if since is not None and decision.summary != GONE and self._on_status_lag is not None:
            self._on_status_lag(time.monotonic() - since)
        log.debug(
            "reconciled %s %s: %s; status %s, %d event(s); next pass in %ss",
            ref.kind,
            ref.key,
            decision.summary,
            "written" if decision.status is not None else "unchanged",
            len(decision.events),
            decision.requeue_after,
        )
        return decision.requeue_after

    async def _pass(self, ref: PlaneRef, force: bool) -> Decision:
        cr = await self._get(ref)
        if cr is None:
            self.notify_owed.discard(ref)
            self.agents_missing_since.pop(ref, None)
            return Decision(summary=GONE)
        if cr["metadata"].get("deletionTimestamp"):
            return await self._finalize(ref, cr)
        try:
            plane = decode_plane(cr)
        except InvalidManifest as exc:  # the CRD should make this impossible; say so loudly
            decision = invalid_spec(str(exc))
            await self._carry_out(ref, cr, decision)
            return decision
        plan = plan_notify(cr, force=force)
        if plan.add_finalizer:
            finalizers = [*(cr["metadata"].get("finalizers") or []), FINALIZERS[ref.kind]]
            await self._patch_finalizers(ref, cr, finalizers)
        notified = None
        if plan.notify is not None:
            notified = await self._notify(ref, effective_plane_id(plane), plan.notify)
        decision = decide_status(
            await self._observe(ref, plane, cr),
            notified,
            resync_seconds=self._resync,
            grace_seconds=self._grace,
        )
        await self._carry_out(ref, cr, decision)
        return decision

    async def _finalize(self, ref: PlaneRef, cr: dict[str, Any]) -> Decision:
        """On delete: revoke this CR (only) at the gateway, then release the finalizer."""
        notified = None
        if plan_deletion(cr):
            notified = await self._notify(ref, plane_id_of(cr), "deleted")
        decision = decide_deletion(cr, notified, self._clock())
        await self._carry_out(ref, cr, decision)
        return decision

    # ---- observations ------------------------------------------------------------------------

    async def _get(self, ref: PlaneRef) -> dict[str, Any] | None:
        data = await get_dict(self._kube, PLANE_RESOURCES[ref.kind], ref.name, ref.namespace)
        if data is not None:
            data.setdefault("kind", ref.kind)
        return data

    async def _notify(self, ref: PlaneRef, plane_id: str, event: NotifyEvent) -> NotifyOutcome:
        try:
            await self._gateway.notify(
                plane_type=PLANE_TYPE,
                plane_id=plane_id,
                event=event,
                namespace=ref.namespace or "",
                name=ref.name,
            )
        except GATEWAY_FAILURES as exc:
            if is_transient(exc):
                log.info("gateway notify %s for %s failed, will retry: %s", event, ref.key, exc)
                return NotifyOutcome(event, "unavailable", str(exc))
            log.error("gateway refused notify %s for %s: %s", event, ref.key, exc)
            return NotifyOutcome(event, "refused", str(exc))
        return NotifyOutcome(event, "accepted")

    async def _observe(self, ref: PlaneRef, plane: AnyPlane, cr: Mapping[str, Any]) -> Observed:
        now = self._clock()
        ca = await self._assess_ca(plane, now)
        agents = await self._observe_agents(ref, plane)
        store: SecretStoreCheck | None = None
        if plane.spec.secret_store_ref is not None:
            name = plane.spec.secret_store_ref.name
            checked = None
            if wants_secret_store_check(agents):
                checked = await self._check_secret_store(ref, plane, name)
            store = SecretStoreCheck(name, checked)
        target = observability_target(plane)
        observability = None
        if target is not None:
            observability = ObservabilityLookup(target, await self._exists(target, ref.namespace))
        missing_since = self._note_missing(ref, agents, now)
        return Observed(cr, now, ca, agents, store, observability, missing_since)

    def _note_missing(
        self, ref: PlaneRef, agents: AgentObservation | None, now: dt.datetime
    ) -> dt.datetime | None:
        """Since when this CR has had no agent on any replica (kept while the gateway cannot
        say; cleared when an agent is there)."""
        if agents is not None and agents.connected_agents > 0:
            self.agents_missing_since.pop(ref, None)
        elif agents is not None:
            self.agents_missing_since.setdefault(ref, now)
        return self.agents_missing_since.get(ref)

    async def _assess_ca(self, plane: AnyPlane, now: dt.datetime) -> CAHealth:
        try:
            pem = await read_client_ca(self._kube, plane)
        except ClientCAError as exc:
            return CAHealth(Verdict("False", exc.reason, exc.message))
        return assess_ca(pem, now)

    async def _observe_agents(self, ref: PlaneRef, plane: AnyPlane) -> AgentObservation | None:
        plane_id = effective_plane_id(plane)
        try:
            mine = await self._gateway.plane_status(
                PLANE_TYPE, plane_id, namespace=ref.namespace, name=ref.name
            )
        except GATEWAY_FAILURES as exc:  # the gateway may be down; the status says so
            log.info("gateway status for %s unavailable: %s", ref.key, exc)
            return None
        except (ValueError, TypeError, OverflowError) as exc:
            # An answer that does not parse (not JSON, a count that is no number: the client's
            # merge raises) is the gateway's fault, not a bug of this pass: it raised out of
            # every pass, and the status never said the gateway could not be read.
            log.warning("gateway status for %s does not parse: %.200s", ref.key, exc)
            return None
        if not isinstance(mine, Mapping):
            log.warning("gateway status for %s is not an object", ref.key)
            return None
        return agent_observation(mine)

    async def _check_secret_store(self, ref: PlaneRef, plane: AnyPlane, name: str) -> Verdict:
        """Look the ClusterSecretStore up in the *plane* cluster, through the tunnel. A name
        that is no object name is not asked for: it goes into the request path, where the
        gateway client resolves ``..`` (``../../../../../../victim/theirs/k8s/...`` left this
        CR's route for another tenant's CR's) and ``?`` starts a query."""
        if not is_object_name(name):
            return Verdict(
                "False",
                "SecretStoreNotFound",
                f"secretStoreRef.name {name[:253]!r} is not a valid object name "
                "(lowercase RFC 1123 subdomain)",
            )
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
            except GATEWAY_FAILURES as exc:  # reported in the condition
                return Verdict("Unknown", "SecretStoreCheckFailed", f"tunnel request failed: {exc}")
            if 200 <= response.status < 300:
                return Verdict(
                    "True",
                    "SecretStoreFound",
                    f"ClusterSecretStore {name!r} exists in the workflow plane",
                )
            if response.status != 404:
                return Verdict(
                    "Unknown",
                    "SecretStoreCheckFailed",
                    f"workflow plane answered {response.status} for ClusterSecretStore {name!r}",
                )
        return Verdict(
            "False",
            "SecretStoreNotFound",
            f"ClusterSecretStore {name!r} not found in the workflow plane "
            "(is External Secrets Operator installed there?)",
        )

    async def _exists(self, target: ObservabilityTarget, namespace: str | None) -> bool:
        resource = (
            ObservabilityPlaneResource
            if target.kind == OBSERVABILITY_PLANE
            else ClusterObservabilityPlaneResource
        )
        return await get_dict(self._kube, resource, target.name, namespace) is not None

    # ---- actions -----------------------------------------------------------------------------

    async def _carry_out(self, ref: PlaneRef, cr: dict[str, Any], decision: Decision) -> None:
        if decision.status is not None:
            await self._patch(ref, {"status": decision.status}, status=True)
        for event in decision.events:
            await self._events.record(cr, event.type, event.reason, event.message)
        if decision.release_finalizer:
            ours = FINALIZERS[ref.kind]
            remaining = [f for f in cr["metadata"].get("finalizers") or [] if f != ours]
            await self._patch_finalizers(ref, cr, remaining)
            log.info("released finalizer of %s %s", ref.kind, ref.key)

    async def _patch_finalizers(
        self, ref: PlaneRef, cr: Mapping[str, Any], finalizers: list[str]
    ) -> None:
        """Guarded by resourceVersion: a concurrent change is a 409, and the queue retries."""
        metadata = {"finalizers": finalizers, "resourceVersion": cr["metadata"]["resourceVersion"]}
        await self._patch(ref, {"metadata": metadata})

    async def _patch(self, ref: PlaneRef, body: dict[str, Any], *, status: bool = False) -> None:
        try:
            await merge_patch(
                self._kube,
                PLANE_RESOURCES[ref.kind],
                ref.name,
                body,
                namespace=ref.namespace,
                status=status,
            )
        except ApiError as exc:
            if exc.status.code != 404:  # gone meanwhile: nothing left to write
                raise
