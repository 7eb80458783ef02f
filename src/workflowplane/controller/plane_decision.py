"""What one reconcile pass of a plane CR should do, decided from what it saw: pure, no I/O.

A pass decides in two steps, because what the gateway answers to a notification feeds the
Ready condition: :func:`plan_notify` (from the CR alone: add the finalizer? tell the gateway
``created``/``updated``?), then :func:`decide_status` (from everything observed after that:
the new status, the events its transitions post, when to look again). A CR being deleted
goes through :func:`plan_deletion` and :func:`decide_deletion` instead. The executor,
``plane_reconciler.py``, performs the I/O on either side of these calls.

Events come from condition transitions (reason codes and flags), never from message text,
and only when the status actually changes, so a resync that finds nothing new writes nothing
and posts nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from workflowplane.api.conditions import Verdict, find_condition, remove_condition, set_condition
from workflowplane.api.constants import (
    CLUSTER_WORKFLOW_PLANE,
    FINALIZERS,
    OBSERVABILITY_PLANE,
    WORKFLOW_PLANE,
    Condition,
    Reason,
)
from workflowplane.api.models import AnyPlane, ClusterWorkflowPlane
from workflowplane.controller.events import EventType
from workflowplane.controller.status import (
    AgentObservation,
    CAHealth,
    access_warning,
    next_agent_connection,
    readiness,
    through_grace,
)
from workflowplane.kits.clock import parse_rfc3339, utcnow

# A transient notify failure is retried this soon (with the notification still owed).
NOTIFY_RETRY_SECONDS = 5.0
DELETION_NOTIFY_GIVE_UP = dt.timedelta(minutes=5)
# How long an agent may be missing from every gateway replica before the CR says so.
DISCONNECT_GRACE_SECONDS = 10.0
CREATED_REASONS = {
    WORKFLOW_PLANE: Reason.WORKFLOW_PLANE_CREATED,
    CLUSTER_WORKFLOW_PLANE: Reason.CLUSTER_WORKFLOW_PLANE_CREATED,
}
NotifyEvent = Literal["created", "updated", "deleted"]


@dataclass(frozen=True)
class EventToPost:
    type: EventType
    reason: str
    message: str


@dataclass(frozen=True)
class NotifyPlan:
    """The first step of a live pass: the finalizer, and what to tell the gateway (if any)."""

    add_finalizer: bool
    notify: NotifyEvent | None


@dataclass(frozen=True)
class NotifyOutcome:
    """What the gateway answered: ``accepted``, ``refused`` (permanent: a 4xx, not retried
    until the CR changes) or ``unavailable`` (transient: retried)."""

    event: NotifyEvent
    result: Literal["accepted", "refused", "unavailable"]
    error: str = ""


@dataclass(frozen=True)
class SecretStoreCheck:
    """spec.secretStoreRef and, when an agent could be asked, what the plane cluster said."""

    name: str
    verdict: Verdict | None  # None: not checked (no agent connected)


@dataclass(frozen=True)
class ObservabilityTarget:
    kind: str
    name: str
    explicit: bool  # spec.observabilityPlaneRef, as opposed to the namespace's "default"


@dataclass(frozen=True)
class ObservabilityLookup:
    target: ObservabilityTarget
    found: bool


@dataclass(frozen=True)
class Observed:
    """Everything a live pass saw, after its notification (if any)."""

    cr: Mapping[str, Any]  # the CR as read at the start of the pass (kind set)
    now: dt.datetime
    ca: CAHealth
    agents: AgentObservation | None  # None: the gateway could not say
    secret_store: SecretStoreCheck | None = None  # None: no spec.secretStoreRef
    observability: ObservabilityLookup | None = None  # None: nothing to resolve
    # Since when no replica has had an agent for this CR (None: it has one, or unknown).
    agents_missing_since: dt.datetime | None = None


@dataclass(frozen=True)
class Decision:
    """The actions that end a pass, in the order the executor performs them."""

    status: dict[str, Any] | None = None  # the new status; None when unchanged
    events: tuple[EventToPost, ...] = ()
    release_finalizer: bool = False
    requeue_after: float | None = None  # seconds until the next pass; None: on events only
    notify_owed: bool = False  # the notification failed transiently: force it next time
    summary: str = ""  # one line for the log


# ---- live CRs --------------------------------------------------------------------------------


def _conditions(cr: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list((cr.get("status") or {}).get("conditions") or [])


def is_first_pass(cr: Mapping[str, Any]) -> bool:
    """Never accepted yet: the Created condition is what records acceptance."""
    return find_condition(_conditions(cr), Condition.CREATED) is None


def plan_notify(cr: Mapping[str, Any], *, force: bool = False) -> NotifyPlan:
    """First acceptance notifies ``created``; a new generation or a forced pass ``updated``."""
    meta = cr["metadata"]
    finalizers = meta.get("finalizers") or []
    status = cr.get("status") or {}
    notify: NotifyEvent | None = None
    if is_first_pass(cr):
        notify = "created"
    elif force or meta.get("generation") != status.get("observedGeneration"):
        notify = "updated"
    return NotifyPlan(add_finalizer=FINALIZERS[cr["kind"]] not in finalizers, notify=notify)


def wants_secret_store_check(agents: AgentObservation | None) -> bool:
    """The plane cluster can only be asked through a connected agent."""
    return agents is not None and agents.connected_agents > 0


def observability_target(plane: AnyPlane) -> ObservabilityTarget | None:
    """The explicit reference, else (WorkflowPlane only) the namespace's ``default``."""
    explicit = plane.spec.observability_plane_ref
    if explicit is not None:
        return ObservabilityTarget(explicit.kind, explicit.name, explicit=True)
    if isinstance(plane, ClusterWorkflowPlane):
        return None
    return ObservabilityTarget(OBSERVABILITY_PLANE, "default", explicit=False)


