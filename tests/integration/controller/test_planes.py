"""The plane controller with a real gateway and real agents (spec: Status, Conditions)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import ssl
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.harness import (
    RunningGateway,
    agent_ca,
    agent_config,
    apply,
    controller_running,
    eventually,
    prepare_agent,
    registered_agent,
    start_agent,
    unique,
    workflow_plane_cr,
    write_agent_identity,
)
from workflowplane.pki import generate_ca, issue_certificate
from workflowplane.testenv import ApiServer
from workflowplane.testenv.tools import kubectl

pytestmark = pytest.mark.integration
PASSES = "workflowplane.controller.plane_reconciler"  # logs one DEBUG record per pass
PEERING = "kopf._core.engines.peering"  # logs INFO "Pausing operations in favour of ..."


def _get(server: ApiServer, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
    extra = ["-n", namespace] if namespace else []
    out = kubectl(
        server.kubeconfig, server.context, "get", kind, name, *extra, "-o", "json", check=False
    )
    return json.loads(out.stdout) if out.returncode == 0 else {}


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    for condition in (obj.get("status") or {}).get("conditions", []):
        if condition["type"] == type_:
            return dict(condition)
    return {}


def _events(server: ApiServer, namespace: str, name: str) -> list[dict[str, Any]]:
    out = kubectl(
        server.kubeconfig,
        server.context,
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        f"involvedObject.name={name}",
        "-o",
        "json",
    ).stdout
    return list(json.loads(out)["items"])


def _passes(
    caplog: pytest.LogCaptureFixture, kind: str, key: str, thread: int | None = None
) -> list[logging.LogRecord]:
    """The controller's reconcile passes over one CR (by one controller thread, if given)."""
    return [
        r
        for r in caplog.records
        if r.name == PASSES
        and r.getMessage().startswith(f"reconciled {kind} {key}:")
        and (thread is None or r.thread == thread)
    ]


def _peering(
    caplog: pytest.LogCaptureFixture, thread: int, message: str
) -> list[logging.LogRecord]:
    """kopf's peering records of one controller thread ("Pausing operations", ...)."""
    return [
        r
        for r in caplog.records
        if r.name == PEERING and r.thread == thread and r.getMessage().startswith(message)
    ]


def _ready_with(obj: dict[str, Any], status: str, reason: str | None = None) -> bool:
    ready = _condition(obj, "Ready")
    return ready.get("status") == status and (reason is None or ready.get("reason") == reason)


async def test_seed_flow_option1_and_option2_become_ready(
    control_plane: ApiServer,
    workflow_plane: ApiServer,
    gw: RunningGateway,
    controller: None,
    namespace: str,
) -> None:
    plane_id = unique("seed")
    config = agent_config(workflow_plane, gw, plane_id, unique("agent-tls"))
    running = await start_agent(config, wait=False)  # refused until a CR trusts its CA
    try:
        ca = agent_ca(workflow_plane, config.secret_name)  # the reference page's kubectl line
        kubectl(
            control_plane.kubeconfig,
            control_plane.context,
            "create",
            "secret",
            "generic",
            "workflowplane-agent-ca",
            "-n",
            namespace,
            "--from-literal=ca.crt=" + ca,
        )
        apply(control_plane, workflow_plane_cr("inline", namespace, plane_id, ca_pem=ca))
        apply(
            control_plane,
            workflow_plane_cr(
                "by-secret", namespace, plane_id, secret=("workflowplane-agent-ca", "ca.crt")
            ),
        )
        for name in ("inline", "by-secret"):
            obj = await eventually(
                lambda n=name: (
                    (o := _get(control_plane, "wp", n, namespace)) and _ready_with(o, "True") and o
                ),
                timeout=15,
            )
            connection = obj["status"]["agentConnection"]
            assert connection["connected"] is True and connection["connectedAgents"] == 1
            assert connection["message"] == "1 agent connected"
            assert connection["lastConnectedTime"] and connection["lastHeartbeatTime"]
            assert _condition(obj, "Created")["reason"] == "WorkflowPlaneCreated"
            assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
            assert "openchoreo.dev/workflowplane-cleanup" in obj["metadata"]["finalizers"]
            assert not any(f.startswith("kopf") for f in obj["metadata"]["finalizers"])
            await eventually(
                lambda n=name: (
                    "ReconcileComplete"
                    in [e["reason"] for e in _events(control_plane, namespace, n)]
                )
            )
    finally:
        await running.stop()


