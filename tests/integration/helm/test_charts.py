"""The Helm charts under deploy/helm, with a real helm v3: lint, render (default, HA, combined,
own certificates), schema rejects typo'd keys, the planeId/planeID aliases, CRDs identical to
deploy/crds, rendered command lines accepted by the real `wpctl` parser, and a server-side
dry-run apply of the rendered manifests against the real test API servers."""

from __future__ import annotations

import filecmp
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.helm.conftest import (
    CONTROL_PLANE_CHART,
    REPO,
    WORKFLOW_PLANE_CHART,
    Helm,
)
from workflowplane.agent.command import config_from_args
from workflowplane.cli.main import build_parser
from workflowplane.pki import generate_ca
from workflowplane.testenv import ApiServer
from workflowplane.testenv.tools import kubectl

# The first test waits for scripts/ensure-helm (a few minutes once, when helm is not cached).
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

CP_NAMESPACE = "openchoreo-control-plane"
METRICS_LABEL = "workflowplane.openchoreo.dev/metrics"
DASHBOARD = CONTROL_PLANE_CHART / "dashboards" / "workflowplane.json"
ALERTS = CONTROL_PLANE_CHART / "rules" / "workflowplane-alerts.yaml"
WP_NAMESPACE = "openchoreo-workflow-plane"
AGENT = "cluster-agent-workflowplane"
PLANE = ("--set", "clusterAgent.planeId=default")
CP_HA = ("-f", str(CONTROL_PLANE_CHART / "ci" / "ha-values.yaml"))
WP_HA = ("-f", str(WORKFLOW_PLANE_CHART / "ci" / "ha-values.yaml"))
COMBINED = ("--set", "mode=combined")
OWN_CERTS = (
    "--set",
    "clusterGateway.tls.existingSecret=gw-tls",
    "--set",
    "clusterGateway.tls.internalCAExistingSecret=gw-internal-ca",
    "--set",
    "controller.gatewayClient.existingSecret=gw-client",
)


@pytest.fixture(scope="module")
def server_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gateway-ca") / "ca.crt"
    path.write_bytes(generate_ca("cluster-gateway-server-ca").cert_pem)
    return path


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, got {[d['kind'] for d in docs]}"
    return found[0]


def containers(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for deployment in find(docs, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        for container in pod["containers"]:
            yield pod, container


def args_of(docs: list[dict[str, Any]], deployment: str) -> list[str]:
    pod = one(docs, "Deployment", deployment)["spec"]["template"]["spec"]
    args: list[str] = pod["containers"][0]["args"]
    return args


def assert_hardened(docs: list[dict[str, Any]]) -> None:
    seen = 0
    for pod, container in containers(docs):
        seen += 1
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        ctx = container["securityContext"]
        assert ctx["readOnlyRootFilesystem"] is True
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["capabilities"]["drop"] == ["ALL"]
        assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
        assert container["resources"]["requests"] and container["resources"]["limits"]
        assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert seen


def assert_probed(container: dict[str, Any], port: str, ports: dict[str, int]) -> None:
    """Startup, liveness and readiness on the named port; ``ports`` among the container's."""
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}
    declared = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports.items() <= declared.items()


# ---- lint ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("chart", "values"),
    [
        (CONTROL_PLANE_CHART, None),
        (CONTROL_PLANE_CHART, "ha-values.yaml"),
        (WORKFLOW_PLANE_CHART, "default-values.yaml"),
        (WORKFLOW_PLANE_CHART, "ha-values.yaml"),
    ],
    ids=["control-plane", "control-plane-ha", "workflow-plane", "workflow-plane-ha"],
)
def test_lint_strict(helm: Helm, chart: Path, values: str | None) -> None:
    extra = ["-f", str(chart / "ci" / values)] if values else []
    result = helm.run("lint", "--strict", str(chart), *extra)
    assert "0 chart(s) failed" in result.stdout


# ---- control plane rendering ---------------------------------------------------------------


def test_control_plane_defaults(helm: Helm) -> None:
    docs = helm.template(CONTROL_PLANE_CHART)
    assert not find(docs, "CustomResourceDefinition")  # CRDs come from crds/, not templates
    for doc in docs:
        if doc["kind"] not in {"ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering"}:
            assert doc["metadata"]["namespace"] == CP_NAMESPACE, doc["metadata"]["name"]
    assert_hardened(docs)

    gateway = one(docs, "Deployment", "cluster-gateway")["spec"]["template"]["spec"]
    container = gateway["containers"][0]
    assert container["args"][0] == "gateway"
    assert_probed(container, "health", {"health": 8080})
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"websocket": 8443, "internal-api": 8444, "health": 8080}
    assert gateway["serviceAccountName"] == "cluster-gateway"
    assert "--server-dns-name=cluster-gateway.openchoreo-control-plane.svc" in container["args"]

    controller = args_of(docs, "workflowplane-controller")
    assert controller[0] == "controller"
    assert {"--health-port=8081", "--stuck-after=300"} <= set(controller)
    probed = one(docs, "Deployment", "workflowplane-controller")["spec"]["template"]["spec"]
    assert_probed(probed["containers"][0], "health", {"health": 8081})
    metrics_service = one(docs, "Service", "workflowplane-controller")
    assert metrics_service["metadata"]["labels"][METRICS_LABEL] == "true"
    assert [(p["name"], p["port"]) for p in metrics_service["spec"]["ports"]] == [("health", 8081)]
    assert "--gateway-url=https://cluster-gateway.openchoreo-control-plane.svc:8444" in controller
    assert "--peering=workflowplane-controller" in controller
    one(docs, "ClusterKopfPeering", "workflowplane-controller")

    internal = one(docs, "Service", "cluster-gateway")["spec"]
    assert internal["type"] == "ClusterIP"
    assert {p["port"] for p in internal["ports"]} >= {8444, 8080}
    external = one(docs, "Service", "cluster-gateway-external")["spec"]
    assert external["type"] == "LoadBalancer"
    assert [p["port"] for p in external["ports"]] == [8443]
    assert external["selector"]["app.kubernetes.io/component"] == "gateway"

    assert {d["metadata"]["name"] for d in find(docs, "PodDisruptionBudget")} == {
        "cluster-gateway",
        "workflowplane-controller",
    }
    assert_gateway_replicas(docs, replicas=3, drain_seconds=20)
    assert {d["metadata"]["name"] for d in find(docs, "ServiceAccount")} == {
        "cluster-gateway",
        "workflowplane-controller",
    }


