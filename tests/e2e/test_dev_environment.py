"""The README's first command: ``wpctl dev up`` brings the whole system up with a Ready
WorkflowPlane; the reference page's commands work verbatim against it; ``down`` leaves
nothing behind."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import run_wpctl
from workflowplane.testenv import read_state
from workflowplane.testenv.apiserver import process_alive

pytestmark = pytest.mark.e2e
CP, WP = "wp-control-plane", "wp-workflow-plane"


def _logs_of(dev_state: Path) -> str:
    """The dev environment's component logs (the state directory goes with the test)."""
    logs = sorted((dev_state / "dev" / "logs").glob("*.log"))
    return "".join(f"\n--- {log.name} (last lines) ---\n{log.read_text()[-3000:]}" for log in logs)


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _shell(script: str, kubeconfig: Path) -> subprocess.CompletedProcess[str]:
    """A user's shell: the pinned kubectl first on PATH, KUBECONFIG from `dev up`."""
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def _connected(kubeconfig: Path, name: str, namespace: str) -> bool:
    result = _shell(f"kubectl --context {CP} get wp {name} -n {namespace} -o json", kubeconfig)
    if result.returncode != 0:
        return False
    status = json.loads(result.stdout).get("status") or {}
    return bool((status.get("agentConnection") or {}).get("connected"))


def _wait_connected(kubeconfig: Path, name: str, namespace: str) -> None:
    import time  # noqa: PLC0415

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if _connected(kubeconfig, name, namespace):
            return
        time.sleep(0.5)
    raise AssertionError(f"{namespace}/{name} never showed agentConnection.connected=true")


def _until(check: Any, what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout}s")


def _run_a_workflow(dev_state: Path, kubeconfig: Path) -> None:
    """The sample ClusterWorkflow, run with wpctl as the README says: Argo's real controller
    runs its steps on kwok's simulated node, and the run reaches Succeeded by itself."""
    access = ("--kubeconfig", str(kubeconfig), "--context", CP)
    started = run_wpctl(
        dev_state,
        "run",
        "docker-build",
        "-p",
        "repository.url=https://git.example/app",
        "-p",
        "image.name=registry.local/app",
        "--name",
        "first-build",
        *access,
    )
    assert started.returncode == 0, started.stderr
    assert "workflowrun.openchoreo.dev/first-build created" in started.stdout
    argo = f"kubectl --context {WP} -n workflows-default get workflows.argoproj.io first-build"
    created = _until(
        lambda: (r := _shell(f"{argo} -o json", kubeconfig)).returncode == 0 and r.stdout,
        "the Argo Workflow on the plane",
    )
    parameters = json.loads(created)["spec"]["arguments"]["parameters"]
    assert {"name": "image", "value": "registry.local/app:latest"} in parameters
    _until(
        lambda: "Succeeded" in run_wpctl(dev_state, "runs", *access).stdout,
        "wpctl runs showing the run Succeeded",
        timeout=60,
    )
    # Each step pod's log, read on the plane through the tunnel: kwok's, saying why the
    # simulated step printed nothing; then a container that does not exist is named.
    logs = run_wpctl(dev_state, "logs", "first-build", *access)
    assert logs.returncode == 0, logs.stderr
    assert "==> first-build[0].checkout (first-build-checkout-" in logs.stdout, logs.stdout
    assert "==> first-build[1].build-and-push (" in logs.stdout
    assert "simulated node (kwok)" in logs.stdout
    # Following a run while it runs ends with the run (kwok never ends a follow stream; each
    # pod is followed only until it finishes, a finished one is read whole).
    again = ("-p", "repository.url=https://git.example/app", "-p", "image.name=reg/app")
    followed = run_wpctl(dev_state, "run", "docker-build", *again, "--name", "followed", *access)
    assert followed.returncode == 0, followed.stderr
    _until(
        lambda: run_wpctl(dev_state, "logs", "followed", *access).returncode == 0,
        "the followed run sent to its plane",
    )
    following = run_wpctl(dev_state, "logs", "followed", "-f", *access, timeout=90)
    assert following.returncode == 0, following.stderr
    assert "==> followed[0].checkout (" in following.stdout, following.stdout
    assert "==> followed[1].build-and-push (" in following.stdout, following.stdout
    # Deleted and run again under its name: the new run waits for the old Argo Workflow and
    # its pods to go (the plane's garbage collector), then runs on pods of its own.
    deleted = _shell(f"kubectl --context {CP} delete workflowrun followed", kubeconfig)
    assert deleted.returncode == 0, deleted.stderr
    rerun = run_wpctl(
        dev_state, "run", "docker-build", *again, "--name", "followed", "--wait", *access
    )
    assert rerun.returncode == 0 and "followed: Succeeded" in rerun.stdout, rerun.stdout
    wrong_container = run_wpctl(dev_state, "logs", "first-build", "--container", "x", *access)
    assert wrong_container.returncode == 1
    assert "HTTP 400: container x is not valid for pod first-build-checkout-" in (
        wrong_container.stderr
    ), wrong_container.stderr

    wrong = run_wpctl(
        dev_state,
        "run",
        "docker-build",
        "-p",
        "repository.url=x",
        "-p",
        "nope=1",
        "--wait",
        *access,
    )
    assert wrong.returncode == 1 and "RenderFailed" in wrong.stdout, wrong.stdout + wrong.stderr
    assert "unknown parameter 'nope'" in wrong.stdout
    missing = run_wpctl(dev_state, "run", "no-such-workflow", *access)
    assert (
        missing.returncode == 3 and "ClusterWorkflow 'no-such-workflow' not found" in missing.stderr
    )