async def test_ha_scale_up_then_all_agents_gone(
    control_plane: ApiServer,
    workflow_plane: ApiServer,
    gw: RunningGateway,
    controller: None,
    namespace: str,
) -> None:
    _, first = await registered_agent(control_plane, workflow_plane, gw, namespace, "ha")
    agents = [await start_agent(first), await start_agent(first.config)]
    obj = await eventually(
        lambda: (
            (o := _get(control_plane, "wp", "wp", namespace))
            and (o.get("status") or {}).get("agentConnection", {}).get("connectedAgents") == 2
            and o
        ),
        timeout=15,
    )
    assert obj["status"]["agentConnection"]["message"] == "2 agents connected (HA mode)"
    for agent in agents:
        await agent.stop()
    obj = await eventually(
        lambda: (
            (o := _get(control_plane, "wp", "wp", namespace))
            and _ready_with(o, "False", "AgentNotConnected")
            and o
        ),
        timeout=15,
    )
    connection = obj["status"]["agentConnection"]
    assert connection["connected"] is False and connection["connectedAgents"] == 0
    assert connection["lastDisconnectedTime"] and connection["message"] == "No agents connected"
    await eventually(
        lambda: any(
            e["reason"] == "AgentNotConnected" and e["type"] == "Warning"
            for e in _events(control_plane, namespace, "wp")
        )
    )


async def test_ca_rotation_in_the_secret_revokes_and_restores_only_that_cr(
    control_plane: ApiServer,
    workflow_plane: ApiServer,
    gw: RunningGateway,
    controller: None,
    namespace: str,
) -> None:
    plane_id = unique("rot")
    config = agent_config(workflow_plane, gw, plane_id, unique("agent-tls"))
    running = await start_agent(config, wait=False)
    ca = agent_ca(workflow_plane, config.secret_name)
    secret = ["create", "secret", "generic", "rotating-ca", "-n", namespace]
    kubectl(control_plane.kubeconfig, control_plane.context, *secret, "--from-literal=ca.crt=" + ca)
    apply(
        control_plane,
        workflow_plane_cr("rotating", namespace, plane_id, secret=("rotating-ca", "ca.crt")),
    )
    apply(control_plane, workflow_plane_cr("steady", namespace, plane_id, ca_pem=ca))
    try:
        for name in ("rotating", "steady"):
            await eventually(
                lambda n=name: _ready_with(_get(control_plane, "wp", n, namespace), "True"),
                timeout=15,
            )
        other = generate_ca("not-the-agents").cert_pem.decode()
        replace = json.dumps({"stringData": {"ca.crt": other}})
        kubectl(
            control_plane.kubeconfig,
            control_plane.context,
            "patch",
            "secret",
            "rotating-ca",
            "-n",
            namespace,
            "-p",
            replace,
        )
        rotated = await eventually(
            lambda: (
                (o := _get(control_plane, "wp", "rotating", namespace))
                and _ready_with(o, "False")
                and o
            ),
            timeout=15,
        )
        # Not AgentCertificateRejected: agents this CR's CA does not verify are nobody this CR
        # can vouch for (a squatter looks the same), so they never shape its status.
        assert _condition(rotated, "Ready")["reason"] == "AgentNotConnected"
        assert _ready_with(_get(control_plane, "wp", "steady", namespace), "True")
        assert (
            await gw.client.plane_status(
                "workflowplane", plane_id, namespace=namespace, name="steady"
            )
        )["connectedAgents"] == 1
        kubectl(
            control_plane.kubeconfig,
            control_plane.context,
            "patch",
            "secret",
            "rotating-ca",
            "-n",
            namespace,
            "-p",
            json.dumps({"stringData": {"ca.crt": ca}}),
        )
        await eventually(
            lambda: _ready_with(_get(control_plane, "wp", "rotating", namespace), "True"),
            timeout=15,
        )
    finally:
        await running.stop()


