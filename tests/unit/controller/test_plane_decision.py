"""The plane reconcile decisions, table by table: what a pass does for what it saw."""

from __future__ import annotations

import copy
import datetime as dt
from dataclasses import dataclass, replace
from typing import Any

import pytest

from workflowplane.api import CLUSTER_WORKFLOW_PLANE, FINALIZERS, WORKFLOW_PLANE, Condition, Reason
from workflowplane.api.conditions import Verdict, find_condition
from workflowplane.controller.plane_decision import (
    NOTIFY_RETRY_SECONDS,
    Decision,
    EventToPost,
    NotifyOutcome,
    ObservabilityLookup,
    ObservabilityTarget,
    Observed,
    SecretStoreCheck,
    decide_deletion,
    decide_status,
    invalid_spec,
    plan_deletion,
    plan_notify,
)
from workflowplane.controller.status import AgentObservation, CAHealth, agent_observation
from workflowplane.protocol.replica_status import merge_plane_status

T0 = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)
RESYNC = 60.0
OURS = FINALIZERS[WORKFLOW_PLANE]
HEALTHY = CAHealth(None, T0 + dt.timedelta(days=365))
EXPIRING = CAHealth(None, T0 + dt.timedelta(days=10))
CONNECTED = AgentObservation(1, T0)
NO_AGENTS = AgentObservation(0, None)
CONSENT_REFUSED = AgentObservation(0, None, consent_refused_agents=2)
SHARED_UNRESTRICTED = AgentObservation(1, T0, unrestricted_shared_with=("org1", "org2"))
ACCEPTED = NotifyOutcome("updated", "accepted")
GRACE = 10.0


def replicas(*agents_per_replica: list[str]) -> AgentObservation:
    """What the controller observes when each replica reports these agent instances."""
    answers = [
        {"replica": f"gw-{i}", "agents": agents, "lastSeen": "2026-11-24T12:00:00Z"}
        for i, agents in enumerate(agents_per_replica)
    ]
    return agent_observation(merge_plane_status(answers))


def missing_for(seconds: float) -> dt.datetime:
    return T0 - dt.timedelta(seconds=seconds)


REFUSED = NotifyOutcome("updated", "refused", "400: notify needs planeType")


def plane(
    *,
    kind: str = WORKFLOW_PLANE,
    generation: int = 1,
    status: dict[str, Any] | None = None,
    finalizers: tuple[str, ...] = (OURS,),
    deleting: bool = False,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": "wp",
        "generation": generation,
        "resourceVersion": "7",
        "finalizers": list(finalizers),
    }
    if kind == WORKFLOW_PLANE:
        meta["namespace"] = "team"
    if deleting:
        meta["deletionTimestamp"] = "2026-11-24T12:00:00Z"
    cr: dict[str, Any] = {"kind": kind, "metadata": meta, "spec": {"planeID": "p1"}}
    if status is not None:
        cr["status"] = status
    return cr


def seen(cr: dict[str, Any], **changes: Any) -> Observed:
    base = Observed(cr=cr, now=T0, ca=HEALTHY, agents=CONNECTED)
    return replace(base, **changes)


def settled(ca: CAHealth = HEALTHY, agents: AgentObservation | None = CONNECTED) -> dict[str, Any]:
    """A CR whose status is what a first pass with these observations wrote."""
    first = plane(finalizers=())
    decision = decide_status(
        seen(first, ca=ca, agents=agents),
        NotifyOutcome("created", "accepted"),
        resync_seconds=RESYNC,
    )
    assert decision.status is not None
    return plane(status=copy.deepcopy(decision.status))


def ready_of(decision: Decision, before: dict[str, Any]) -> dict[str, Any]:
    status = decision.status if decision.status is not None else before.get("status") or {}
    return find_condition(status["conditions"], "Ready") or {}


# ---- step 1: finalizer and notification --------------------------------------------------


@dataclass(frozen=True)
class NotifyCase:
    cr: dict[str, Any]
    force: bool
    add_finalizer: bool
    notify: str | None


NOTIFY_CASES = {
    "first acceptance": NotifyCase(plane(finalizers=()), False, True, "created"),
    "first acceptance, finalizer already there": NotifyCase(plane(), False, False, "created"),
    "spec change": NotifyCase(
        plane(generation=2, status=settled()["status"]), False, False, "updated"
    ),
    "CA Secret change (forced)": NotifyCase(settled(), True, False, "updated"),
    "resync, nothing changed": NotifyCase(settled(), False, False, None),
    "finalizer removed by hand": NotifyCase(
        plane(finalizers=("other",), status=settled()["status"]), False, True, None
    ),
}


