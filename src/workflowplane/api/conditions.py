"""Kubernetes-style conditions: the same arithmetic for every kind this project writes."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Literal

from workflowplane.kits.clock import rfc3339

ConditionStatus = Literal["True", "False", "Unknown"]
# metav1.Condition's message maxLength (every CRD here says the same): a longer message makes
# the whole status write fail (422), and with it every later one that carries it.
MAX_MESSAGE_LENGTH = 32768


@dataclass(frozen=True)
class Verdict:
    """One condition's desired state."""

    status: ConditionStatus
    reason: str
    message: str


def set_condition(
    conditions: list[dict[str, Any]],
    type_: str,
    verdict: Verdict,
    generation: int | None,
    now: dt.datetime,
) -> list[dict[str, Any]]:
    """A new list with ``type_`` set; lastTransitionTime moves only when the status changes."""
    previous = next((c for c in conditions if c.get("type") == type_), None)
    transition = (
        previous["lastTransitionTime"]
        if previous and previous.get("status") == verdict.status
        else rfc3339(now)
    )
    updated: dict[str, Any] = {
        "type": type_,
        "status": verdict.status,
        "reason": verdict.reason,
        "message": bounded_message(verdict.message or verdict.reason),
        "lastTransitionTime": transition,
    }
    if generation is not None:
        updated["observedGeneration"] = generation
    others = [c for c in conditions if c.get("type") != type_]
    return (
        [*others, updated]
        if previous is None
        else [updated if c.get("type") == type_ else c for c in conditions]
    )


def bounded_message(message: str, limit: int = MAX_MESSAGE_LENGTH) -> str:
    """``message`` within ``limit`` characters (the API server counts characters, as Python
    does): a message built from a gateway's answer or an exception's text has no bound of its
    own. The cut is said, and is the same every time, so the status does not flap."""
    if len(message) <= limit:
        return message
    kept = limit - 40
    return f"{message[:kept]}... ({len(message) - kept} characters cut)"


def remove_condition(conditions: list[dict[str, Any]], type_: str) -> list[dict[str, Any]]:
    return [c for c in conditions if c.get("type") != type_]


def find_condition(conditions: list[dict[str, Any]], type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions if c.get("type") == type_), None)