async def test_bad_client_cas_each_get_their_own_reason(
    control_plane: ApiServer, gw: RunningGateway, controller: None, namespace: str
) -> None:
    plane_id = unique("bad")
    apply(
        control_plane,
        workflow_plane_cr("missing", namespace, plane_id, secret=("no-such-secret", "ca.crt")),
    )
    apply(
        control_plane,
        workflow_plane_cr(
            "malformed",
            namespace,
            plane_id,
            ca_pem="-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n",
        ),
    )
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    expired = generate_ca("old", valid_for=dt.timedelta(days=1), not_before=past)
    apply(
        control_plane,
        workflow_plane_cr("expired", namespace, plane_id, ca_pem=expired.cert_pem.decode()),
    )
    leaf = issue_certificate(generate_ca("x"), "leaf").cert_pem.decode()
    apply(control_plane, workflow_plane_cr("not-a-ca", namespace, plane_id, ca_pem=leaf))
    for name, reason in (
        ("missing", "ClientCANotFound"),
        ("malformed", "ClientCAInvalid"),
        ("expired", "ClientCAExpired"),
        ("not-a-ca", "ClientCAInvalid"),
    ):
        await eventually(
            lambda n=name, r=reason: _ready_with(
                _get(control_plane, "wp", n, namespace), "False", r
            ),
            timeout=15,
        )
        # the event is posted right after the status write: allow it a moment
        await eventually(
            lambda n=name, r=reason: (
                r
                in [
                    e["reason"]
                    for e in _events(control_plane, namespace, n)
                    if e["type"] == "Warning"
                ]
            )
        )


async def test_cluster_workflow_plane_with_spec_change_renotifies(
    control_plane: ApiServer,
    workflow_plane: ApiServer,
    gw: RunningGateway,
    controller: None,
) -> None:
    plane_id, other_id = unique("cwp"), unique("cwp2")
    config = agent_config(workflow_plane, gw, plane_id, unique("agent-tls"))
    running = await start_agent(config, wait=False)
    ca = agent_ca(workflow_plane, config.secret_name) if running.agent.identity else ""
    name = unique("cluster-plane")
    manifest = {
        "apiVersion": "openchoreo.dev/v1alpha1",
        "kind": "ClusterWorkflowPlane",
        "metadata": {"name": name},
        "spec": {"planeID": plane_id, "clusterAgent": {"clientCA": {"value": ca}}},
    }
    apply(control_plane, manifest)
    try:
        obj = await eventually(
            lambda: (o := _get(control_plane, "cwp", name)) and _ready_with(o, "True") and o,
            timeout=20,
        )
        assert _condition(obj, "Created")["reason"] == "ClusterWorkflowPlaneCreated"
        status = await gw.client.plane_status("workflowplane", plane_id, name=name)
        assert status["connectedAgents"] == 1
        manifest["spec"]["planeID"] = other_id  # the agent serves plane_id, not other_id
        apply(control_plane, manifest)
        await eventually(
            lambda: _ready_with(_get(control_plane, "cwp", name), "False", "AgentNotConnected"),
            timeout=15,
        )
        assert (await gw.client.plane_status("workflowplane", plane_id, name=name))[
            "connectedAgents"
        ] == 0  # re-notified: the old planeID lost this CR
        obj = _get(control_plane, "cwp", name)
        assert obj["status"]["observedGeneration"] == 2
    finally:
        # --wait=false: kubectl blocks this process, and the controller runs in it
        kubectl(
            control_plane.kubeconfig, control_plane.context, "delete", "cwp", name, "--wait=false"
        )
        await eventually(lambda: _get(control_plane, "cwp", name) == {}, timeout=15)
        await running.stop()