def test_dev_up_the_reference_flows_and_down(dev_state: Path) -> None:
    up = run_wpctl(dev_state, "dev", "up")
    assert up.returncode == 0, up.stderr + up.stdout + _logs_of(dev_state)
    kubeconfig = dev_state / "dev" / "kubeconfig"
    assert f"kubectl --context {CP}" in up.stdout and "True (Ready)" in up.stdout
    # Built before the tests (wp test), so up waits for them: the next run can succeed.
    assert "plane systems: running on workflow-plane" in up.stdout, up.stdout

    # Reference page, "Extracting the CA Certificate", verbatim with the printed context.
    extract = _shell(
        f"kubectl --context {WP} get secret cluster-agent-tls "
        "-n openchoreo-workflow-plane -o jsonpath='{.data.ca\\.crt}' | base64 -d",
        kubeconfig,
    )
    assert extract.returncode == 0 and extract.stdout.startswith("-----BEGIN CERTIFICATE-----")

    # Option 1: inline value (the page's heredoc, run by bash).
    option1 = f"""
kubectl --context {CP} create namespace my-org
WP_CA_CERT=$(kubectl --context {WP} get secret cluster-agent-tls \\
-n openchoreo-workflow-plane \\
-o jsonpath='{{.data.ca\\.crt}}' | base64 -d)
kubectl --context {CP} apply -f - <<EOF
apiVersion: openchoreo.dev/v1alpha1
kind: WorkflowPlane
metadata:
  name: my-workflowplane
  namespace: my-org
spec:
  planeID: "default"
  clusterAgent:
    clientCA:
      value: |
$(echo "$WP_CA_CERT" | sed 's/^/        /')
EOF
"""
    result = _shell(option1, kubeconfig)
    assert result.returncode == 0, result.stderr
    _wait_connected(kubeconfig, "my-workflowplane", "my-org")

    # Option 2: the CA in a Secret in the control plane, referenced by the CR.
    option2 = f"""
kubectl --context {WP} get secret cluster-agent-tls \\
-n openchoreo-workflow-plane \\
-o jsonpath='{{.data.ca\\.crt}}' | base64 -d > {dev_state}/workflowplane-ca.crt
kubectl --context {CP} create secret generic workflowplane-agent-ca \\
--from-file=ca.crt={dev_state}/workflowplane-ca.crt \\
-n my-org
kubectl --context {CP} apply -f - <<EOF
apiVersion: openchoreo.dev/v1alpha1
kind: WorkflowPlane
metadata:
  name: my-secret-workflowplane
  namespace: my-org
spec:
  planeID: "default"
  clusterAgent:
    clientCA:
      secretKeyRef:
        name: workflowplane-agent-ca
        namespace: my-org
        key: ca.crt
EOF
"""
    result = _shell(option2, kubeconfig)
    assert result.returncode == 0, result.stderr
    _wait_connected(kubeconfig, "my-secret-workflowplane", "my-org")

    listing = run_wpctl(dev_state, "get", "wp", "--kubeconfig", str(kubeconfig), "--context", CP)
    assert listing.returncode == 0 and "my-secret-workflowplane" in listing.stdout

    doctor = run_wpctl(
        dev_state,
        "doctor",
        "workflow-plane",
        "-n",
        "default",
        "--kubeconfig",
        str(kubeconfig),
        "--cp-context",
        CP,
        "--wp-context",
        WP,
    )
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "FAIL" not in doctor.stdout and "fingerprints match" in doctor.stdout
    elsewhere = run_wpctl(
        dev_state,
        *("doctor", "workflow-plane", "-n", "default", "--kubeconfig", str(kubeconfig)),
        *("--cp-context", CP, "--wp-context", WP, "--agent-namespace", "no-agent-here"),
    )
    assert elsewhere.returncode == 1 and "no-agent-here" in elsewhere.stdout, elsewhere.stdout
    wrong = _shell(
        f"kubectl --context {CP} -n my-org create secret generic wrong-ca "
        "--from-literal=ca.crt=garbage && "
        f"kubectl --context {CP} -n my-org patch wp my-secret-workflowplane --type=merge "
        """-p '{"spec":{"clusterAgent":{"clientCA":{"secretKeyRef":"""
        """{"name":"wrong-ca","key":"ca.crt","namespace":"my-org"}}}}}'""",
        kubeconfig,
    )
    assert wrong.returncode == 0, wrong.stderr
    sick = run_wpctl(
        dev_state,
        "doctor",
        "my-secret-workflowplane",
        "-n",
        "my-org",
        "--kubeconfig",
        str(kubeconfig),
        "--cp-context",
        CP,
    )
    assert sick.returncode == 1 and "FAIL  client CA" in sick.stdout, sick.stdout

    _run_a_workflow(dev_state, kubeconfig)

    again = run_wpctl(dev_state, "dev", "up", "--planes", "2")
    assert again.returncode == 0 and "already running" in again.stderr
    assert "already runs 1 workflow plane(s), not 2" in again.stderr  # not silently kept
    status = run_wpctl(dev_state, "dev", "status")
    assert status.returncode == 0, status.stderr
    for component in ("gateway", "controller"):
        assert re.search(
            rf"ok +{component} \(http://127\.0\.0\.1:\d+\) is live and ready", (status.stdout)
        ), status.stdout

    servers = read_state(dev_state / "dev")
    processes = json.loads((dev_state / "dev" / "processes.json").read_text())
    systems = json.loads(
        (dev_state / "dev" / "workflow-plane" / "plane-systems" / "plane-systems.json").read_text()
    )
    pids = [pid for s in servers for pid in s.pids] + [p["pid"] for p in processes.values()]
    pids += systems["pids"].values()
    ports = [int(s.url.rsplit(":", 1)[1]) for s in servers] + [
        processes["control-plane"][k] for k in ("public", "internal", "health", "controller_health")
    ]
    ports += systems["ports"].values()
    assert all(_port_open(port) for port in ports)
    down = run_wpctl(dev_state, "dev", "down")
    assert down.returncode == 0, down.stderr
    assert not any(process_alive(pid) for pid in pids)
    assert not any(_port_open(port) for port in ports)
    assert not (dev_state / "dev").exists()
    gone = run_wpctl(dev_state, "dev", "status")
    assert gone.returncode != 0 and "not running" in gone.stderr