def assert_gateway_replicas(
    docs: list[dict[str, Any]], *, replicas: int, drain_seconds: int
) -> None:
    """The HA shape of the gateway (docs/ha.md): replicas on different nodes when
    possible, one disrupted at a time, each named after its pod and reachable at its own
    address (headless Service), given time to drain."""
    deployment = one(docs, "Deployment", "cluster-gateway")["spec"]
    assert deployment["replicas"] == replicas
    pod = deployment["template"]["spec"]
    preferred = pod["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert preferred[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert pod["terminationGracePeriodSeconds"] > drain_seconds
    container = pod["containers"][0]
    assert f"--drain-seconds={drain_seconds}" in container["args"]
    env = {
        e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        for e in container["env"]
    }
    assert env["POD_NAME"] == "metadata.name" and env["POD_IP"] == "status.podIP"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert one(docs, "PodDisruptionBudget", "cluster-gateway")["spec"]["maxUnavailable"] == 1
    peers = one(docs, "Service", "cluster-gateway-peers")["spec"]
    assert peers["clusterIP"] == "None"
    assert peers["selector"]["app.kubernetes.io/component"] == "gateway"
    assert {p["port"] for p in peers["ports"]} == {8443, 8444}
    leases = one(docs, "Role", "cluster-gateway-replicas")["rules"]
    assert leases == [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "verbs": ["get", "list", "watch", "create", "update", "delete"],
        }
    ]