async def test_deleting_one_cr_leaves_the_others_connected(
    control_plane: ApiServer,
    workflow_plane: ApiServer,
    gw: RunningGateway,
    controller: None,
    namespace: str,
) -> None:
    plane_id = unique("del")
    config = agent_config(workflow_plane, gw, plane_id, unique("agent-tls"))
    running = await start_agent(config, wait=False)
    ca = agent_ca(workflow_plane, config.secret_name)
    for name in ("keep", "drop"):
        apply(control_plane, workflow_plane_cr(name, namespace, plane_id, ca_pem=ca))
    try:
        for name in ("keep", "drop"):
            await eventually(
                lambda n=name: _ready_with(_get(control_plane, "wp", n, namespace), "True"),
                timeout=15,
            )
        kubectl(
            control_plane.kubeconfig,
            control_plane.context,
            "delete",
            "wp",
            "drop",
            "-n",
            namespace,
            "--wait=false",
        )
        await eventually(lambda: _get(control_plane, "wp", "drop", namespace) == {}, timeout=15)
        conns = gw.gateway.connections.for_plane("workflowplane", plane_id)
        assert len(conns) == 1 and conns[0].authorized == {f"{namespace}/keep"}
        assert _ready_with(_get(control_plane, "wp", "keep", namespace), "True")
    finally:
        await running.stop()


async def test_restart_converges_without_an_event_storm(
    control_plane: ApiServer,
    workflow_plane: ApiServer,
    gw: RunningGateway,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=PASSES)
    plane_id = unique("restart")
    config = agent_config(workflow_plane, gw, plane_id, unique("agent-tls"))
    running = await start_agent(config, wait=False)
    apply(
        control_plane,
        workflow_plane_cr(
            "wp", namespace, plane_id, ca_pem=agent_ca(workflow_plane, config.secret_name)
        ),
    )
    try:
        async with controller_running(control_plane, gw):
            await eventually(
                lambda: _ready_with(_get(control_plane, "wp", "wp", namespace), "True"), timeout=15
            )
        before = len(_events(control_plane, namespace, "wp"))
        async with controller_running(control_plane, gw) as restarted:
            # the restarted controller's first pass over the CR is where a storm would start:
            # wait until it is done (its record is logged after its writes and events)
            await eventually(
                lambda: _passes(caplog, "WorkflowPlane", f"{namespace}/wp", restarted.thread_id),
                timeout=15,
            )
            assert _ready_with(_get(control_plane, "wp", "wp", namespace), "True")
        assert len(_events(control_plane, namespace, "wp")) == before
    finally:
        await running.stop()


async def test_connect_to_status_latency(
    control_plane: ApiServer,
    workflow_plane: ApiServer,
    gw: RunningGateway,
    controller: None,
    namespace: str,
    record_property: Any,
) -> None:
    """Figures for the closing note (the assertion only bounds it loosely: not a benchmark)."""
    _, agent = await registered_agent(control_plane, workflow_plane, gw, namespace, "lat")
    await eventually(
        lambda: _ready_with(_get(control_plane, "wp", "wp", namespace), "False"), timeout=15
    )
    samples: list[float] = []
    for _ in range(10):
        started = time.monotonic()
        running = await start_agent(agent.config)
        await eventually(
            lambda: (
                (_get(control_plane, "wp", "wp", namespace).get("status") or {})
                .get("agentConnection", {})
                .get("connected")
                is True
            ),
            timeout=15,
            interval=0.05,
        )
        samples.append(time.monotonic() - started)
        await running.stop()
        await eventually(
            lambda: (
                (_get(control_plane, "wp", "wp", namespace).get("status") or {})
                .get("agentConnection", {})
                .get("connected")
                is False
            ),
            timeout=15,
        )
    median = statistics.median(samples)
    record_property("connect_to_status_median_s", round(median, 3))
    print(
        f"\nagent connect -> status.connected=true: median {median:.2f}s over 10, "
        f"max {max(samples):.2f}s"
    )
    await agent.upstream.close()
    assert median < 10


