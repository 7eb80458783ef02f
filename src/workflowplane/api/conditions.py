"""Kubernetes-style conditions: the same arithmetic for every kind this project writes."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Literal

from workflowplane.kits.clock import rfc3339
from workflowplane.kits.text import within

ConditionStatus = Literal["True", "False", "Unknown"]
# metav1.Condition's maxLengths (every CRD here says the same): a longer message or reason
# makes the whole status write fail (422), and with it every later one that carries it.
MAX_MESSAGE_LENGTH = 32768
MAX_REASON_LENGTH = 1024


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
        "reason": within(verdict.reason, MAX_REASON_LENGTH),
        "message": within(verdict.message or verdict.reason, MAX_MESSAGE_LENGTH),
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


def remove_condition(conditions: list[dict[str, Any]], type_: str) -> list[dict[str, Any]]:
    return [c for c in conditions if c.get("type") != type_]


def find_condition(conditions: list[dict[str, Any]], type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions if c.get("type") == type_), None)
