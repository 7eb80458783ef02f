"""Which role this replica has under kopf peering, read from the ClusterKopfPeering object.

kopf keeps the election to itself (it pauses a replica while a live peer with a higher
priority exists); it announces every replica in the peering object's status as
``{identity: {priority, lifetime, lastseen}}``. :func:`peer_role` applies kopf's rule to that
status, so readiness can say "leader", "standby", or why the role is not known, and the
``workflowplane_controller_leader`` gauge can tell which replica works.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import socket
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from lightkube import AsyncClient
from lightkube.generic_resource import create_global_resource

from workflowplane.api.kube import get_dict
from workflowplane.kits.clock import Clock, utcnow
from workflowplane.kits.errors import EXPECTED_ERRORS
from workflowplane.kits.health import OK, Verdict

ClusterKopfPeeringResource = create_global_resource(
    "kopf.dev", "v1", "ClusterKopfPeering", "clusterkopfpeerings"
)
Role = Literal["standalone", "leader", "standby", "conflict", "unknown"]
POLL_SECONDS = 5.0


def peer_identity() -> str:
    """kopf's identity rule: ``POD_ID`` if set (else the pod's name), else host/pid/random."""
    pod = os.environ.get("POD_ID") or os.environ.get("POD_NAME")
    if pod:
        return pod
    suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=4))
    return f"{socket.gethostname()}/{os.getpid()}/{suffix}"


def _alive(entry: Mapping[str, Any], now: dt.datetime) -> bool:
    seen = entry.get("lastseen")
    if not isinstance(seen, str):
        return True  # kopf counts a peer without lastseen as seen now
    try:
        last = dt.datetime.fromisoformat(seen.replace("Z", "+00:00"))
    except ValueError:
        return True
    if last.tzinfo is None:
        last = last.replace(tzinfo=dt.UTC)
    return last + dt.timedelta(seconds=int(entry.get("lifetime") or 60)) > now


def peer_role(
    status: Mapping[str, Any], identity: str, priority: int, now: dt.datetime
) -> tuple[Role, str]:
    """kopf's rule: a live peer of higher priority means standby, one of equal priority
    pauses both (conflict); our own entry missing means kopf has not announced us yet."""
    if not isinstance(status.get(identity), Mapping):
        return "unknown", f"this replica ({identity}) is not announced in the peering yet"
    others = {
        name: entry
        for name, entry in status.items()
        if name != identity and isinstance(entry, Mapping) and _alive(entry, now)
    }
    higher = sorted(n for n, e in others.items() if int(e.get("priority") or 0) > priority)
    if higher:
        return "standby", f"standing by for {higher[0]}"
    same = sorted(n for n, e in others.items() if int(e.get("priority") or 0) == priority)
    if same:
        return "conflict", f"same priority as {same[0]}: kopf pauses both"
    return "leader", "elected"


@dataclass
class Leadership:
    """This replica's role, refreshed every few seconds by :meth:`run`."""

    kube: AsyncClient | None
    peering: str | None
    identity: str
    priority: int = 0
    clock: Clock = utcnow
    on_change: Callable[[bool], None] | None = None
    role: Role = "unknown"
    detail: str = "not read yet"

    def __post_init__(self) -> None:
        if self.peering is None:
            self.role, self.detail = "standalone", "no peering"
        self._report()

    @property
    def standing_by(self) -> bool:
        """Another replica leads (or kopf pauses both on equal priorities): kopf's handlers
        are paused, and this replica's own queues must be too."""
        return self.role in ("standby", "conflict")

    def _report(self) -> None:
        if self.on_change is not None:
            self.on_change(self.role in ("standalone", "leader"))

    async def refresh(self) -> None:
        if self.peering is None or self.kube is None:
            return
        try:
            found = await get_dict(self.kube, ClusterKopfPeeringResource, self.peering)
        except EXPECTED_ERRORS as exc:
            self.role, self.detail = "unknown", f"cannot read peering {self.peering}: {exc}"
        else:
            if found is None:
                self.role, self.detail = "unknown", f"peering object {self.peering} not found"
            else:
                status = found.get("status") or {}
                self.role, self.detail = peer_role(
                    status, self.identity, self.priority, self.clock()
                )
        self._report()

    async def run(self) -> None:
        """Poll until cancelled (kopf's own keepalive is about a minute; 5 s is ample)."""
        if self.peering is None:
            return
        while True:
            await self.refresh()
            await asyncio.sleep(POLL_SECONDS)

    def verdict(self) -> Verdict:
        """Ready once the role is known; a standby is ready (standing by is its job)."""
        if self.role in ("standalone", "leader", "standby"):
            return OK
        return Verdict(False, f"peering role {self.role}: {self.detail}")