@pytest.mark.parametrize("case", NOTIFY_CASES.values(), ids=NOTIFY_CASES.keys())
def test_plan_notify(case: NotifyCase) -> None:
    plan = plan_notify(case.cr, force=case.force)
    assert (plan.add_finalizer, plan.notify) == (case.add_finalizer, case.notify)


def test_cluster_planes_use_their_own_finalizer() -> None:
    cr = plane(kind=CLUSTER_WORKFLOW_PLANE, finalizers=(OURS,))
    assert plan_notify(cr).add_finalizer  # the namespaced kind's finalizer is not ours


# ---- step 2: status, events, requeue ------------------------------------------------------


@dataclass(frozen=True)
class StatusCase:
    before: dict[str, Any]  # the CR as the pass read it
    changes: dict[str, Any]  # what the pass observed, over a healthy CA and one agent
    notified: NotifyOutcome | None
    ready: tuple[str, str]  # Ready status and reason afterwards
    events: tuple[tuple[str, str], ...]  # (type, reason) of each event, in order
    written: bool = True
    requeue: float = RESYNC


STATUS_CASES = {
    "first acceptance": StatusCase(
        plane(finalizers=()),
        {},
        NotifyOutcome("created", "accepted"),
        ("True", Reason.READY),
        (("Normal", Reason.READY), ("Normal", "ReconcileComplete")),
    ),
    "first acceptance, no agent yet": StatusCase(
        plane(finalizers=()),
        {"agents": NO_AGENTS},
        NotifyOutcome("created", "accepted"),
        ("False", Reason.AGENT_NOT_CONNECTED),
        (("Warning", Reason.AGENT_NOT_CONNECTED), ("Normal", "ReconcileComplete")),
    ),
    "resync, nothing changed (no write, no event)": StatusCase(
        settled(), {}, None, ("True", Reason.READY), (), written=False
    ),
    "forced resync, nothing changed (no write, no event)": StatusCase(
        settled(), {}, ACCEPTED, ("True", Reason.READY), (), written=False
    ),
    "spec change, still connected": StatusCase(
        plane(generation=2, status=settled()["status"]),
        {},
        ACCEPTED,
        ("True", Reason.READY),
        (),
    ),
    "CA invalid": StatusCase(
        settled(),
        {"ca": CAHealth(Verdict("False", Reason.CLIENT_CA_INVALID, "client CA: bad PEM"))},
        None,
        ("False", Reason.CLIENT_CA_INVALID),
        (("Warning", Reason.CLIENT_CA_INVALID),),
    ),
    "CA Secret gone": StatusCase(
        settled(),
        {"ca": CAHealth(Verdict("False", Reason.CLIENT_CA_NOT_FOUND, "Secret team/ca not found"))},
        ACCEPTED,
        ("False", Reason.CLIENT_CA_NOT_FOUND),
        (("Warning", Reason.CLIENT_CA_NOT_FOUND),),
    ),
    "CA expired": StatusCase(
        settled(),
        {"ca": CAHealth(Verdict("False", Reason.CLIENT_CA_EXPIRED, "expired"), T0)},
        None,
        ("False", Reason.CLIENT_CA_EXPIRED),
        (("Warning", Reason.CLIENT_CA_EXPIRED),),
    ),
    "CA now expiring soon: ready, with a warning": StatusCase(
        settled(),
        {"ca": EXPIRING},
        None,
        ("True", Reason.READY),
        (("Warning", Reason.CLIENT_CA_EXPIRING_SOON),),
    ),
    "CA still expiring soon: nothing new": StatusCase(
        settled(ca=EXPIRING),
        {"ca": EXPIRING},
        None,
        ("True", Reason.READY),
        (),
        written=False,
    ),
    "reconnected while the CA expires soon: both": StatusCase(
        settled(ca=EXPIRING, agents=NO_AGENTS),
        {"ca": EXPIRING},
        None,
        ("True", Reason.READY),
        (("Warning", Reason.CLIENT_CA_EXPIRING_SOON), ("Normal", Reason.READY)),
    ),
    "last agent gone": StatusCase(
        settled(),
        {"agents": NO_AGENTS},
        None,
        ("False", Reason.AGENT_NOT_CONNECTED),
        (("Warning", Reason.AGENT_NOT_CONNECTED),),
    ),
    "agents trust this CA but their owner's allow-list leaves this CR out": StatusCase(
        settled(),
        {"agents": CONSENT_REFUSED},
        None,
        ("False", Reason.AGENT_CONSENT_REFUSED),
        (("Warning", Reason.AGENT_CONSENT_REFUSED),),
    ),
    "gateway status unavailable: Unknown, no event": StatusCase(
        settled(),
        {"agents": None},
        None,
        ("Unknown", Reason.AGENT_NOT_CONNECTED),
        (),
    ),
    "agent connected again": StatusCase(
        settled(agents=NO_AGENTS),
        {},
        None,
        ("True", Reason.READY),
        (("Normal", Reason.READY),),
    ),
    "gateway refused the notification": StatusCase(
        settled(),
        {},
        REFUSED,
        ("False", Reason.GATEWAY_NOTIFY_FAILED),
        (("Warning", Reason.GATEWAY_NOTIFY_FAILED),),
    ),
    "HA: one agent on 3 replicas is 1 agent": StatusCase(
        settled(),
        {"agents": replicas(["a"], ["a"], ["a"])},
        None,
        ("True", Reason.READY),
        (),
        written=False,
    ),
    "HA: one replica dropped it: still connected, no event": StatusCase(
        settled(),
        {"agents": replicas(["a"], [], ["a"])},
        None,
        ("True", Reason.READY),
        (),
        written=False,
    ),
    "HA: every replica dropped it, within the grace: held, looked at when it ends": StatusCase(
        settled(),
        {"agents": replicas([], [], []), "agents_missing_since": missing_for(3)},
        None,
        ("True", Reason.READY),
        (),
        written=False,
        requeue=GRACE - 3,
    ),
    "HA: every replica dropped it, the grace is over: disconnected": StatusCase(
        settled(),
        {"agents": replicas([], [], []), "agents_missing_since": missing_for(GRACE)},
        None,
        ("False", Reason.AGENT_NOT_CONNECTED),
        (("Warning", Reason.AGENT_NOT_CONNECTED),),
    ),
    "HA: never connected: no grace": StatusCase(
        settled(agents=NO_AGENTS),
        {"agents": NO_AGENTS, "agents_missing_since": missing_for(1)},
        None,
        ("False", Reason.AGENT_NOT_CONNECTED),
        (),
        written=False,
    ),
    "gateway notification failed transiently: owed, retried soon": StatusCase(
        settled(),
        {},
        NotifyOutcome("updated", "unavailable", "503"),
        ("True", Reason.READY),
        (),
        written=False,
        requeue=NOTIFY_RETRY_SECONDS,
    ),
}


