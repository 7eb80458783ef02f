"""Run a local workflow plane's systems against its API server: Argo, a scheduler, a node.

``PlaneRuntime`` installs what they need (Argo's CRDs and configuration, a kwok node, a
default StorageClass), then starts ``kube-scheduler`` (binds step pods to the node),
``kube-controller-manager`` with only its garbage collector and volume protection (a deleted
Argo Workflow's pods and claims go with it, and a foreground deletion ends, as on any cluster;
Argo names the pods after the Workflow, so pods left behind would be taken for its
namesake's), ``kwok``
(plays the node's kubelet: pods start, then succeed or fail as ``kwok_pods.yaml`` says, and
``kubectl logs`` gets a log through the API server's kubelet proxy), Argo's
``workflow-controller`` and External Secrets' controller (a ``ClusterSecretStore`` with its
fake provider is a local secret store: ``fake_secret_store``). Each is optional; the processes
die with their parent unless detached.

Argo's executor never runs here (kwok starts no container), so Argo learns each step's result
from the pod's status alone, which is all it needs: phase, and the containers' terminated
states for exit codes and times.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from workflowplane.testenv.apiserver import (
    ApiServer,
    StartError,
    alive_child,
    free_port,
    spawn,
    stop_process_group,
    tail,
    wait_on_fresh_ports,
)
from workflowplane.testenv.plane_systems import ALL, PlaneBinaries
from workflowplane.testenv.tools import kubectl

log = logging.getLogger(__name__)
# A system that exits while starting is tried once more on fresh ports: the ports are picked
# free but not held until the process binds them, and under load another process (an outgoing
# connection's ephemeral port, a parallel test) can take one in between.
START_ATTEMPTS = 2


class ExitedDuringStart(StartError):
    """A system's process ended before it was ready (its log tail is in the message)."""


NODE = "kwok-node"
ARGO_NAMESPACE = "argo"
ARGO_CONFIGMAP = "workflow-controller-configmap"
# The garbage collector, and the two that let a used volume's claim and volume go once no
# pod uses them (the API server puts their finalizers on; without these a claim of a run
# deleted while it ran stayed Terminating, and held its Argo Workflow's foreground deletion).
# The plane's other controllers (node lifecycle, namespaces, ReplicaSets...) are not what runs
# need, and each would watch and write of its own.
CONTROLLERS = (
    "garbage-collector-controller",
    "persistentvolumeclaim-protection-controller",
    "persistentvolume-protection-controller",
)
READY_TIMEOUT_SECONDS = 90.0
STATE_FILE = "plane-systems.json"
SIMULATED_LOG = (
    "this step ran on the local plane's simulated node (kwok): its container was not started, "
    "so it printed nothing; kwok moved the pod through Running to its end state "
    "(see src/workflowplane/testenv/kwok_pods.yaml for how a step's command decides it)"
)


