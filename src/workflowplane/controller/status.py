"""Pure status arithmetic for planes: conditions, agent connection, CA health.

Nothing here talks to a server, so each rule is unit-tested on its own; the reconciler feeds
it observations and writes back what it returns.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from workflowplane.api.conditions import Verdict
from workflowplane.api.constants import Reason
from workflowplane.kits.clock import parse_rfc3339, rfc3339
from workflowplane.pki import is_pinned_identity, load_certificates

EXPIRY_WARNING = dt.timedelta(days=30)
# lastHeartbeatTime moves only by this much or more (the gateway pings every 30 s). Every
# status write is a watch event and every event a pass: a heartbeat that moved by the second
# made a busy agent's CRs write their status again on the pass their own write caused.
HEARTBEAT_RESOLUTION = dt.timedelta(seconds=30)
MAX_INT32 = 2**31 - 1  # agentConnection.connectedAgents is an int32
MAX_REASON = 512  # characters of a gateway's refusal reason kept in a status message
# Namespaces named in the SharedCAUnrestricted message; the rest are counted (the gateway's
# list has no bound, and the message must stay within the CRD's maxLength, advice included).
SHARED_NAMESPACES_SHOWN = 20


@dataclass(frozen=True)
class CAHealth:
    """What the client CA looks like now; ``verdict`` is None when it is usable."""

    verdict: Verdict | None
    expires: dt.datetime | None = None

    def expiring_soon(self, now: dt.datetime) -> bool:
        return self.expires is not None and self.expires - now < EXPIRY_WARNING


def assess_ca(pem: bytes, now: dt.datetime) -> CAHealth:
    """Parse the CA bundle: invalid and expired CAs each get their own reason. A self-signed
    client certificate counts as a CA here: the gateway pins it (OpenChoreo's chart)."""
    try:
        certificates = load_certificates(pem)
    except ValueError as exc:
        return CAHealth(Verdict("False", Reason.CLIENT_CA_INVALID, f"client CA: {exc}"))
    try:
        usable = any(_is_ca(cert) or is_pinned_identity(cert) for cert in certificates)
    except ValueError as exc:  # an extension whose content does not parse (the PEM does)
        message = f"client CA: a certificate's extensions do not parse: {exc}"
        return CAHealth(Verdict("False", Reason.CLIENT_CA_INVALID, message))
    if not usable:
        return CAHealth(
            Verdict(
                "False",
                Reason.CLIENT_CA_INVALID,
                "client CA: the certificate is not a CA (basicConstraints), nor a "
                "self-signed client certificate to pin",
            )
        )
    expires = max(cert.not_valid_after_utc for cert in certificates)
    if expires <= now:
        return CAHealth(
            Verdict("False", Reason.CLIENT_CA_EXPIRED, f"client CA expired at {rfc3339(expires)}"),
            expires,
        )
    return CAHealth(None, expires)


def _is_ca(cert: Any) -> bool:
    from cryptography import x509  # noqa: PLC0415 - only for the extension class

    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


@dataclass(frozen=True)
class AgentObservation:
    """What the gateway says about the agents of one CR — never about other CRs' agents, so
    that no agent another tenant controls can change this CR's status.

    ``consent_refused_agents``: agents this CR's CA verifies whose owner's allow-list leaves
    this CR out (only the CA's key holder can mint those). ``unrestricted_shared_with``: the
    namespaces of the CRs served by this CR's agents when they carry no allow-list at all.
    """

    connected_agents: int
    last_seen: dt.datetime | None
    consent_refused_agents: int = 0
    unrestricted_shared_with: tuple[str, ...] = ()
    # Why a gateway lately refused an agent certificate this CR's own CA signed (expired,
    # not yet valid, no ClientAuth): only that CA's key holder can mint one.
    certificate_rejected: str = ""
    # Restated from the previous status during the disconnect grace (:func:`through_grace`):
    # no replica has the agent right now, but it has not been gone long enough to say so.
    held: bool = False


def agent_observation(answer: Mapping[str, Any]) -> AgentObservation:
    """The gateway's status answer for one CR (merged over every replica by the client).

    Each value is type-checked: a count that is no int in the CRD's range (0 to int32) counts
    as 0, a lastSeen that is no zoned RFC 3339 time as none, a namespace that is no string is
    left out. Before, ``int()`` and ``fromisoformat`` raised out of the pass (a "bug", retried
    for good, the status never written) and a negative count made a status the CRD refuses."""
    shared = answer.get("unrestrictedSharedCA")
    return AgentObservation(
        connected_agents=_count(answer.get("connectedAgents")),
        last_seen=_moment(answer.get("lastSeen")),
        consent_refused_agents=_count(answer.get("consentRefusedAgents")),
        unrestricted_shared_with=tuple(
            name for name in (shared if isinstance(shared, list) else ()) if isinstance(name, str)
        ),
        certificate_rejected=_reason(answer.get("certificateRejected")),
    )


def _reason(value: Any) -> str:
    """A gateway's refusal reason as a status message may carry it: text, one line, short."""
    if not isinstance(value, str):
        return ""
    line = " ".join(value.split())
    return line if len(line) <= MAX_REASON else line[: MAX_REASON - 1] + "…"


def _count(value: Any) -> int:
    """An agent count as the CRD takes it (int32, not negative); anything else is 0."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INT32:
        return 0
    return value


def _moment(value: Any) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = parse_rfc3339(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def through_grace(
    previous: Mapping[str, Any] | None,
    seen: AgentObservation | None,
    missing_since: dt.datetime | None,
    now: dt.datetime,
    grace_seconds: float,
) -> tuple[AgentObservation | None, float | None]:
    """An agent that vanished from every replica still counts as connected for
    ``grace_seconds`` after it was first seen missing: a replica that restarts takes its
    connections along, and their agents dial another replica within their backoff. Returns
    the observation to decide on, and the seconds left of the grace (None: no grace)."""
    before = previous or {}
    if seen is None or seen.connected_agents > 0 or missing_since is None:
        return seen, None
    if not before.get("connected"):
        return seen, None
    left = grace_seconds - (now - missing_since).total_seconds()
    if left <= 0:
        return seen, None
    held = AgentObservation(
        connected_agents=max(1, int(before.get("connectedAgents") or 1)),
        last_seen=None,
        consent_refused_agents=seen.consent_refused_agents,
        held=True,
    )
    return held, left


def connection_message(agents: int) -> str:
    if agents == 0:
        return "No agents connected"
    if agents == 1:
        return "1 agent connected"
    return f"{agents} agents connected (HA mode)"


def next_agent_connection(
    previous: dict[str, Any] | None, seen: AgentObservation, now: dt.datetime
) -> dict[str, Any]:
    """status.agentConnection after an observation; transition times move only on a change."""
    before = previous or {}
    was_connected = bool(before.get("connected"))
    connected = seen.connected_agents > 0
    result: dict[str, Any] = {
        "connected": connected,
        "connectedAgents": seen.connected_agents,
        "message": _why_not(seen) if not connected else connection_message(seen.connected_agents),
    }
    for key in ("lastConnectedTime", "lastDisconnectedTime", "lastHeartbeatTime"):
        if before.get(key):
            result[key] = before[key]
    if connected and not was_connected:
        result["lastConnectedTime"] = rfc3339(now)
    if was_connected and not connected:
        result["lastDisconnectedTime"] = rfc3339(now)
    if seen.last_seen is not None and _heartbeat_moved(result.get("lastHeartbeatTime"), seen):
        result["lastHeartbeatTime"] = rfc3339(seen.last_seen)
    return result


def _heartbeat_moved(recorded: str | None, seen: AgentObservation) -> bool:
    """Whether ``seen.last_seen`` is worth a write: HEARTBEAT_RESOLUTION newer than the
    recorded heartbeat (or none is recorded, or it cannot be read)."""
    assert seen.last_seen is not None
    if not recorded:
        return True
    try:
        before = parse_rfc3339(recorded)
        return seen.last_seen - before >= HEARTBEAT_RESOLUTION
    except (ValueError, TypeError):  # not RFC 3339, or naive: replace it
        return True


def _why_not(seen: AgentObservation) -> str:
    if seen.consent_refused_agents > 0:
        return (
            f"No agents connected: {seen.consent_refused_agents} agent(s) trust this CR's "
            "client CA, but the plane's owner has not allowed this CR (the agent's allow-list, "
            "clusterAgent.allowedNamespaces, leaves it out)"
        )
    if seen.certificate_rejected:
        return (
            "No agents connected: an agent's certificate, signed by this CR's client CA, was "
            f"refused: {seen.certificate_rejected}"
        )
    return connection_message(0)


def access_warning(seen: AgentObservation | None) -> Verdict | None:
    """A warning while this CR's agents are unrestricted yet serve several namespaces."""
    if seen is None or not seen.unrestricted_shared_with:
        return None
    shared = seen.unrestricted_shared_with
    namespaces = ", ".join(name[:63] for name in shared[:SHARED_NAMESPACES_SHOWN])
    if len(shared) > SHARED_NAMESPACES_SHOWN:
        namespaces += f" and {len(shared) - SHARED_NAMESPACES_SHOWN} more"
    return Verdict(
        "False",
        Reason.SHARED_CA_UNRESTRICTED,
        f"this plane's agent serves CRs in namespaces {namespaces} and carries no allow-list: "
        "anyone with its CA certificate can use the plane; restrict it with the agent's "
        "clusterAgent.allowedNamespaces (or wpctl register --allow)",
    )


def readiness(ca: CAHealth, seen: AgentObservation | None) -> Verdict:
    """Ready: the CA resolves, parses and is current, and an authorized agent is connected."""
    if ca.verdict is not None:
        return ca.verdict
    if seen is None:
        return Verdict("Unknown", Reason.AGENT_NOT_CONNECTED, "gateway status unavailable")
    if seen.connected_agents > 0:
        return Verdict("True", Reason.READY, connection_message(seen.connected_agents))
    if seen.consent_refused_agents > 0:
        return Verdict("False", Reason.AGENT_CONSENT_REFUSED, _why_not(seen))
    if seen.certificate_rejected:
        return Verdict("False", Reason.AGENT_CERTIFICATE_REJECTED, _why_not(seen))
    return Verdict("False", Reason.AGENT_NOT_CONNECTED, "No agents connected")