@pytest.mark.parametrize("case", STATUS_CASES.values(), ids=STATUS_CASES.keys())
def test_decide_status(case: StatusCase) -> None:
    decision = decide_status(
        seen(case.before, **case.changes), case.notified, resync_seconds=RESYNC, grace_seconds=GRACE
    )
    ready = ready_of(decision, case.before)
    assert (ready["status"], ready["reason"]) == case.ready
    assert [(e.type, e.reason) for e in decision.events] == list(case.events)
    assert (decision.status is not None) == case.written
    assert decision.requeue_after == case.requeue
    assert decision.notify_owed == (case.requeue == NOTIFY_RETRY_SECONDS)
    assert not decision.release_finalizer


def test_first_acceptance_sets_created_per_kind() -> None:
    for kind, reason in (
        (WORKFLOW_PLANE, "WorkflowPlaneCreated"),
        (CLUSTER_WORKFLOW_PLANE, "ClusterWorkflowPlaneCreated"),
    ):
        decision = decide_status(
            seen(plane(kind=kind, finalizers=())),
            NotifyOutcome("created", "accepted"),
            resync_seconds=RESYNC,
        )
        assert decision.status is not None
        created = find_condition(decision.status["conditions"], "Created")
        assert created is not None and (created["status"], created["reason"]) == ("True", reason)
        assert decision.status["observedGeneration"] == 1
        assert EventToPost("Normal", "ReconcileComplete", f"{kind} accepted by the controller") in (
            decision.events
        )


def test_expiring_soon_is_said_in_the_ready_message_and_the_warning() -> None:
    decision = decide_status(seen(settled(), ca=EXPIRING), None, resync_seconds=RESYNC)
    message = ready_of(decision, {})["message"]
    assert message == "1 agent connected; client CA expires 2026-12-04: rotate it soon"
    assert decision.events == (EventToPost("Warning", Reason.CLIENT_CA_EXPIRING_SOON, message),)