async def test_two_replicas_with_peering_only_one_acts(
    control_plane: ApiServer,
    gw: RunningGateway,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """kopf peering: the higher-priority replica acts, the other pauses (one event, not two).

    Each replica runs in its own thread, so its log records say which one did what."""
    for logger in (PEERING, PASSES):  # (each call also sets the capturing handler's level)
        caplog.set_level(logging.DEBUG, logger=logger)
    peering = unique("peering")
    kubectl(
        control_plane.kubeconfig,
        control_plane.context,
        "apply",
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": "kopf.dev/v1",
                "kind": "ClusterKopfPeering",
                "metadata": {"name": peering},
            }
        ),
    )

    def announced() -> int:
        out = kubectl(
            control_plane.kubeconfig,
            control_plane.context,
            "get",
            "clusterkopfpeering",
            peering,
            "-o",
            "json",
        ).stdout
        return len(json.loads(out).get("status") or {})

    async with (
        controller_running(control_plane, gw, peering=peering, priority=100) as low,
        controller_running(control_plane, gw, peering=peering, priority=200) as high,
    ):
        await eventually(lambda: announced() == 2, timeout=20)  # both announced themselves
        paused = await eventually(
            lambda: _peering(caplog, low.thread_id, "Pausing operations"), timeout=20
        )  # ... and the lower one paused in favour of the higher
        leader = "workflowplane_controller_leader"  # read from the peering object, as kopf does
        await eventually(lambda: high.sample(leader) == 1 and low.sample(leader) == 0)
        for replica in (low, high):  # a standby is ready too: standing by is its job
            assert replica.health.health.ready_checks["peering"]().ok  # type: ignore[union-attr]
        apply(
            control_plane,
            workflow_plane_cr("peered", namespace, unique("p"), secret=("absent", "ca.crt")),
        )
        key = f"{namespace}/peered"
        await eventually(
            lambda: _ready_with(
                _get(control_plane, "wp", "peered", namespace), "False", "ClientCANotFound"
            ),
            timeout=20,
        )
        # the leader's first pass is done (its record follows its events) ...
        await eventually(lambda: _passes(caplog, "WorkflowPlane", key, high.thread_id))
        # ... and the paused replica made none: one acceptance event, not two
        assert _passes(caplog, "WorkflowPlane", key, low.thread_id) == []
        accepted = [
            e
            for e in _events(control_plane, namespace, "peered")
            if e["reason"] == "ReconcileComplete"
        ]
        assert len(accepted) == 1
        resumed = _peering(caplog, low.thread_id, "Resuming operations")
        assert all(r.created < paused[-1].created for r in resumed)  # and has stayed paused