def decide_status(
    seen: Observed,
    notified: NotifyOutcome | None,
    *,
    resync_seconds: float,
    grace_seconds: float = DISCONNECT_GRACE_SECONDS,
) -> Decision:
    """The status from scratch, the events of its transitions, and when to look again.

    An agent missing from every replica for less than ``grace_seconds`` is still connected
    (:func:`~workflowplane.controller.status.through_grace`); the pass looks again when the
    grace ends, so a disconnect that lasts is reported then, once."""
    cr = seen.cr
    kind = cr["kind"]
    generation = cr["metadata"].get("generation")
    before: dict[str, Any] = dict(cr.get("status") or {})
    agents, grace_left = through_grace(
        before.get("agentConnection"),
        seen.agents,
        seen.agents_missing_since,
        seen.now,
        grace_seconds,
    )
    seen = replace(seen, agents=agents)
    ready, expiring = _ready(seen, notified, before, generation)
    conditions = _conditions(cr)
    conditions = set_condition(
        conditions,
        Condition.CREATED,
        Verdict("True", CREATED_REASONS[kind], f"{kind} accepted"),
        generation,
        seen.now,
    )
    conditions = set_condition(conditions, Condition.READY, ready, generation, seen.now)
    conditions = _secret_store_condition(seen, conditions, generation)
    conditions = _observability_condition(seen, conditions, generation)
    conditions = _access_condition(seen, conditions, generation)
    after: dict[str, Any] = {"observedGeneration": generation, "conditions": conditions}
    if seen.agents is not None:
        after["agentConnection"] = next_agent_connection(
            before.get("agentConnection"), seen.agents, seen.now
        )
    elif before.get("agentConnection"):
        after["agentConnection"] = before["agentConnection"]
    changed = any(before.get(key) != value for key, value in after.items())
    events = (
        [*_transition_events(before, after, expiring), *_access_events(before, after)]
        if changed
        else []
    )
    if notified is not None and notified.result == "refused":
        _once(events, EventToPost("Warning", Reason.GATEWAY_NOTIFY_FAILED, ready.message))
    if is_first_pass(cr):
        events.append(
            EventToPost("Normal", "ReconcileComplete", f"{kind} accepted by the controller")
        )
    owed = notified is not None and notified.result == "unavailable"
    requeue = NOTIFY_RETRY_SECONDS if owed else resync_seconds
    if grace_left is not None:
        requeue = min(requeue, grace_left)
    return Decision(
        status=after if changed else None,
        events=tuple(events),
        requeue_after=requeue,
        notify_owed=owed,
        summary=f"Ready={ready.status}/{ready.reason}",
    )