def test_a_refusal_holds_for_its_generation_until_notified_again() -> None:
    refused = decide_status(seen(settled()), REFUSED, resync_seconds=RESYNC)
    assert refused.status is not None
    assert ready_of(refused, {})["message"] == (
        "gateway refused notify updated: 400: notify needs planeType"
    )
    after = plane(status=refused.status)
    again = decide_status(seen(after), None, resync_seconds=RESYNC)  # a resync, an event
    assert again.status is None and again.events == ()
    retried = decide_status(seen(after), ACCEPTED, resync_seconds=RESYNC)
    assert ready_of(retried, after)["status"] == "True"
    assert [(e.type, e.reason) for e in retried.events] == [("Normal", Reason.READY)]
    renewed = plane(generation=2, status=refused.status)
    assert plan_notify(renewed).notify == "updated"  # a new generation is notified anew


def test_a_repeated_refusal_is_recorded_each_time() -> None:
    refused = decide_status(seen(settled()), REFUSED, resync_seconds=RESYNC)
    assert refused.status is not None
    again = decide_status(seen(plane(status=refused.status)), REFUSED, resync_seconds=RESYNC)
    assert again.status is None
    assert [(e.type, e.reason) for e in again.events] == [("Warning", Reason.GATEWAY_NOTIFY_FAILED)]


def test_agent_connection_is_kept_while_the_gateway_cannot_say() -> None:
    before = settled()
    decision = decide_status(seen(before, agents=None), None, resync_seconds=RESYNC)
    assert decision.status is not None
    assert decision.status["agentConnection"] == before["status"]["agentConnection"]


DEFAULT = ObservabilityTarget("ObservabilityPlane", "default", explicit=False)
EXPLICIT = ObservabilityTarget("ClusterObservabilityPlane", "shared", explicit=True)
STORE, OBSERVABILITY = "SecretStoreReady", "ObservabilityPlaneResolved"
# (what the pass observed, the condition, its (status, reason, message) or None for absent)
OPTIONAL_CONDITION_CASES: dict[str, tuple[dict[str, Any], str, tuple[str, ...] | None]] = {
    "no secretStoreRef: no condition": ({}, STORE, None),
    "secret store, no agent to ask": (
        {"secret_store": SecretStoreCheck("vault", None), "agents": NO_AGENTS},
        STORE,
        (
            "Unknown",
            Reason.AGENT_NOT_CONNECTED,
            "cannot check ClusterSecretStore 'vault': no agent connected",
        ),
    ),
    "secret store found in the plane": (
        {"secret_store": SecretStoreCheck("vault", Verdict("True", "SecretStoreFound", "ok"))},
        STORE,
        ("True", "SecretStoreFound", "ok"),
    ),
    "secret store missing in the plane": (
        {"secret_store": SecretStoreCheck("vault", Verdict("False", "SecretStoreNotFound", "no"))},
        STORE,
        ("False", "SecretStoreNotFound", "no"),
    ),
    "no observability plane to resolve": ({}, OBSERVABILITY, None),
    "namespace default observability plane absent: no condition": (
        {"observability": ObservabilityLookup(DEFAULT, False)},
        OBSERVABILITY,
        None,
    ),
    "namespace default observability plane found": (
        {"observability": ObservabilityLookup(DEFAULT, True)},
        OBSERVABILITY,
        ("True", "ObservabilityPlaneFound", "ObservabilityPlane 'default' in namespace team found"),
    ),
    "explicit observability plane missing": (
        {"observability": ObservabilityLookup(EXPLICIT, False)},
        OBSERVABILITY,
        ("False", "ObservabilityPlaneNotFound", "ClusterObservabilityPlane 'shared' not found"),
    ),
}


@pytest.mark.parametrize(
    ("changes", "type_", "expected"),
    OPTIONAL_CONDITION_CASES.values(),
    ids=OPTIONAL_CONDITION_CASES.keys(),
)
def test_optional_conditions(
    changes: dict[str, Any], type_: str, expected: tuple[str, ...] | None
) -> None:
    before = settled()
    decision = decide_status(seen(before, **changes), None, resync_seconds=RESYNC)
    condition = find_condition((decision.status or before["status"])["conditions"], type_)
    if expected is None:
        assert condition is None
    else:
        assert condition is not None
        assert (condition["status"], condition["reason"], condition["message"]) == expected