async def test_a_ca_close_to_expiry_warns_but_stays_ready(
    control_plane: ApiServer,
    workflow_plane: ApiServer,
    gw: RunningGateway,
    controller: None,
    namespace: str,
) -> None:
    """An agent CA with 10 days left: Ready=True, the message and a Warning event say so."""
    from tests.identities import identity_of  # noqa: PLC0415

    plane_id = unique("expiring")
    ca = generate_ca("short-lived", valid_for=dt.timedelta(days=10))
    config = agent_config(workflow_plane, gw, plane_id, unique("agent-tls"))
    agent = await prepare_agent(config)
    await agent.upstream.close()
    from workflowplane.agent.runner import Agent  # noqa: PLC0415

    short = Agent(config)
    short.identity = identity_of(ca, issue_certificate(ca, "agent"))
    running = await start_agent(short, wait=False)
    apply(control_plane, workflow_plane_cr("wp", namespace, plane_id, ca_pem=ca.cert_pem.decode()))
    try:
        obj = await eventually(
            lambda: (
                (o := _get(control_plane, "wp", "wp", namespace)) and _ready_with(o, "True") and o
            ),
            timeout=15,
        )
        assert "client CA expires" in _condition(obj, "Ready")["message"]
        await eventually(
            lambda: (
                "ClientCAExpiringSoon"
                in [e["reason"] for e in _events(control_plane, namespace, "wp")]
            )
        )
    finally:
        await running.stop()


async def test_a_permanent_gateway_refusal_is_recorded(
    control_plane: ApiServer, namespace: str
) -> None:
    """A 4xx from notify is not retried: Ready says why and a Warning event records it."""
    from workflowplane.controller.runner import ControllerConfig, run_controller  # noqa: PLC0415
    from workflowplane.kits.errors import PermanentError, TransientError  # noqa: PLC0415

    class Refusing:
        async def notify(self, **_: Any) -> Any:
            raise PermanentError("400: notify needs planeType", status=400)

        async def plane_status(self, *_: Any, **__: Any) -> Any:
            return {"connectedAgents": 0, "lastSeen": None}

        async def proxy(self, *_: Any, **__: Any) -> Any:
            raise TransientError("502: no agent", status=502)

        async def events(self) -> Any:
            await asyncio.sleep(3600)
            yield {}

    stop, ready = asyncio.Event(), asyncio.Event()
    config = ControllerConfig(kubeconfig=control_plane.kubeconfig, context=control_plane.context)
    task = asyncio.create_task(run_controller(config, Refusing(), stop_flag=stop, ready_flag=ready))
    try:
        await asyncio.wait_for(ready.wait(), 30)
        apply(
            control_plane,
            workflow_plane_cr(
                "refused", namespace, unique("p"), ca_pem=generate_ca("x").cert_pem.decode()
            ),
        )
        await eventually(
            lambda: _ready_with(
                _get(control_plane, "wp", "refused", namespace), "False", "GatewayNotifyFailed"
            ),
            timeout=15,
        )
        await eventually(
            lambda: (
                "GatewayNotifyFailed"
                in [
                    e["reason"]
                    for e in _events(control_plane, namespace, "refused")
                    if e["type"] == "Warning"
                ]
            )
        )
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_hijacking_cr_gets_a_clear_condition_once_the_plane_owner_set_the_list(
    control_plane: ApiServer,
    workflow_plane: ApiServer,
    gw: RunningGateway,
    controller: None,
    make_namespace: Callable[[ApiServer, str], str],
) -> None:
    """Tenant A copies tenant B's planeID and (public) CA; the agent's leaf allows only B."""
    tenant_b, tenant_a = make_namespace(control_plane, "tb"), make_namespace(control_plane, "ta")
    plane_id, secret = unique("victim"), unique("agent-tls")
    ca = (await write_agent_identity(workflow_plane, secret, f"{tenant_b}/victim")).decode()
    apply(control_plane, workflow_plane_cr("victim", tenant_b, plane_id, ca_pem=ca))
    apply(control_plane, workflow_plane_cr("hijack", tenant_a, plane_id, ca_pem=ca))
    allowed = (f"{tenant_b}/victim",)  # the plane owner's list, set on the agent
    running = await start_agent(agent_config(workflow_plane, gw, plane_id, secret, allowed=allowed))
    try:
        await eventually(
            lambda: _ready_with(_get(control_plane, "wp", "victim", tenant_b), "True"), timeout=15
        )
        await eventually(
            lambda: _ready_with(
                _get(control_plane, "wp", "hijack", tenant_a), "False", "AgentConsentRefused"
            ),
            timeout=15,
        )
        hijack = _get(control_plane, "wp", "hijack", tenant_a)
        assert "has not allowed this CR" in _condition(hijack, "Ready")["message"]
        assert hijack["status"]["agentConnection"]["connected"] is False
        assert not _condition(
            _get(control_plane, "wp", "victim", tenant_b), "AgentAccessRestricted"
        )
        warnings = [e["reason"] for e in _events(control_plane, tenant_a, "hijack")]
        assert "AgentConsentRefused" in warnings
    finally:
        await running.stop()