def _ready(
    seen: Observed,
    notified: NotifyOutcome | None,
    before: Mapping[str, Any],
    generation: int | None,
) -> tuple[Verdict, bool]:
    """The Ready verdict, and whether it carries the CA expiring-soon warning."""
    if notified is not None and notified.result == "refused":
        message = f"gateway refused notify {notified.event}: {notified.error}"
        return Verdict("False", Reason.GATEWAY_NOTIFY_FAILED, message), False
    previous = find_condition(list(before.get("conditions") or []), Condition.READY) or {}
    if (
        notified is None
        and previous.get("reason") == Reason.GATEWAY_NOTIFY_FAILED
        and previous.get("observedGeneration") == generation
    ):
        # This generation was refused and has not been notified since: still refused.
        return Verdict("False", Reason.GATEWAY_NOTIFY_FAILED, previous.get("message", "")), False
    ready = readiness(seen.ca, seen.agents)
    if ready.status == "True" and seen.ca.expiring_soon(seen.now) and seen.ca.expires:
        message = f"{ready.message}; client CA expires {seen.ca.expires:%Y-%m-%d}: rotate it soon"
        return Verdict("True", Reason.READY, message), True
    return ready, False


def _secret_store_condition(
    seen: Observed, conditions: list[dict[str, Any]], generation: int | None
) -> list[dict[str, Any]]:
    store = seen.secret_store
    if store is None:
        return remove_condition(conditions, Condition.SECRET_STORE_READY)
    verdict = store.verdict
    if verdict is None and seen.agents is not None and seen.agents.held:
        return conditions  # not asked during the grace: what it was
    if verdict is None or not wants_secret_store_check(seen.agents):
        verdict = Verdict(
            "Unknown",
            Reason.AGENT_NOT_CONNECTED,
            f"cannot check ClusterSecretStore {store.name!r}: no agent connected",
        )
    return set_condition(conditions, Condition.SECRET_STORE_READY, verdict, generation, seen.now)


def _observability_condition(
    seen: Observed, conditions: list[dict[str, Any]], generation: int | None
) -> list[dict[str, Any]]:
    lookup = seen.observability
    if lookup is None or (not lookup.target.explicit and not lookup.found):
        return remove_condition(conditions, Condition.OBSERVABILITY_PLANE_RESOLVED)
    target = lookup.target
    namespace = seen.cr["metadata"].get("namespace")
    where = f"{target.kind} {target.name!r}" + (
        f" in namespace {namespace}" if target.kind == OBSERVABILITY_PLANE else ""
    )
    verdict = (
        Verdict("True", "ObservabilityPlaneFound", f"{where} found")
        if lookup.found
        else Verdict("False", "ObservabilityPlaneNotFound", f"{where} not found")
    )
    return set_condition(
        conditions, Condition.OBSERVABILITY_PLANE_RESOLVED, verdict, generation, seen.now
    )


def _access_condition(
    seen: Observed, conditions: list[dict[str, Any]], generation: int | None
) -> list[dict[str, Any]]:
    """Present only while it warns; kept as it was while the gateway cannot be asked (or
    its agents are held through the grace)."""
    if seen.agents is None or seen.agents.held:
        return conditions
    warning = access_warning(seen.agents)
    if warning is None:
        return remove_condition(conditions, Condition.AGENT_ACCESS_RESTRICTED)
    return set_condition(
        conditions, Condition.AGENT_ACCESS_RESTRICTED, warning, generation, seen.now
    )