def test_control_plane_rbac_is_least_privilege(helm: Helm) -> None:
    docs = helm.template(CONTROL_PLANE_CHART)
    gateway = one(docs, "ClusterRole", f"{CP_NAMESPACE}:cluster-gateway")["rules"]
    for rule in gateway:  # cluster-wide: read only
        assert set(rule["verbs"]) <= {"get", "list", "watch"}, rule
    tls = one(docs, "Role", "cluster-gateway-tls")["rules"]
    assert {"verbs": ["create"], "apiGroups": [""], "resources": ["secrets"]} in tls
    named = next(r for r in tls if "resourceNames" in r)
    assert set(named["resourceNames"]) == {
        "cluster-gateway-tls",
        "cluster-gateway-internal-ca",
        "cluster-gateway-internal-client",
    }
    controller = one(docs, "ClusterRole", f"{CP_NAMESPACE}:workflowplane-controller")["rules"]
    writes = {
        (group, resource)
        for rule in controller
        if set(rule["verbs"]) - {"get", "list", "watch"}
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    assert writes == {
        ("openchoreo.dev", "workflowplanes"),
        ("openchoreo.dev", "clusterworkflowplanes"),
        ("openchoreo.dev", "workflowplanes/status"),
        ("openchoreo.dev", "clusterworkflowplanes/status"),
        ("openchoreo.dev", "workflowruns"),
        ("openchoreo.dev", "workflowruns/status"),
        ("", "events"),
        ("events.k8s.io", "events"),
        ("kopf.dev", "clusterkopfpeerings"),
    }
    for doc in docs:  # no wildcards anywhere
        for rule in doc.get("rules", []):
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule


def test_control_plane_ha(helm: Helm) -> None:
    docs = helm.template(CONTROL_PLANE_CHART, *CP_HA)
    controller = one(docs, "Deployment", "workflowplane-controller")["spec"]
    assert controller["replicas"] == 2
    assert controller["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert "--peering=workflowplane-controller" in args_of(docs, "workflowplane-controller")
    one(docs, "ClusterKopfPeering", "workflowplane-controller")
    assert one(docs, "PodDisruptionBudget", "workflowplane-controller")["spec"] == {
        "minAvailable": 1,
        "selector": {
            "matchLabels": {
                "app.kubernetes.io/name": "workflowplane-control-plane",
                "app.kubernetes.io/instance": "t",
                "app.kubernetes.io/component": "controller",
            }
        },
    }
    # Five gateway replicas with a longer drain, its public host name in the certificate.
    assert_gateway_replicas(docs, replicas=5, drain_seconds=45)
    assert "--server-dns-name=gateway.example.com" in args_of(docs, "cluster-gateway")
    external = one(docs, "Service", "cluster-gateway-external")["spec"]
    assert external["externalTrafficPolicy"] == "Local"


def test_control_plane_combined_mode(helm: Helm) -> None:
    docs = helm.template(CONTROL_PLANE_CHART, *COMBINED)
    assert [d["metadata"]["name"] for d in find(docs, "Deployment")] == [
        "workflowplane-control-plane"
    ]
    args = args_of(docs, "workflowplane-control-plane")
    assert args[0] == "control-plane"
    assert "--peering=workflowplane-controller" in args
    assert {"--health-port=8080", "--controller-health-port=8081"} <= set(args)
    # one probe port for the process: the controller's, which carries the gateway's probes
    pod = one(docs, "Deployment", "workflowplane-control-plane")["spec"]["template"]["spec"]
    assert_probed(pod["containers"][0], "ctrl-health", {"health": 8080, "ctrl-health": 8081})
    drain = next(a for a in args if a.startswith("--drain-seconds="))
    # the gateway in it drains before it stops: Kubernetes' 30 s would cut a longer drain
    assert pod["terminationGracePeriodSeconds"] > float(drain.split("=", 1)[1])
    internal = one(docs, "Service", "cluster-gateway")["spec"]["ports"]
    assert {(p["name"], p["port"]) for p in internal} >= {("health", 8080), ("ctrl-health", 8081)}
    assert not find(docs, "Service", "workflowplane-controller")
    assert_hardened(docs)
    for name in ("cluster-gateway", "cluster-gateway-external"):
        selector = one(docs, "Service", name)["spec"]["selector"]
        assert selector["app.kubernetes.io/component"] == "control-plane"
    bindings = find(docs, "ClusterRoleBinding") + find(docs, "RoleBinding")
    subjects = {subject["name"] for binding in bindings for subject in binding["subjects"]}
    assert subjects == {"workflowplane-control-plane"}
    assert [d["metadata"]["name"] for d in find(docs, "ServiceAccount")] == [
        "workflowplane-control-plane"
    ]


@pytest.mark.parametrize("service_type", ["LoadBalancer", "NodePort", "ClusterIP"])
def test_external_service_type(helm: Helm, service_type: str) -> None:
    extra = ["--set", f"clusterGateway.service.external.type={service_type}"]
    if service_type == "NodePort":
        extra += ["--set", "clusterGateway.service.external.nodePort=30443"]
    docs = helm.template(CONTROL_PLANE_CHART, *extra)
    spec = one(docs, "Service", "cluster-gateway-external")["spec"]
    assert spec["type"] == service_type
    assert spec["ports"][0].get("nodePort") == (30443 if service_type == "NodePort" else None)


def test_existing_certificates(helm: Helm) -> None:
    docs = helm.template(CONTROL_PLANE_CHART, *OWN_CERTS)
    gateway = args_of(docs, "cluster-gateway")
    assert "--tls-cert=/etc/workflowplane/gateway-tls/tls.crt" in gateway
    assert "--internal-ca=/etc/workflowplane/gateway-internal-ca/ca.crt" in gateway
    controller = args_of(docs, "workflowplane-controller")
    assert "--gateway-cert=/etc/workflowplane/gateway-client/tls.crt" in controller
    # nothing to create: no write access to Secrets (only the replica directory's Leases)
    assert [d["metadata"]["name"] for d in find(docs, "Role")] == ["cluster-gateway-replicas"]
    pod = one(docs, "Deployment", "cluster-gateway")["spec"]["template"]["spec"]
    assert {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v} == {
        "gw-tls",
        "gw-internal-ca",
    }


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (("clusterGateway.tls.existingSecret=x",), "internalCAExistingSecret is not"),
        (("clusterGateway.tls.internalCAExistingSecret=x",), "existingSecret is not"),
        (
            (
                "clusterGateway.tls.existingSecret=x",
                "clusterGateway.tls.internalCAExistingSecret=y",
            ),
            "controller.gatewayClient.existingSecret",
        ),
    ],
)
def test_existing_certificates_incomplete(
    helm: Helm, values: tuple[str, ...], message: str
) -> None:
    args = [arg for value in values for arg in ("--set", value)]
    assert message in helm.template_error(CONTROL_PLANE_CHART, *args)


def test_namespace_empty_means_release_namespace(helm: Helm) -> None:
    docs = helm.template(CONTROL_PLANE_CHART, "--set", "namespace=", "--namespace", "elsewhere")
    assert one(docs, "Deployment", "cluster-gateway")["metadata"]["namespace"] == "elsewhere"
    assert "--namespace=elsewhere" in args_of(docs, "cluster-gateway")


# ---- workflow plane rendering --------------------------------------------------------------


def test_workflow_plane_defaults(helm: Helm) -> None:
    docs = helm.template(WORKFLOW_PLANE_CHART, *PLANE)
    for doc in docs:
        if doc["kind"] not in {"ClusterRole", "ClusterRoleBinding"}:
            assert doc["metadata"]["namespace"] == WP_NAMESPACE, doc["metadata"]["name"]
    assert_hardened(docs)
    deployment = one(docs, "Deployment", "cluster-agent-workflowplane")
    assert deployment["spec"]["replicas"] == 1
    args = args_of(docs, "cluster-agent-workflowplane")
    assert args[:4] == [
        "agent",
        "--server-url=wss://cluster-gateway.openchoreo-control-plane.svc.cluster.local:8443/ws",
        "--plane-type=workflowplane",
        "--plane-id=default",
    ]
    assert "--namespace=openchoreo-workflow-plane" in args
    assert "--secret-name=cluster-agent-tls" in args
    assert not any(a.startswith("--server-ca") for a in args)  # none given: system trust
    assert "--max-concurrent-streams=64" in args
    assert "--consent-configmap=cluster-agent-consent" in args
    assert not any(a.startswith("--allowed-namespaces") for a in args)  # no list: unrestricted
    one(docs, "PodDisruptionBudget", "cluster-agent-workflowplane")
    one(docs, "ServiceAccount", "cluster-agent-workflowplane")


