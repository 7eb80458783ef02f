"""Patience for a plane whose agent is between two gateway replicas (docs/ha.md).

An agent that dials one replica through a Service (OpenChoreo's Go agent) is on no replica
for a few seconds after its replica dies: it redials after a fixed delay (5 s by default)
and the Service sends it to a live replica. Meanwhile every replica answers "no agent",
marked Unsent (nothing was sent, so waiting and asking again is safe for any method). A
caller that reached the plane lately waits for the agent to come back, with a short backoff,
instead of failing; a plane it never reached (or not lately) fails at once, as before.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

DEFAULT_RECENT_SECONDS = 60.0
DEFAULT_AGENT_WAIT_SECONDS = 8.0  # covers the Go agent's default 5 s redial delay
DEFAULT_RECENT_PLANES = 4096
# Pauses between two rounds over the replicas: short first (the agent may be back at once).
BACKOFF_STEPS = (0.25, 0.5, 1.0, 2.0)
# The answers, marked Unsent, that mean "no agent of the plane here now" (others are a
# verdict about the request itself: 400, 403, 405, 429 come back at once).
NO_AGENT_STATUSES = frozenset({502, 503})


@dataclass(frozen=True)
class AgentPatience:
    """The two settings, as the controller's flags give them to its client."""

    recent_seconds: float = DEFAULT_RECENT_SECONDS
    agent_wait_seconds: float = DEFAULT_AGENT_WAIT_SECONDS


DEFAULT_PATIENCE = AgentPatience()


def check_seconds(name: str, value: float) -> float:
    """A duration setting: a finite number, not negative."""
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a number of seconds >= 0 (got {value!r})")
    return value


class RecentPlanes:
    """Planes this client got a real answer from lately; the least recently reached are
    forgotten first once ``cap`` planes are remembered (memory stays bounded)."""

    def __init__(
        self,
        within_seconds: float = DEFAULT_RECENT_SECONDS,
        cap: int = DEFAULT_RECENT_PLANES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if cap < 1:
            raise ValueError(f"the recent-planes cap must be at least 1 (got {cap})")
        self.within_seconds = check_seconds("recent_seconds", within_seconds)
        self.cap = cap
        self._clock = clock
        self._reached: OrderedDict[str, float] = OrderedDict()

    def reached(self, plane: str) -> None:
        self._reached[plane] = self._clock()
        self._reached.move_to_end(plane)
        while len(self._reached) > self.cap:
            self._reached.popitem(last=False)

    def recent(self, plane: str) -> bool:
        at = self._reached.get(plane)
        return at is not None and self._clock() - at <= self.within_seconds

    def __len__(self) -> int:
        return len(self._reached)


def pauses(wait_seconds: float, deadline: float) -> Iterator[float]:
    """The pauses before each new round, from now: 0.25, 0.5, 1, 2, 2 ... s, the last cut so
    that the rounds end within ``wait_seconds`` and before ``deadline`` (monotonic)."""
    ends = min(time.monotonic() + wait_seconds, deadline)
    step = 0
    while True:
        left = ends - time.monotonic()
        if left <= 0:
            return
        yield min(BACKOFF_STEPS[min(step, len(BACKOFF_STEPS) - 1)], left)
        step += 1


@dataclass
class Round:
    """What one pass over the replicas says about waiting: worth it when at least one replica
    said it has no agent of the plane now, and none gave a verdict about the request itself.

    Waiting is safe whenever a round ends without an answer: a miss that may have reached the
    agent (a 502 without Unsent, a connection lost mid-request) ends the request at once
    unless the method may be repeated (``may_retry``), and then a later round may too."""

    no_agent: bool = False
    settled: bool = False

    def unsent(self, status: int) -> None:
        """An answer marked Unsent, with its status."""
        if status in NO_AGENT_STATUSES:
            self.no_agent = True
        else:
            self.settled = True

    @property
    def agent_may_come_back(self) -> bool:
        return self.no_agent and not self.settled
