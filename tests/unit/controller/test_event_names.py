"""An Event's name is the CR's name and a suffix: for a CR named at the 253-character limit,
the name was 266 characters, the API server refused every Event of that CR (422, logged as a
warning on each transition) and its owner never saw one."""

from __future__ import annotations

import re
from typing import Any

from workflowplane.controller.events import EventRecorder

SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class Kube:
    def __init__(self) -> None:
        self.created: list[Any] = []

    async def create(self, event: Any) -> None:
        self.created.append(event)


async def test_events_of_a_cr_with_a_name_at_the_limit_have_valid_names() -> None:
    kube = Kube()
    fake: Any = kube
    for name in ("a" * 253, "a" * 239 + "-" + "b" * 13, "a" * 239 + "." + "b" * 13):
        cr = {"kind": "WorkflowPlane", "metadata": {"name": name, "namespace": "team"}}
        await EventRecorder(fake).record(cr, "Warning", "ClientCANotFound", "gone")
    names = [event.metadata.name for event in kube.created]
    assert all(len(n) <= 253 and SUBDOMAIN.match(n) for n in names), names
    assert all(event.involvedObject.name.startswith("a" * 200) for event in kube.created)