def test_workflow_plane_ha_with_server_ca(helm: Helm, server_ca: Path) -> None:
    docs = helm.template(
        WORKFLOW_PLANE_CHART, *WP_HA, "--set-file", f"clusterAgent.tls.serverCA.value={server_ca}"
    )
    deployment = one(docs, "Deployment", "cluster-agent-workflowplane")["spec"]
    assert deployment["replicas"] == 3
    assert deployment["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert deployment["template"]["spec"]["affinity"]["podAntiAffinity"]
    pdb = one(docs, "PodDisruptionBudget", "cluster-agent-workflowplane")["spec"]
    assert pdb["minAvailable"] == 2
    args = args_of(docs, "cluster-agent-workflowplane")
    assert "--plane-id=prod-builder" in args
    assert "--server-ca=/etc/workflowplane/server-ca/ca.crt" in args
    config_map = one(docs, "ConfigMap", "cluster-agent-workflowplane-server-ca")
    assert config_map["data"]["ca.crt"].strip() == server_ca.read_text().strip()


def test_workflow_plane_server_ca_from_existing_secret(helm: Helm) -> None:
    docs = helm.template(
        WORKFLOW_PLANE_CHART,
        *PLANE,
        "--set",
        "clusterAgent.tls.serverCA.existingSecret.name=gateway-ca",
    )
    pod = one(docs, "Deployment", "cluster-agent-workflowplane")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "server-ca")
    assert volume["secret"] == {
        "secretName": "gateway-ca",
        "items": [{"key": "ca.crt", "path": "ca.crt"}],
    }
    assert not find(docs, "ConfigMap")
    error = helm.template_error(
        WORKFLOW_PLANE_CHART,
        *PLANE,
        "--set",
        "clusterAgent.tls.serverCA.existingSecret.name=gateway-ca",
        "--set",
        "clusterAgent.tls.serverCA.value=x",
    )
    assert "not both" in error


def test_workflow_plane_rbac_is_least_privilege(helm: Helm) -> None:
    docs = helm.template(WORKFLOW_PLANE_CHART, *PLANE)
    rules = one(docs, "ClusterRole", f"{WP_NAMESPACE}:cluster-agent-workflowplane")["rules"]
    granted = {
        (group, resource): set(rule["verbs"])
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    read = {"get", "list", "watch"}
    assert granted[("", "pods")] == read
    assert granted[("", "pods/log")] == read
    assert granted[("external-secrets.io", "clustersecretstores")] == read
    assert "delete" not in granted[("", "namespaces")]
    # made once per namespace, never changed or deleted by a run
    for made in ("serviceaccounts", "roles", "rolebindings"):
        group = "" if made == "serviceaccounts" else "rbac.authorization.k8s.io"
        assert granted[(group, made)] == read | {"create"}, made
    assert granted[("argoproj.io", "workflows")] == read | {"create", "delete"}
    assert ("", "secrets") not in granted  # no cluster-wide Secret access
    assert set(granted) == {
        ("", "namespaces"),
        ("", "serviceaccounts"),
        ("rbac.authorization.k8s.io", "roles"),
        ("rbac.authorization.k8s.io", "rolebindings"),
        ("argoproj.io", "workflows"),
        ("argoproj.io", "workflowtaskresults"),
        ("", "pods"),
        ("", "pods/log"),
        ("external-secrets.io", "externalsecrets"),
        ("external-secrets.io", "clustersecretstores"),
    }
    own = one(docs, "Role", "cluster-agent-workflowplane-tls")
    assert own["metadata"]["namespace"] == WP_NAMESPACE
    named = {r["resources"][0]: r for r in own["rules"] if "resourceNames" in r}
    assert named["secrets"]["resourceNames"] == ["cluster-agent-tls"]
    assert named["configmaps"]["resourceNames"] == ["cluster-agent-consent"]
    assert set(named["configmaps"]["verbs"]) == read
    assert [r for r in own["rules"] if "configmaps" in r["resources"]] == [named["configmaps"]]
    for doc in docs:
        for rule in doc.get("rules", []):
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule


# ---- gateway replicas (issue #12) -------------------------------------------------------------

HEADLESS = "cluster-gateway-headless.openchoreo-control-plane.svc.cluster.local:8443"
REPLICA_URLS = ("--set", "clusterAgent.serverUrls={wss://gw-0.example:8443/ws,wss://gw-1.example}")
REPLICA_DNS = (
    "--set",
    f"clusterAgent.serverDnsName={HEADLESS}",
    "--set",
    "clusterAgent.serverResolveSeconds=5",
)


def test_the_agent_is_told_every_gateway_replica(helm: Helm) -> None:
    listed = args_of(helm.template(WORKFLOW_PLANE_CHART, *PLANE, *REPLICA_URLS), AGENT)
    assert listed[1] == "--server-urls=wss://gw-0.example:8443/ws,wss://gw-1.example"
    named = args_of(helm.template(WORKFLOW_PLANE_CHART, *PLANE, *REPLICA_DNS), AGENT)
    assert named[1:3] == [f"--server-dns-name={HEADLESS}", "--server-resolve-seconds=5"]
    for args in (listed, named):
        assert not any(a.startswith("--server-url=") for a in args)  # one way, not two
        config = config_from_args(build_parser().parse_args(args))  # the agent accepts it
        assert config.server_urls or config.server_dns_name


def test_replicas_by_list_and_by_name_at_once_fail(helm: Helm) -> None:
    error = helm.template_error(WORKFLOW_PLANE_CHART, *PLANE, *REPLICA_URLS, *REPLICA_DNS)
    assert "clusterAgent.serverUrls and clusterAgent.serverDnsName are both set" in error


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("serverDnsName", "cluster-gateway-headless"),  # no port
        ("serverDnsName", "wss://gw:8443"),
        ("serverUrls", "{gw-0:8443}"),
        ("serverResolveSeconds", "0"),
    ],
)
def test_schema_rejects_a_bad_replica_setting(helm: Helm, key: str, value: str) -> None:
    setting = f"clusterAgent.{key}={value}"
    assert key in helm.template_error(WORKFLOW_PLANE_CHART, *PLANE, "--set", setting)