def test_an_invalid_spec_is_reported_and_waits_for_a_change() -> None:
    decision = invalid_spec("spec.planeID: too long")
    assert decision.events == (EventToPost("Warning", "InvalidSpec", "spec.planeID: too long"),)
    assert decision.status is None and decision.requeue_after is None


# ---- deletion -----------------------------------------------------------------------------


DELETED_AT = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)  # plane(deleting=True)'s
DELETION_CASES = {
    "accepted: finalizer released": (NotifyOutcome("deleted", "accepted"), True, None),
    "refused for good: still released": (NotifyOutcome("deleted", "refused", "400"), True, None),
    "gateway unavailable: held, retried": (
        NotifyOutcome("deleted", "unavailable", "503"),
        False,
        NOTIFY_RETRY_SECONDS,
    ),
}


@pytest.mark.parametrize(
    ("notified", "released", "requeue"), DELETION_CASES.values(), ids=DELETION_CASES.keys()
)
def test_deletion(notified: NotifyOutcome, released: bool, requeue: float | None) -> None:
    cr = plane(deleting=True, status=settled()["status"])
    assert plan_deletion(cr)  # the gateway is told "deleted" while our finalizer holds
    decision = decide_deletion(cr, notified, DELETED_AT + dt.timedelta(minutes=1))
    assert decision.release_finalizer == released
    assert decision.requeue_after == requeue
    assert decision.status is None and decision.events == ()


def test_a_deletion_no_gateway_answers_is_released_after_a_while_saying_so() -> None:
    """It was held for ever: the CR and its namespace stayed Terminating while the gateway
    was down, though each replica revokes a CR being deleted from its own watch."""
    cr = plane(deleting=True, status=settled()["status"])
    down = NotifyOutcome("deleted", "unavailable", "connection refused")
    decision = decide_deletion(cr, down, DELETED_AT + dt.timedelta(minutes=5, seconds=1))
    assert decision.release_finalizer and decision.requeue_after is None
    (event,) = decision.events
    assert event.type == "Warning" and event.reason == "GatewayNotifyFailed"
    assert "connection refused" in event.message and "released anyway" in event.message


def test_deletion_without_our_finalizer_does_nothing() -> None:
    cr = plane(deleting=True, finalizers=("someone-else",))
    assert not plan_deletion(cr)
    decision = decide_deletion(cr, None)
    assert not decision.release_finalizer and decision.requeue_after is None


def _access(decision: Decision, before: dict[str, Any]) -> dict[str, Any] | None:
    status = decision.status if decision.status is not None else before.get("status") or {}
    return find_condition(status["conditions"], Condition.AGENT_ACCESS_RESTRICTED)


def test_an_unrestricted_shared_ca_warns_once_and_clears_when_restricted() -> None:
    before = settled()
    warned = decide_status(seen(before, agents=SHARED_UNRESTRICTED), None, resync_seconds=RESYNC)
    condition = _access(warned, before)
    assert condition is not None and condition["status"] == "False"
    assert condition["reason"] == Reason.SHARED_CA_UNRESTRICTED
    assert "org1, org2" in condition["message"] and "allowedNamespaces" in condition["message"]
    assert [(e.type, e.reason) for e in warned.events] == [
        ("Warning", Reason.SHARED_CA_UNRESTRICTED)
    ]
    assert find_condition(warned.status["conditions"], "Ready")["status"] == "True"  # type: ignore[index]
    still = plane(status=copy.deepcopy(warned.status))
    again = decide_status(seen(still, agents=SHARED_UNRESTRICTED), None, resync_seconds=RESYNC)
    assert again.status is None and again.events == (), "no new write or event while it holds"
    restricted = decide_status(seen(still, agents=CONNECTED), None, resync_seconds=RESYNC)
    assert _access(restricted, still) is None


def test_the_access_warning_is_kept_while_the_gateway_cannot_be_asked() -> None:
    warned = plane(
        status=copy.deepcopy(
            decide_status(
                seen(settled(), agents=SHARED_UNRESTRICTED), None, resync_seconds=RESYNC
            ).status
        )
    )
    blind = decide_status(seen(warned, agents=None), None, resync_seconds=RESYNC)
    assert _access(blind, warned) is not None


# ---- HA: a replica's restart is no disconnect --------------------------------------------------


