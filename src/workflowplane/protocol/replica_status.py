"""One truth from several replicas' status answers: agents are counted, not connections.

Each gateway replica answers for the agent connections it holds, naming the replica
(``replica``) and, per plane, the agent instances it sees (``agents``: our agents send the
same instance id to every replica; OpenChoreo's Go agent gets a per-connection id). An agent
connected to three replicas is one agent. A replica that predates ``agents`` is counted as
before: each of its connections is one agent (``<replica>#<n>``), which keeps one replica's
answer exactly what it was.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from workflowplane.kits.clock import parse_rfc3339

MAX_INSTANCE_ID = 256


def agent_instances(answer: Mapping[str, Any]) -> set[str]:
    """The agent instances one replica's answer for one plane names."""
    agents = answer.get("agents")
    if isinstance(agents, list):
        return {a for a in agents if isinstance(a, str) and 0 < len(a) <= MAX_INSTANCE_ID}
    count = answer.get("connectedAgents")
    replica = str(answer.get("replica") or "")
    return {f"{replica}#{n}" for n in range(count if isinstance(count, int) else 0)}


def _newest(stamps: Iterable[Any]) -> str | None:
    best: tuple[dt.datetime, str] | None = None
    for stamp in stamps:
        if not isinstance(stamp, str):
            continue
        try:
            when = parse_rfc3339(stamp)
        except (ValueError, TypeError):
            continue
        if best is None or when > best[0]:
            best = (when, stamp)
    return best[1] if best else None


def _union(answers: Sequence[Mapping[str, Any]], key: str) -> list[str]:
    return sorted({v for a in answers for v in a.get(key) or () if isinstance(v, str)})


def merge_plane_status(answers: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Several replicas' answers for one plane (or one CR of it) as one answer."""
    if not answers:
        raise ValueError("no replica answered")
    instances = set().union(*(agent_instances(a) for a in answers))
    merged: dict[str, Any] = {
        key: answers[0][key] for key in ("planeType", "planeID") if key in answers[0]
    }
    merged |= {
        "connected": bool(instances),
        "connectedAgents": len(instances),
        "agents": sorted(instances),
        "lastSeen": _newest(a.get("lastSeen") for a in answers),
        "replicas": sorted({str(a.get("replica") or "") for a in answers}),
    }
    if any("consentRefusedAgents" in a for a in answers):
        # Refusing connections carry no instance id: the most any replica saw.
        refused = max(count_of(a.get("consentRefusedAgents")) for a in answers)
        merged["consentRefused"] = refused > 0
        merged["consentRefusedAgents"] = refused
        merged["unrestrictedSharedCA"] = _union(answers, "unrestrictedSharedCA")
    if any("crs" in a for a in answers):
        merged["crs"] = _union(answers, "crs")
    rejected = sorted(r for a in answers if isinstance(r := a.get("certificateRejected"), str))
    if rejected:  # an agent of the CR's own CA refused by some replica: any one of them
        merged["certificateRejected"] = rejected[0]
    return merged


def merge_all_status(answers: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Several replicas' ``/planes/status`` answers: each plane merged across replicas."""
    by_plane: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for answer in answers:
        replica = answer.get("replica")
        for plane in answer.get("planes") or ():
            if isinstance(plane, Mapping):
                key = (str(plane.get("planeType")), str(plane.get("planeID")))
                by_plane.setdefault(key, []).append({"replica": replica, **plane})
    planes = [merge_plane_status(by_plane[key]) for key in sorted(by_plane)]
    replicas = sorted({str(a.get("replica") or "") for a in answers})
    return {"planes": planes, "total": len(planes), "replicas": replicas}


def count_of(value: Any) -> int:
    """A count from a replica's answer; anything that is no non-negative int (a gateway of
    another make, a broken one) counts as 0, rather than raising out of the caller's pass."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return 0
    return value