# ---- plane-side consent --------------------------------------------------------------------


def test_allowed_namespaces_reach_the_agent_as_its_list(helm: Helm) -> None:
    docs = helm.template(
        WORKFLOW_PLANE_CHART,
        *PLANE,
        "--set",
        "clusterAgent.allowedNamespaces={team-a,platform/builder,/shared}",
        "--set",
        "clusterAgent.consentConfigMap=my-consent",
    )
    args = args_of(docs, "cluster-agent-workflowplane")
    assert "--allowed-namespaces=team-a,platform/builder,/shared" in args
    parsed = build_parser().parse_args(args)
    assert parsed.allowed_namespaces == ["team-a,platform/builder,/shared"]
    assert parsed.consent_configmap == "my-consent"
    own = one(docs, "Role", "cluster-agent-workflowplane-tls")
    assert ["my-consent"] in [r.get("resourceNames") for r in own["rules"]]
    assert not find(docs, "ConfigMap")  # the ConfigMap is the owner's to write, not Helm's


def test_no_consent_configmap_no_rule_for_it(helm: Helm) -> None:
    docs = helm.template(WORKFLOW_PLANE_CHART, *PLANE, "--set", "clusterAgent.consentConfigMap=")
    assert "--consent-configmap=" in args_of(docs, "cluster-agent-workflowplane")
    own = one(docs, "Role", "cluster-agent-workflowplane-tls")
    assert not [r for r in own["rules"] if "configmaps" in r["resources"]]


@pytest.mark.parametrize("entry", ["Team_A", "a/b/c", "ns/", " team-a"])
def test_schema_rejects_a_bad_allow_list_entry(helm: Helm, entry: str) -> None:
    error = helm.template_error(
        WORKFLOW_PLANE_CHART,
        *PLANE,
        "--set-json",
        f"clusterAgent.allowedNamespaces=[{json.dumps(entry)}]",
    )
    assert "allowedNamespaces" in error


def test_the_agent_may_read_and_watch_its_consent_configmap_and_no_other(
    helm: Helm, workflow_plane: ApiServer
) -> None:
    """The chart's RBAC on a real API server: the agent's field-selected list and watch of its
    one ConfigMap are allowed (that is how it watches), any other ConfigMap is not."""
    _ensure_namespace(workflow_plane, WP_NAMESPACE)
    name = f"rbac-check-{uuid.uuid4().hex[:6]}"
    docs = helm.template(WORKFLOW_PLANE_CHART, *PLANE, "--set", f"clusterAgent.name={name}")
    rbac = [d for d in docs if d["kind"] in {"ServiceAccount", "Role", "RoleBinding"}]
    manifests = yaml.safe_dump_all(rbac)
    kubectl(workflow_plane.kubeconfig, workflow_plane.context, "apply", "-f", "-", input=manifests)
    agent = f"system:serviceaccount:{WP_NAMESPACE}:{name}"
    base = f"/api/v1/namespaces/{WP_NAMESPACE}/configmaps"

    def get(path: str) -> int:
        result = kubectl(
            workflow_plane.kubeconfig,
            workflow_plane.context,
            "get",
            "--raw",
            path,
            f"--as={agent}",
            check=False,
        )
        return 0 if result.returncode == 0 else 403 if "Forbidden" in result.stderr else 1

    named = "fieldSelector=metadata.name%3Dcluster-agent-consent"
    assert get(f"{base}?{named}") == 0
    assert get(f"{base}?{named}&watch=true&timeoutSeconds=1") == 0
    assert get(f"{base}/cluster-agent-consent") in (0, 1)  # allowed (1: not found)
    assert get(f"{base}?fieldSelector=metadata.name%3Dother") == 403
    assert get(base) == 403
    kubectl(workflow_plane.kubeconfig, workflow_plane.context, "delete", "-f", "-", input=manifests)


# ---- planeId / planeID ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        {"planeId": "ci-cluster"},
        {"planeID": "ci-cluster"},
        {"planeId": "ci-cluster", "planeID": "ci-cluster"},
    ],
    ids=["planeId", "planeID", "both-equal"],
)
def test_plane_id_aliases(helm: Helm, values: dict[str, str]) -> None:
    args = [
        arg for key, value in values.items() for arg in ("--set", f"clusterAgent.{key}={value}")
    ]
    docs = helm.template(WORKFLOW_PLANE_CHART, *args)
    assert "--plane-id=ci-cluster" in args_of(docs, "cluster-agent-workflowplane")


def test_plane_id_conflict_fails(helm: Helm) -> None:
    error = helm.template_error(
        WORKFLOW_PLANE_CHART,
        "--set",
        "clusterAgent.planeId=us-west-2",
        "--set",
        "clusterAgent.planeID=eu-west-1",
    )
    assert "clusterAgent.planeId" in error and "clusterAgent.planeID" in error
    assert "us-west-2" in error and "eu-west-1" in error
    assert "differ" in error