def passes(
    before: dict[str, Any], steps: list[tuple[float, AgentObservation, float | None]]
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Passes at T0 + offset, each with what it observed and since when no replica had an
    agent (seconds before T0, None: one had); the status and every event posted."""
    cr, events = before, []
    for offset, agents, missing_at in steps:
        now = T0 + dt.timedelta(seconds=offset)
        since = None if missing_at is None else T0 + dt.timedelta(seconds=missing_at)
        decision = decide_status(
            seen(cr, now=now, agents=agents, agents_missing_since=since),
            None,
            resync_seconds=RESYNC,
            grace_seconds=GRACE,
        )
        events += [(e.type, e.reason) for e in decision.events]
        if decision.status is not None:
            cr = plane(status=decision.status)
    return cr, events


def test_an_agent_back_within_the_grace_made_no_transition() -> None:
    before = settled()
    after, events = passes(
        before,
        [(0, replicas([], []), 0), (4, replicas([], []), 0), (6, replicas([], ["a"]), None)],
    )
    assert events == []
    assert after["status"]["agentConnection"] == before["status"]["agentConnection"]


def test_an_agent_gone_for_good_is_disconnected_once_after_the_grace() -> None:
    after, events = passes(
        settled(),
        [
            (0, replicas([], []), 0),
            (GRACE - 1, replicas([], []), 0),
            (GRACE, replicas([], []), 0),
            (GRACE + 30, replicas([], []), 0),
        ],
    )
    assert events == [("Warning", Reason.AGENT_NOT_CONNECTED)]
    connection = after["status"]["agentConnection"]
    assert connection["connected"] is False and connection["connectedAgents"] == 0


def test_the_secret_store_and_access_conditions_hold_through_the_grace() -> None:
    store = SecretStoreCheck("default", Verdict("True", "SecretStoreFound", "found"))
    first = decide_status(
        seen(settled(agents=SHARED_UNRESTRICTED), secret_store=store, agents=SHARED_UNRESTRICTED),
        None,
        resync_seconds=RESYNC,
    )
    before = plane(status=first.status)
    held = decide_status(
        seen(
            before,
            agents=NO_AGENTS,
            agents_missing_since=T0,
            secret_store=SecretStoreCheck("default", None),
        ),
        None,
        resync_seconds=RESYNC,
        grace_seconds=GRACE,
    )
    assert held.status is None and held.events == ()


def test_an_own_agents_refused_certificate_is_the_ready_reason_and_said_once() -> None:
    """The gateway refused a certificate this CR's CA signed (here: expired), and no agent
    is connected: AgentCertificateRejected with the gateway's reason, one Warning, and
    back to AgentNotConnected once the gateway stops saying it."""
    answer = merge_plane_status(
        [
            {"replica": "gw-0", "agents": [], "connectedAgents": 0},
            {
                "replica": "gw-1",
                "agents": [],
                "connectedAgents": 0,
                "certificateRejected": "client certificate expired at 2026-11-20 00:00:00",
            },
        ]
    )
    rejected = agent_observation(answer)
    before = settled(agents=NO_AGENTS)
    decision = decide_status(seen(before, agents=rejected), None, resync_seconds=RESYNC)
    ready = ready_of(decision, before)
    assert (ready["status"], ready["reason"]) == ("False", Reason.AGENT_CERTIFICATE_REJECTED)
    assert "expired at 2026-11-20" in ready["message"]
    assert decision.status is not None
    assert "signed by this CR's client CA" in decision.status["agentConnection"]["message"]
    assert [(e.type, e.reason) for e in decision.events] == [
        ("Warning", Reason.AGENT_CERTIFICATE_REJECTED)
    ]
    after = plane(status=copy.deepcopy(decision.status))
    again = decide_status(seen(after, agents=rejected), None, resync_seconds=RESYNC)
    assert again.status is None and again.events == ()
    cleared = decide_status(seen(after, agents=NO_AGENTS), None, resync_seconds=RESYNC)
    assert ready_of(cleared, after)["reason"] == Reason.AGENT_NOT_CONNECTED
    connected = replace(rejected, connected_agents=1, last_seen=T0)
    decision = decide_status(seen(after, agents=connected), None, resync_seconds=RESYNC)
    assert ready_of(decision, after)["reason"] == Reason.READY  # a connected agent wins


def test_a_refusal_reason_from_a_gateway_is_one_bounded_line() -> None:
    told = agent_observation({"certificateRejected": "line one\nline two " + "x" * 2000})
    assert "\n" not in told.certificate_rejected
    assert len(told.certificate_rejected) == 512
    assert agent_observation({"certificateRejected": 7}).certificate_rejected == ""
