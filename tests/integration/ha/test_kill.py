"""kill -9 of one gateway replica under steady proxied load (issue #12): the callers see no
failed GET, the CRs say connected with exact agent counts at every read, and no Warning is
posted for a plane whose agent never left."""

from __future__ import annotations

import pytest
from lightkube import AsyncClient

from tests.integration.ha.conftest import Planes
from tests.integration.ha.fleet import Fleet, StatusRecorder, recording, warnings_for
from tests.integration.ha.load import Load, running_load
from tests.integration.harness import controller_running
from workflowplane.testenv import ApiServer

pytestmark = pytest.mark.integration


async def test_kill_9_of_a_replica_fails_no_request_and_no_status(
    control_plane: ApiServer,
    kube: AsyncClient,
    fleet: Fleet,
    planes: Planes,
    namespace: str,
) -> None:
    """Plane ``wp``: our agent on all three replicas. Plane ``wp-one``: our agent given one
    replica (the third), as an agent that dials one replica is; replicas 0 and 1 reach it by
    forwarding. Replica 1 is killed: it holds ``wp``'s agent but not ``wp-one``'s."""
    killed = fleet.replicas[1]
    meshed = await planes.workflow_plane_agent(namespace, "wp", fleet.public_urls)
    single = await planes.workflow_plane_agent(namespace, "wp-one", fleet.replicas[2].public_url)
    client = await fleet.client()
    load = Load(client, [(meshed, namespace, "wp"), (single, namespace, "wp-one")])
    try:
        async with (
            controller_running(control_plane, fleet.internal_urls),
            recording(StatusRecorder(kube, "wp", namespace), agents=1) as wp_status,
            recording(StatusRecorder(kube, "wp-one", namespace), agents=1) as one_status,
            running_load(load),
        ):
            await load.more(10)
            await killed.kill()
            await load.more(30)  # round-robin: the dead replica comes first for some of them
        assert killed.internal_url in load.missed  # callers did reach for it, and moved on
    finally:
        await client.close()

    assert load.failures == [], load.failed[:5]
    for recorder in (wp_status, one_status):
        assert set(recorder.seen) == {(True, 1)}, recorder.seen
    for name in ("wp", "wp-one"):
        assert await warnings_for(kube, name, namespace) == []
