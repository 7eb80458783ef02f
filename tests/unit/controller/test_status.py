"""The status rules of the plane API, one at a time."""

from __future__ import annotations

import datetime as dt

from workflowplane.api import Reason
from workflowplane.api.conditions import Verdict, set_condition
from workflowplane.controller.status import (
    AgentObservation,
    CAHealth,
    assess_ca,
    connection_message,
    next_agent_connection,
    readiness,
)
from workflowplane.pki import generate_ca, issue_certificate

T0 = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)
T1 = T0 + dt.timedelta(minutes=5)


def test_connection_messages_match_the_spec() -> None:
    assert connection_message(0) == "No agents connected"
    assert connection_message(1) == "1 agent connected"
    assert connection_message(3) == "3 agents connected (HA mode)"


def test_connect_sets_last_connected_only_on_transition() -> None:
    first = next_agent_connection(None, AgentObservation(1, T0), T0)
    assert first["connected"] is True and first["lastConnectedTime"] == "2026-11-24T12:00:00Z"
    again = next_agent_connection(first, AgentObservation(2, T1), T1)
    assert again["lastConnectedTime"] == first["lastConnectedTime"]
    assert again["message"] == "2 agents connected (HA mode)"
    assert again["lastHeartbeatTime"] == "2026-11-24T12:05:00Z"
    assert "lastDisconnectedTime" not in again


def test_disconnect_sets_last_disconnected_only_on_transition() -> None:
    up = next_agent_connection(None, AgentObservation(1, T0), T0)
    down = next_agent_connection(up, AgentObservation(0, None), T1)
    assert down["connected"] is False and down["connectedAgents"] == 0
    assert down["lastDisconnectedTime"] == "2026-11-24T12:05:00Z"
    assert down["lastHeartbeatTime"] == "2026-11-24T12:00:00Z"  # kept, newest known
    still_down = next_agent_connection(down, AgentObservation(0, None), T1 + dt.timedelta(1))
    assert still_down["lastDisconnectedTime"] == down["lastDisconnectedTime"]
    assert still_down["message"] == "No agents connected"


def test_heartbeat_never_moves_backwards() -> None:
    newer = next_agent_connection(None, AgentObservation(1, T1), T1)
    older = next_agent_connection(newer, AgentObservation(1, T0), T1)
    assert older["lastHeartbeatTime"] == newer["lastHeartbeatTime"]


def test_agents_that_refuse_this_cr_by_their_owners_consent_are_named() -> None:
    seen = AgentObservation(0, None, consent_refused_agents=2)
    status = next_agent_connection(None, seen, T0)
    assert "the plane's owner has not allowed this CR" in status["message"]
    healthy = assess_ca(generate_ca("x").cert_pem, T0)
    assert readiness(healthy, seen).reason == Reason.AGENT_CONSENT_REFUSED


def test_condition_transition_time_moves_only_on_status_change() -> None:
    ready = set_condition([], "Ready", Verdict("False", "AgentNotConnected", "none"), 1, T0)
    same = set_condition(ready, "Ready", Verdict("False", "ClientCANotFound", "gone"), 2, T1)
    assert same[0]["lastTransitionTime"] == ready[0]["lastTransitionTime"]
    assert same[0]["reason"] == "ClientCANotFound" and same[0]["observedGeneration"] == 2
    flipped = set_condition(same, "Ready", Verdict("True", "Ready", "1 agent connected"), 2, T1)
    assert flipped[0]["lastTransitionTime"] == "2026-11-24T12:05:00Z"
    assert len(flipped) == 1


def test_ca_assessment_reasons() -> None:
    assert assess_ca(b"not a pem", T0).verdict.reason == Reason.CLIENT_CA_INVALID  # type: ignore[union-attr]
    ca = generate_ca("ca")
    leaf = issue_certificate(ca, "leaf")
    not_a_ca = assess_ca(leaf.cert_pem, dt.datetime.now(dt.UTC))
    assert not_a_ca.verdict is not None and not_a_ca.verdict.reason == Reason.CLIENT_CA_INVALID
    fine = assess_ca(ca.cert_pem, dt.datetime.now(dt.UTC))
    assert fine.expires is not None
    expired = assess_ca(ca.cert_pem, fine.expires + dt.timedelta(seconds=1))
    assert expired.verdict is not None and expired.verdict.reason == Reason.CLIENT_CA_EXPIRED
    assert fine.verdict is None and not fine.expiring_soon(dt.datetime.now(dt.UTC))
    assert fine.expiring_soon(fine.expires - dt.timedelta(days=10))


def test_a_self_signed_client_leaf_is_a_valid_bundle_to_pin() -> None:
    from tests.certmanager import self_signed_leaf  # noqa: PLC0415

    pinned = assess_ca(self_signed_leaf("p")[0], dt.datetime.now(dt.UTC))
    assert pinned.verdict is None and pinned.expires is not None


def test_readiness_order_ca_first_then_agents() -> None:
    bad_ca = CAHealth(Verdict("False", Reason.CLIENT_CA_NOT_FOUND, "missing"))
    assert readiness(bad_ca, AgentObservation(1, T0)).reason == Reason.CLIENT_CA_NOT_FOUND
    good = CAHealth(None)
    assert readiness(good, AgentObservation(0, None)).reason == Reason.AGENT_NOT_CONNECTED
    assert readiness(good, AgentObservation(1, T0)).status == "True"
    assert readiness(good, None).status == "Unknown"


def test_a_ca_whose_extension_does_not_parse_is_invalid_not_a_crash() -> None:
    """The PEM parses; its basicConstraints' content does not (the CRD takes any string): the
    pass raised, so the status kept saying Ready from the CA before it."""
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import ExtensionOID, NameOID  # noqa: PLC0415

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ca")])
    garbled = x509.UnrecognizedExtension(ExtensionOID.BASIC_CONSTRAINTS, b"\x01\x02x")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(T0 - dt.timedelta(days=1))
        .not_valid_after(T0 + dt.timedelta(days=10))
        .add_extension(garbled, critical=True)
        .sign(key, hashes.SHA256())
    )
    health = assess_ca(cert.public_bytes(serialization.Encoding.PEM), T0)
    assert health.verdict is not None and health.verdict.reason == Reason.CLIENT_CA_INVALID
    assert "extensions do not parse" in health.verdict.message