def test_plane_id_missing_fails(helm: Helm) -> None:
    error = helm.template_error(WORKFLOW_PLANE_CHART)
    assert "clusterAgent.planeId is required" in error


def test_plane_id_pattern_is_checked(helm: Helm) -> None:
    error = helm.template_error(WORKFLOW_PLANE_CHART, "--set", "clusterAgent.planeId=Not_Valid")
    assert "planeId" in error


# ---- schema: unknown keys are refused, naming the key ----------------------------------------


@pytest.mark.parametrize(
    ("chart", "setting", "key"),
    [
        (CONTROL_PLANE_CHART, "namepsace=x", "namepsace"),
        (CONTROL_PLANE_CHART, "clusterGateway.replcas=2", "replcas"),
        (CONTROL_PLANE_CHART, "clusterGateway.service.external.tpye=NodePort", "tpye"),
        (CONTROL_PLANE_CHART, "controller.peering.enbled=true", "enbled"),
        (CONTROL_PLANE_CHART, "metrics.serviceMonitor.enable=true", "enable"),
        (
            CONTROL_PLANE_CHART,
            "securityContext.readOnlyRootFileSystem=false",
            "readOnlyRootFileSystem",
        ),
        (WORKFLOW_PLANE_CHART, "clusterAgnet.planeId=x", "clusterAgnet"),
        (WORKFLOW_PLANE_CHART, "clusterAgent.planeid=x", "planeid"),
        (WORKFLOW_PLANE_CHART, "clusterAgent.tls.serverCa.value=x", "serverCa"),
        (WORKFLOW_PLANE_CHART, "clusterAgent.resources.limit.cpu=1", "limit"),
    ],
    ids=lambda value: value if isinstance(value, str) else value.name,
)
def test_schema_rejects_typo(helm: Helm, chart: Path, setting: str, key: str) -> None:
    error = helm.template_error(chart, *PLANE, "--set", setting)
    assert "schema" in error
    assert key in error


def test_schema_rejects_bad_enum(helm: Helm) -> None:
    error = helm.template_error(CONTROL_PLANE_CHART, "--set", "mode=both")
    assert "mode" in error
    error = helm.template_error(CONTROL_PLANE_CHART, "--set", "logFormat=yaml")
    assert "logFormat" in error
    error = helm.template_error(
        CONTROL_PLANE_CHART, "--set", "clusterGateway.service.external.type=Ingress"
    )
    assert "type" in error


# ---- the rendered command lines are what the real CLI accepts --------------------------------


@pytest.mark.parametrize(
    ("chart", "values"),
    [
        (CONTROL_PLANE_CHART, ()),
        (CONTROL_PLANE_CHART, CP_HA),
        (CONTROL_PLANE_CHART, COMBINED),
        (CONTROL_PLANE_CHART, OWN_CERTS),
        (CONTROL_PLANE_CHART, ("--set", "debug=true")),
        (CONTROL_PLANE_CHART, ("--set", "logFormat=json", *COMBINED)),
        (WORKFLOW_PLANE_CHART, PLANE),
        (WORKFLOW_PLANE_CHART, WP_HA),
        (WORKFLOW_PLANE_CHART, (*PLANE, "--set", "clusterAgent.logLevel=debug")),
        (WORKFLOW_PLANE_CHART, (*PLANE, "--set", "clusterAgent.allowedNamespaces={a,b/c}")),
        (WORKFLOW_PLANE_CHART, (*PLANE, *REPLICA_URLS)),
        (WORKFLOW_PLANE_CHART, (*PLANE, *REPLICA_DNS)),
    ],
    ids=[
        "cp",
        "cp-ha",
        "cp-combined",
        "cp-own-certs",
        "cp-debug",
        "cp-json-logs",
        "wp",
        "wp-ha",
        "wp-debug",
        "wp-consent",
        "wp-replica-urls",
        "wp-replica-dns",
    ],
)
def test_rendered_args_parse_with_wpctl(
    helm: Helm, chart: Path, values: tuple[str, ...], server_ca: Path
) -> None:
    docs = helm.template(chart, *values)
    parser = build_parser()
    for _, container in containers(docs):
        try:
            parsed = parser.parse_args(container["args"])
        except SystemExit as exc:  # argparse's way of refusing
            raise AssertionError(f"wpctl refuses {container['args']}") from exc
        assert parsed.command in {"gateway", "controller", "control-plane", "agent"}
        assert parsed.verbose == ("-v" in container["args"])
        assert parsed.log_format == ("json" if "logFormat=json" in values else "text")
        if parsed.command in {"controller", "control-plane"}:
            assert parsed.controller_health_port == 8081
        if parsed.command == "agent":
            assert parsed.plane_id
            assert parsed.server_url or parsed.server_urls or parsed.server_dns_name
        if parsed.command in {"gateway", "control-plane"}:
            assert "localhost" in parsed.dns_names
            # agents given serverDnsName verify every replica by the headless Service's name
            namespace = "openchoreo-control-plane"
            assert f"cluster-gateway-peers.{namespace}.svc.cluster.local" in parsed.dns_names


# ---- monitoring: ServiceMonitor, PrometheusRule, Grafana dashboard ---------------------------

MONITORING = (
    "--set",
    "metrics.serviceMonitor.enabled=true",
    "--set",
    "metrics.prometheusRule.enabled=true",
    "--set",
    "metrics.dashboard.enabled=true",
    "--set",
    "metrics.serviceMonitor.labels.release=kube-prometheus-stack",
)