def _access_events(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[EventToPost]:
    """A Warning when the unrestricted-shared-CA warning appears (not on every pass)."""
    old = find_condition(list(before.get("conditions") or []), Condition.AGENT_ACCESS_RESTRICTED)
    new = find_condition(list(after["conditions"]), Condition.AGENT_ACCESS_RESTRICTED)
    if new is None or (old is not None and old.get("message") == new["message"]):
        return []
    return [EventToPost("Warning", new["reason"], new["message"])]


def _transition_events(
    before: Mapping[str, Any], after: Mapping[str, Any], expiring: bool
) -> list[EventToPost]:
    """A Warning on every move into a bad Ready state, a Normal one on recovery, nothing when
    Ready keeps its status and reason; the CA warning whenever Ready is rewritten while the
    CA expires soon (entering that state, or coming back to it)."""
    old = find_condition(list(before.get("conditions") or []), Condition.READY) or {}
    new = find_condition(list(after["conditions"]), Condition.READY) or {}
    events: list[EventToPost] = []
    if expiring and old.get("message") != new["message"]:
        events.append(EventToPost("Warning", Reason.CLIENT_CA_EXPIRING_SOON, new["message"]))
    if (old.get("status"), old.get("reason")) == (new["status"], new["reason"]):
        return events
    if new["status"] == "True":
        events.append(EventToPost("Normal", new["reason"], new["message"]))
    elif new["status"] == "False":
        events.append(EventToPost("Warning", new["reason"], new["message"]))
    return events


def _once(events: list[EventToPost], event: EventToPost) -> None:
    if event not in events:
        events.append(event)


def invalid_spec(message: str) -> Decision:
    """A CR the API server accepted but the models reject: say so, and wait for a change."""
    return Decision(
        events=(EventToPost("Warning", "InvalidSpec", message),), summary="invalid spec"
    )


# ---- CRs being deleted -----------------------------------------------------------------------


def plan_deletion(cr: Mapping[str, Any]) -> bool:
    """Whether the gateway must still be told ``deleted``: only while our finalizer holds."""
    return FINALIZERS[cr["kind"]] in (cr["metadata"].get("finalizers") or [])


def decide_deletion(
    cr: Mapping[str, Any], notified: NotifyOutcome | None, now: dt.datetime | None = None
) -> Decision:
    """Release the finalizer once the gateway has answered: accepted, or refused for good (a
    refusal will not change, and holding the CR forever would not help). Unavailable: retry,
    for ``DELETION_NOTIFY_GIVE_UP``; then released anyway, said in an event. The gateway's
    own watch of the CRs revokes one being deleted without the notify: holding the CR (and
    its namespace) Terminating while no gateway answers protects nothing."""
    if notified is None or not plan_deletion(cr):
        return Decision(summary="nothing to finalize")
    if notified.result != "unavailable":
        return Decision(release_finalizer=True, summary=f"notify deleted {notified.result}")
    since = _deleting_for(cr, now or utcnow())
    if since is None or since < DELETION_NOTIFY_GIVE_UP:
        return Decision(requeue_after=NOTIFY_RETRY_SECONDS, summary="notify deleted owed")
    minutes = DELETION_NOTIFY_GIVE_UP.total_seconds() / 60
    message = (
        f"no gateway answered the deletion's notify for {minutes:g} minutes ({notified.error}): "
        "released anyway; each gateway replica revokes the CR from its own watch of it"
    )
    return Decision(
        events=(EventToPost("Warning", "GatewayNotifyFailed", message),),
        release_finalizer=True,
        summary="notify deleted given up",
    )


def _deleting_for(cr: Mapping[str, Any], now: dt.datetime) -> dt.timedelta | None:
    stamp = (cr.get("metadata") or {}).get("deletionTimestamp")
    try:
        return now - parse_rfc3339(stamp) if isinstance(stamp, str) else None
    except ValueError:
        return None