class _NoAliases(yaml.SafeDumper):
    """kwok reads its configuration with a YAML decoder that we do not want to test on
    anchors; our stage file uses them, the written file spells everything out."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _node(port: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": NODE,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": NODE,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
            },
        },
        "status": {
            "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "1000"},
            "capacity": {"cpu": "64", "memory": "256Gi", "pods": "1000"},
            "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
        },
    }


def _argo_config(metrics_port: int) -> dict[str, Any]:
    """Argo's controller configuration: its metrics server (Argo's only readiness signal)
    on a port of its own, so several planes can run on one machine."""
    metrics = {"enabled": True, "port": metrics_port, "secure": False, "path": "/metrics"}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": ARGO_CONFIGMAP, "namespace": ARGO_NAMESPACE},
        "data": {
            "metricsConfig": yaml.safe_dump(metrics),
            "telemetryConfig": yaml.safe_dump({"enabled": False}),
        },
    }


def fake_secret_store(name: str, data: dict[str, str]) -> dict[str, Any]:
    """A ClusterSecretStore whose secrets are ``data`` (key → value; a JSON object value
    gives one Secret key per member to ``dataFrom.extract``)."""
    return {
        "apiVersion": "external-secrets.io/v1",
        "kind": "ClusterSecretStore",
        "metadata": {"name": name},
        "spec": {"provider": {"fake": {"data": [{"key": k, "value": v} for k, v in data.items()]}}},
    }


@dataclass
class PlaneRuntime:
    """The systems of one plane; ``directory`` is that API server's own (kubeconfig, pki)."""

    directory: Path
    context: str
    binaries: PlaneBinaries
    systems: Sequence[str] = ALL
    detached: bool = False
    kwok_port: int = field(default_factory=free_port)
    scheduler_port: int = field(default_factory=free_port)
    controller_manager_port: int = field(default_factory=free_port)
    argo_metrics_port: int = field(default_factory=free_port)
    eso_metrics_port: int = field(default_factory=free_port)
    pids: dict[str, int] = field(default_factory=dict)

    @classmethod
    def for_server(cls, server: ApiServer, binaries: PlaneBinaries, **kwargs: Any) -> PlaneRuntime:
        return cls(server.workdir, server.context, binaries, detached=server.detached, **kwargs)

    @property
    def kubeconfig(self) -> Path:
        return self.directory / "kubeconfig"

    @property
    def workdir(self) -> Path:
        return self.directory / "plane-systems"

    @property
    def pki(self) -> Path:
        return self.directory / "pki"

    def _kubectl(self, *args: str, input: str | None = None) -> str:
        return kubectl(self.kubeconfig, self.context, *args, input=input).stdout

    def _apply(self, *manifests: dict[str, Any]) -> None:
        items = {"apiVersion": "v1", "kind": "List", "items": list(manifests)}
        self._kubectl("apply", "-f", "-", input=json.dumps(items))

    # ---- install -----------------------------------------------------------------------

    def install(self) -> None:
        """What the systems expect to find in the API server (idempotent)."""
        if "argo" in self.systems:
            assert self.binaries.argo_crds is not None
            self._install_crds(self.binaries.argo_crds)
            namespace = {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": ARGO_NAMESPACE},
            }
            self._apply(namespace, _argo_config(self.argo_metrics_port))
        if "eso" in self.systems:
            assert self.binaries.eso_crds is not None
            self._install_crds(self.binaries.eso_crds)
        if "kwok" in self.systems:
            assert self.binaries.kwok_stages is not None
            self._kubectl("apply", "-f", str(self.binaries.kwok_stages / "storage-class.yaml"))
            self._apply(_node(self.kwok_port))
            # The API server taints a new node not-ready; the node lifecycle controller that
            # would lift it once kwok reports Ready (kube-controller-manager) does not run here.
            self._kubectl("patch", "node", NODE, "--type=merge", "-p", '{"spec":{"taints":null}}')

    def _install_crds(self, directory: Path) -> None:
        # --force-conflicts: a plane may have had the project's copy of a CRD (Workflow,
        # ExternalSecret); the controller's own replaces it.
        self._kubectl("apply", "--server-side", "--force-conflicts", "-f", str(directory))
        self._kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(directory))

    def _kwok_config(self) -> Path:
        """kwok's stages (ours for pods, kwok's for the node and volumes) and its logs."""
        assert self.binaries.kwok_stages is not None
        log = self.workdir / "simulated-step.log"
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        log.write_text(f"{stamp} stdout F {SIMULATED_LOG}\n")
        ours = resources.files("workflowplane.testenv").joinpath("kwok_pods.yaml").read_text()
        documents: list[dict[str, Any]] = list(yaml.safe_load(ours))
        for path in sorted(self.binaries.kwok_stages.glob("*.yaml")):
            documents += [d for d in yaml.safe_load_all(path.read_text()) if d["kind"] == "Stage"]
        documents.append(
            {
                "apiVersion": "kwok.x-k8s.io/v1alpha1",
                "kind": "ClusterLogs",
                "metadata": {"name": "simulated-steps"},
                "spec": {"logs": [{"logsFile": str(log), "follow": False}]},
            }
        )
        path = self.workdir / "kwok.yaml"
        path.write_text(yaml.dump_all(documents, Dumper=_NoAliases, sort_keys=False))
        return path

    # ---- processes ---------------------------------------------------------------------

    def _argv(self) -> dict[str, tuple[list[str], dict[str, str]]]:
        b, kubeconfig = self.binaries, str(self.kubeconfig)
        commands: dict[str, tuple[list[str], dict[str, str]]] = {}
        if "kube-scheduler" in self.systems:
            assert b.kube_scheduler is not None
            commands["kube-scheduler"] = (
                _kube_component(b.kube_scheduler, kubeconfig, self.scheduler_port),
                {},
            )
        if "kube-controller-manager" in self.systems:
            assert b.kube_controller_manager is not None
            manager = _kube_component(
                b.kube_controller_manager, kubeconfig, self.controller_manager_port
            )
            commands["kube-controller-manager"] = (
                [*manager, f"--controllers={','.join(CONTROLLERS)}"],
                {},
            )
        if "kwok" in self.systems:
            assert b.kwok is not None
            commands["kwok"] = (
                [
                    str(b.kwok),
                    f"--kubeconfig={kubeconfig}",
                    f"--config={self._kwok_config()}",
                    f"--manage-single-node={NODE}",
                    "--node-ip=127.0.0.1",
                    f"--node-port={self.kwok_port}",
                    f"--server-address=127.0.0.1:{self.kwok_port}",
                    f"--tls-cert-file={self.pki / 'kubelet.crt'}",
                    f"--tls-private-key-file={self.pki / 'kubelet.key'}",
                ],
                {},
            )
        if "argo" in self.systems:
            assert b.workflow_controller is not None
            commands["workflow-controller"] = (
                [
                    str(b.workflow_controller),
                    f"--kubeconfig={kubeconfig}",
                    f"--namespace={ARGO_NAMESPACE}",
                    f"--configmap={ARGO_CONFIGMAP}",
                    "--loglevel=info",
                ],
                # One controller per plane; requeue after 1 s, not 10, as Argo's own dev
                # environment runs it (a step's end reaches the Workflow within a second).
                {"LEADER_ELECTION_DISABLE": "true", "DEFAULT_REQUEUE_TIME": "1s"},
            )
        if "eso" in self.systems:
            assert b.external_secrets is not None
            commands["external-secrets"] = (
                [
                    str(b.external_secrets),
                    f"--metrics-addr=127.0.0.1:{self.eso_metrics_port}",
                    "--enable-leader-election=false",
                    "--loglevel=info",
                ],
                {"KUBECONFIG": kubeconfig},  # its flags have no --kubeconfig
            )
        return commands

    @classmethod
    def resumed(
        cls, directory: Path, context: str, binaries: PlaneBinaries, **kwargs: Any
    ) -> PlaneRuntime:
        """A runtime on the ports an earlier one recorded for this plane (the node keeps
        kwok's port in its status), or on fresh ports the first time."""
        runtime = cls(directory, context, binaries, **kwargs)
        state = runtime.workdir / STATE_FILE
        if state.exists():
            ports = json.loads(state.read_text())["ports"]
            runtime.kwok_port = ports["kwok"]
            runtime.scheduler_port = ports["kube-scheduler"]
            runtime.controller_manager_port = ports.get(
                "kube-controller-manager", runtime.controller_manager_port
            )
            runtime.argo_metrics_port = ports["argo-metrics"]
            runtime.eso_metrics_port = ports.get("eso-metrics", runtime.eso_metrics_port)
        return runtime

    def launch(self) -> None:
        """Install, then start the processes without waiting for them."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.install()
        for name in self._argv():
            self._spawn(name)
        self._save_state()

    def _spawn(self, name: str) -> None:
        argv, env = self._argv()[name]
        log = self.workdir / "logs" / f"{name}.log"
        self.pids[name] = spawn(argv, log, detached=self.detached, env=env)

    def restart_exited(self) -> list[str]:
        """Start again, on the same ports, whichever process has exited; returns their names."""
        exited = [name for name, pid in self.pids.items() if not alive_child(pid)]
        for name in exited:
            self._spawn(name)
        if exited:
            self._save_state()
        return exited

    def start(self) -> None:
        self.launch()
        try:
            wait_on_fresh_ports(self.wait_ready, self._again, ExitedDuringStart, START_ATTEMPTS)
        except StartError:
            self.stop()
            raise

    def _again(self, failure: StartError) -> None:
        self.stop()
        log.warning("%s; starting again on fresh ports", str(failure).splitlines()[0])
        self._fresh_ports()
        self.launch()

    def _fresh_ports(self) -> None:
        self.kwok_port, self.scheduler_port = free_port(), free_port()
        self.controller_manager_port = free_port()
        self.argo_metrics_port, self.eso_metrics_port = free_port(), free_port()

    def stop(self) -> None:
        for pid in reversed(list(self.pids.values())):
            stop_process_group(pid)
        self.pids.clear()
        (self.workdir / STATE_FILE).unlink(missing_ok=True)

    def _save_state(self) -> None:
        state = {
            "pids": self.pids,
            "ports": {
                "kwok": self.kwok_port,
                "kube-scheduler": self.scheduler_port,
                "kube-controller-manager": self.controller_manager_port,
                "argo-metrics": self.argo_metrics_port,
                "eso-metrics": self.eso_metrics_port,
            },
        }
        (self.workdir / STATE_FILE).write_text(json.dumps(state, indent=2))

    # ---- readiness ---------------------------------------------------------------------

    def _probes(self) -> dict[str, Callable[[], bool]]:
        probes: dict[str, Callable[[], bool]] = {}
        insecure = ssl.create_default_context()
        insecure.check_hostname, insecure.verify_mode = False, ssl.CERT_NONE
        if "kube-scheduler" in self.pids:
            url = f"https://127.0.0.1:{self.scheduler_port}/healthz"
            probes["kube-scheduler"] = lambda: _answers(url, insecure)
        if "kube-controller-manager" in self.pids:
            manager = f"https://127.0.0.1:{self.controller_manager_port}/healthz"
            probes["kube-controller-manager"] = lambda: _answers(manager, insecure)
        if "kwok" in self.pids:
            kubelet = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
            url = f"https://127.0.0.1:{self.kwok_port}/healthz"
            probes["kwok"] = lambda: _answers(url, kubelet) and self._node_ready()
        if "workflow-controller" in self.pids:
            url = f"http://127.0.0.1:{self.argo_metrics_port}/metrics"
            probes["workflow-controller"] = lambda: _answers(url, None)
        if "external-secrets" in self.pids:
            eso = f"http://127.0.0.1:{self.eso_metrics_port}/metrics"
            probes["external-secrets"] = lambda: _answers(eso, None)
        return probes

    def _node_ready(self) -> bool:
        out = kubectl(
            self.kubeconfig,
            self.context,
            "get",
            "node",
            NODE,
            "-o",
            'jsonpath={.status.conditions[?(@.type=="Ready")].status}',
            check=False,
        )
        return out.stdout == "True"

    def wait_ready(self, timeout: float = READY_TIMEOUT_SECONDS) -> None:
        pending = self._probes()
        deadline = time.monotonic() + timeout
        while pending:
            dead = [name for name, pid in self.pids.items() if not alive_child(pid)]
            if dead:
                what = f"{', '.join(dead)} exited during start-up"
                raise ExitedDuringStart(self._failure(what))
            pending = {name: probe for name, probe in pending.items() if not probe()}
            if pending and time.monotonic() > deadline:
                raise StartError(
                    self._failure(f"not ready after {timeout:.0f}s: {sorted(pending)}")
                )
            time.sleep(0.2)

    def _failure(self, what: str) -> str:
        logs = "\n".join(
            f"--- {name} log (last lines) ---\n{tail(self.workdir / 'logs' / f'{name}.log')}"
            for name in self.pids
        )
        return f"plane systems of {self.context} failed: {what}\n{logs}"


def _kube_component(binary: Path, kubeconfig: str, port: int) -> list[str]:
    """A Kubernetes control-plane component of one replica, its health on ``port``."""
    return [
        str(binary),
        f"--kubeconfig={kubeconfig}",
        "--leader-elect=false",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        "--v=1",
    ]


def _answers(url: str, context: ssl.SSLContext | None) -> bool:
    try:
        with urllib.request.urlopen(url, context=context, timeout=2) as response:
            status: int = response.status
            return 200 <= status < 300
    except (urllib.error.URLError, OSError):
        return False