def test_monitoring_is_off_by_default(helm: Helm) -> None:
    docs = helm.template(CONTROL_PLANE_CHART)
    for kind in ("ServiceMonitor", "PrometheusRule", "ConfigMap"):
        assert not find(docs, kind), kind


@pytest.mark.parametrize("values", [(), COMBINED], ids=["separate", "combined"])
def test_monitoring_objects_render(helm: Helm, values: tuple[str, ...]) -> None:
    docs = helm.template(CONTROL_PLANE_CHART, *MONITORING, *values)
    monitor = one(docs, "ServiceMonitor", "t-workflowplane")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector == {"app.kubernetes.io/instance": "t", METRICS_LABEL: "true"}
    endpoints = {e["port"]: e["path"] for e in monitor["spec"]["endpoints"]}
    assert endpoints == {"health": "/metrics", "ctrl-health": "/metrics"}
    # the Services it selects expose, between them, the gateway's and the controller's /metrics
    scraped = {
        (d["metadata"]["name"], p["name"])
        for d in find(docs, "Service")
        if d["metadata"]["labels"].get(METRICS_LABEL) == "true"
        for p in d["spec"]["ports"]
        if p["name"] in endpoints
    }
    if values == COMBINED:
        assert scraped == {("cluster-gateway", "health"), ("cluster-gateway", "ctrl-health")}
    else:
        assert scraped == {("cluster-gateway", "health"), ("workflowplane-controller", "health")}

    rules = one(docs, "PrometheusRule", "t-workflowplane")["spec"]
    assert rules == yaml.safe_load(ALERTS.read_text()), "the rules file, verbatim"
    assert "{{ $labels.plane_id }}" in str(rules), "Prometheus' templates are not Helm's"

    dashboard = one(docs, "ConfigMap", "t-workflowplane-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["namespace"] == CP_NAMESPACE
    assert json.loads(dashboard["data"]["workflowplane.json"]) == json.loads(DASHBOARD.read_text())


# ---- CRDs ----------------------------------------------------------------------------------


def test_chart_crds_are_identical_to_deploy_crds() -> None:
    source = REPO / "deploy" / "crds"
    chart = CONTROL_PLANE_CHART / "crds"
    names = sorted(p.name for p in source.glob("*.yaml"))
    assert sorted(p.name for p in chart.iterdir()) == names, (
        "deploy/helm/workflowplane-control-plane/crds/ must hold exactly deploy/crds/*.yaml: "
        "cp deploy/crds/*.yaml deploy/helm/workflowplane-control-plane/crds/"
    )
    _, mismatch, errors = filecmp.cmpfiles(source, chart, names, shallow=False)
    assert not mismatch and not errors, (
        f"chart CRDs differ from deploy/crds: {mismatch + errors}; copy them again: "
        "cp deploy/crds/*.yaml deploy/helm/workflowplane-control-plane/crds/"
    )


def test_rendered_crds_parse(helm: Helm) -> None:
    """`helm template --include-crds` carries every CRD and the admission policy that goes with
    them (what `helm install` creates first)."""
    docs = helm.template(CONTROL_PLANE_CHART, "--include-crds")
    shipped = [
        doc
        for path in (REPO / "deploy" / "crds").glob("*.yaml")
        for doc in yaml.safe_load_all(path.read_text())
    ]
    for kind in (
        "CustomResourceDefinition",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ):
        rendered = {d["metadata"]["name"] for d in find(docs, kind)}
        assert rendered == {d["metadata"]["name"] for d in shipped if d["kind"] == kind}, kind
        assert rendered, kind


# ---- server-side dry run against the real API servers --------------------------------------


def _ensure_namespace(server: ApiServer, name: str) -> None:
    manifest = yaml.safe_dump({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    kubectl(server.kubeconfig, server.context, "apply", "-f", "-", input=manifest)


def _dry_run(server: ApiServer, manifests: str) -> str:
    result = kubectl(
        server.kubeconfig,
        server.context,
        "apply",
        "--dry-run=server",
        "--validate=strict",
        "-f",
        "-",
        input=manifests,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize(
    "values", [(), CP_HA, COMBINED, OWN_CERTS], ids=["default", "ha", "combined", "own-certs"]
)
def test_control_plane_server_dry_run(
    helm: Helm, control_plane: ApiServer, crds: Path, values: tuple[str, ...]
) -> None:
    _ensure_namespace(control_plane, CP_NAMESPACE)
    out = _dry_run(control_plane, helm.render(CONTROL_PLANE_CHART, *values))
    assert "(server dry run)" in out
    assert "clusterkopfpeering.kopf.dev/workflowplane-controller" in out


@pytest.mark.parametrize("ha", [False, True], ids=["default", "ha"])
def test_workflow_plane_server_dry_run(
    helm: Helm, workflow_plane: ApiServer, server_ca: Path, ha: bool
) -> None:
    _ensure_namespace(workflow_plane, WP_NAMESPACE)
    values = (*WP_HA, "--set-file", f"clusterAgent.tls.serverCA.value={server_ca}") if ha else PLANE
    out = _dry_run(workflow_plane, helm.render(WORKFLOW_PLANE_CHART, *values))
    assert "deployment.apps/cluster-agent-workflowplane" in out


# ---- the agent's health listener, probes and metrics ------------------------------------------

WP_MONITORING = (
    *PLANE,
    "--set",
    "metrics.serviceMonitor.enabled=true",
    "--set",
    "metrics.serviceMonitor.labels.release=kube-prometheus-stack",
)


def agent_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    pod = one(docs, "Deployment", "cluster-agent-workflowplane")["spec"]["template"]["spec"]
    container: dict[str, Any] = pod["containers"][0]
    return container


@pytest.mark.parametrize("values", [PLANE, WP_HA], ids=["default", "ha"])
def test_the_agent_is_probed_on_its_health_port(helm: Helm, values: tuple[str, ...]) -> None:
    container = agent_container(helm.template(WORKFLOW_PLANE_CHART, *values))
    assert_probed(container, "health", {"health": 8082})
    parsed = build_parser().parse_args(container["args"])
    assert parsed.health_port == 8082 and parsed.health_host == "0.0.0.0"


def test_the_agents_health_port_and_probes_are_settings(helm: Helm) -> None:
    moved = agent_container(
        helm.template(WORKFLOW_PLANE_CHART, *PLANE, "--set", "clusterAgent.health.port=9102")
    )
    assert_probed(moved, "health", {"health": 9102})
    assert build_parser().parse_args(moved["args"]).health_port == 9102
    unprobed = agent_container(
        helm.template(WORKFLOW_PLANE_CHART, *PLANE, "--set", "clusterAgent.health.enabled=false")
    )
    assert not {"startupProbe", "livenessProbe", "readinessProbe"} & set(unprobed)
    assert unprobed["ports"] == [{"name": "health", "containerPort": 8082, "protocol": "TCP"}]
    error = helm.template_error(WORKFLOW_PLANE_CHART, *PLANE, "--set", "clusterAgent.health.port=0")
    assert "port" in error


def test_the_agent_logs_json_when_asked(helm: Helm) -> None:
    args = args_of(
        helm.template(WORKFLOW_PLANE_CHART, *PLANE, "--set", "clusterAgent.logFormat=json"),
        "cluster-agent-workflowplane",
    )
    parsed = build_parser().parse_args(args)
    assert parsed.log_format == "json" and parsed.command == "agent"
    assert (
        build_parser()
        .parse_args(
            args_of(helm.template(WORKFLOW_PLANE_CHART, *PLANE), "cluster-agent-workflowplane")
        )
        .log_format
        == "text"
    )
    error = helm.template_error(WORKFLOW_PLANE_CHART, *PLANE, "--set", "clusterAgent.logFormat=xml")
    assert "logFormat" in error


def test_agent_monitoring_is_off_by_default(helm: Helm) -> None:
    docs = helm.template(WORKFLOW_PLANE_CHART, *PLANE)
    assert not find(docs, "ServiceMonitor") and not find(docs, "Service")


def test_agent_monitoring_objects_render(helm: Helm) -> None:
    docs = helm.template(WORKFLOW_PLANE_CHART, *WP_MONITORING)
    monitor = one(docs, "ServiceMonitor", "cluster-agent-workflowplane")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [WP_NAMESPACE]}
    assert monitor["spec"]["endpoints"][0]["port"] == "health"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    service = one(docs, "Service", "cluster-agent-workflowplane-metrics")
    selected = monitor["spec"]["selector"]["matchLabels"]
    assert selected.items() <= service["metadata"]["labels"].items()
    assert service["spec"]["publishNotReadyAddresses"] is True  # an unready agent is scraped too
    (port,) = service["spec"]["ports"]
    assert (port["name"], port["targetPort"]) == ("health", "health")
    pod = one(docs, "Deployment", "cluster-agent-workflowplane")["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()


def test_agent_metrics_service_server_dry_run(helm: Helm, workflow_plane: ApiServer) -> None:
    """What the API server has kinds for (the ServiceMonitor needs the Prometheus Operator)."""
    _ensure_namespace(workflow_plane, WP_NAMESPACE)
    docs = [
        d
        for d in helm.template(WORKFLOW_PLANE_CHART, *WP_MONITORING)
        if d["kind"] != "ServiceMonitor"
    ]
    out = _dry_run(workflow_plane, yaml.safe_dump_all(docs))
    assert "service/cluster-agent-workflowplane-metrics" in out


# ---- values the components would refuse at start are refused at render ---------------------


@pytest.mark.parametrize(
    ("chart", "settings", "says"),
    [
        (
            CONTROL_PLANE_CHART,
            ["clusterGateway.deadAfterSeconds=10", "clusterGateway.pingIntervalSeconds=30"],
            "is shorter than clusterGateway.pingIntervalSeconds",
        ),
        (CONTROL_PLANE_CHART, ["clusterGateway.maxBodyBytes=512"], "maxBodyBytes"),
        (CONTROL_PLANE_CHART, ["clusterGateway.tls.dnsNames={bad_name!}"], "dnsNames"),
        (
            WORKFLOW_PLANE_CHART,
            [
                "clusterAgent.planeId=p",
                "clusterAgent.reconnect.initialSeconds=60",
                "clusterAgent.reconnect.maxSeconds=5",
            ],
            "is longer than clusterAgent.reconnect.maxSeconds",
        ),
        (
            WORKFLOW_PLANE_CHART,
            ["clusterAgent.planeId=p", "clusterAgent.maxFrameBytes=4096"],
            "maxFrameBytes",
        ),
        (
            WORKFLOW_PLANE_CHART,
            ["clusterAgent.planeId=p", "clusterAgent.certValidityDays=0.5"],
            "certValidityDays",
        ),
    ],
)
def test_values_the_components_would_refuse_fail_at_render(
    helm: Helm, chart: Path, settings: list[str], says: str
) -> None:
    """The agent and gateway check their settings at start; the charts refuse the same
    values when rendered, rather than installing pods that exit."""
    args = [arg for setting in settings for arg in ("--set", setting)]
    assert says in helm.template_error(chart, *args)