async def test_one_ca_in_two_namespaces_without_a_list_warns_how_to_restrict_it(
    control_plane: ApiServer,
    workflow_plane: ApiServer,
    gw: RunningGateway,
    controller: None,
    make_namespace: Callable[[ApiServer, str], str],
) -> None:
    """The reference behaviour holds (both Ready), and both CRs say how to restrict it."""
    first, second = make_namespace(control_plane, "o1"), make_namespace(control_plane, "o2")
    plane_id, secret = unique("shared"), unique("agent-tls")
    ca = (await write_agent_identity(workflow_plane, secret)).decode()
    for namespace in (first, second):
        apply(control_plane, workflow_plane_cr("builder", namespace, plane_id, ca_pem=ca))
    running = await start_agent(agent_config(workflow_plane, gw, plane_id, secret))
    try:
        for namespace in (first, second):
            await eventually(
                lambda ns=namespace: (
                    _condition(
                        _get(control_plane, "wp", "builder", ns), "AgentAccessRestricted"
                    ).get("reason")
                    == "SharedCAUnrestricted"
                ),
                timeout=15,
            )
            obj = _get(control_plane, "wp", "builder", namespace)
            assert _ready_with(obj, "True")
            message = _condition(obj, "AgentAccessRestricted")["message"]
            assert first in message and second in message and "allowedNamespaces" in message
    finally:
        await running.stop()


async def test_an_agent_whose_certificate_expired_is_named_in_the_ready_reason(
    control_plane: ApiServer,
    gw: RunningGateway,
    controller: None,
    namespace: str,
    tmp_path: Path,
) -> None:
    """The CR's own agent dials with a leaf its CA signed, now expired: Ready says
    AgentCertificateRejected and when it expired (a Warning event), instead of only 'No
    agents connected'; a stranger's leaf never does that (tests/unit/gateway)."""
    plane_id = unique("expired")
    ca = generate_ca("agent-ca")
    apply(control_plane, workflow_plane_cr("wp", namespace, plane_id, ca_pem=ca.cert_pem.decode()))
    await eventually(
        lambda: _ready_with(
            _get(control_plane, "wp", "wp", namespace), "False", "AgentNotConnected"
        ),
        timeout=15,
    )
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    expired = issue_certificate(ca, "agent", valid_for=dt.timedelta(days=1), not_before=past)
    (tmp_path / "c.crt").write_bytes(expired.cert_pem)
    (tmp_path / "c.key").write_bytes(expired.key_pem)
    context = ssl.create_default_context(cafile=str(gw.server_ca_file))
    context.load_cert_chain(tmp_path / "c.crt", tmp_path / "c.key")
    url = f"{gw.public_url}/ws?planeType=workflowplane&planeID={plane_id}"
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(url, ssl=context)
    assert refused.value.status == 401
    await eventually(
        lambda: _ready_with(
            _get(control_plane, "wp", "wp", namespace), "False", "AgentCertificateRejected"
        ),
        timeout=15,
    )
    message = _condition(_get(control_plane, "wp", "wp", namespace), "Ready")["message"]
    assert "client certificate expired at" in message
    warnings = [
        e["reason"] for e in _events(control_plane, namespace, "wp") if e["type"] == "Warning"
    ]
    assert "AgentCertificateRejected" in warnings
