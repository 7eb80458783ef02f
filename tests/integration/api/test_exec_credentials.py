"""A kubeconfig whose user is a ``client.authentication.k8s.io/v1`` credential plugin (what
EKS, GKE and AKS write now), against the real API server: lightkube runs only v1beta1 ones,
and every command refused such a kubeconfig. The plugin here hands out a service account's
token, so the API server names the plugin's user in its answer."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import Namespace

from tests.unit.cli.wpctl import wpctl
from workflowplane.api.kube import kube_client, load_config
from workflowplane.testenv import ApiServer
from workflowplane.testenv.tools import kubectl

pytestmark = pytest.mark.integration

PLUGIN = """
import json, os, sys
info = json.loads(os.environ["KUBERNETES_EXEC_INFO"])
if info["apiVersion"] != "client.authentication.k8s.io/v1" or info["spec"]["interactive"]:
    sys.exit("not told it runs as a v1 plugin without a terminal")
print(json.dumps({
    "apiVersion": "client.authentication.k8s.io/v1",
    "kind": "ExecCredential",
    "status": {"token": %r},
}))
"""


@pytest.fixture
def exec_kubeconfig(control_plane: ApiServer, tmp_path: Path) -> tuple[Path, str]:
    """A kubeconfig for the control plane whose user is a v1 plugin, and that user's name."""
    account = f"plugin-{uuid.uuid4().hex[:6]}"
    run = [control_plane.kubeconfig, control_plane.context]
    kubectl(*run, "create", "serviceaccount", account, "-n", "default")
    token = kubectl(*run, "create", "token", account, "-n", "default").stdout.strip()
    plugin = tmp_path / "plugin.py"
    plugin.write_text(PLUGIN % token)
    source = yaml.safe_load(control_plane.kubeconfig.read_text())
    cluster = next(c for c in source["clusters"] if c["name"] in json.dumps(source["contexts"]))
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [cluster],
                "contexts": [{"name": "x", "context": {"cluster": cluster["name"], "user": "p"}}],
                "current-context": "x",
                "users": [
                    {
                        "name": "p",
                        "user": {
                            "exec": {
                                "apiVersion": "client.authentication.k8s.io/v1",
                                "command": sys.executable,
                                "args": [str(plugin)],
                                "interactiveMode": "Never",
                            }
                        },
                    }
                ],
            }
        )
    )
    return kubeconfig, f"system:serviceaccount:default:{account}"


async def test_the_components_client_authenticates_with_a_v1_plugin(
    exec_kubeconfig: tuple[Path, str],
) -> None:
    kubeconfig, user = exec_kubeconfig
    client = kube_client(load_config(kubeconfig, None))
    try:
        with pytest.raises(ApiError) as refused:  # authenticated as the plugin's user
            await client.get(Namespace, "default")
        assert refused.value.status.code == 403 and user in refused.value.status.message
    finally:
        await client.close()


def test_wpctl_authenticates_with_a_v1_plugin(
    exec_kubeconfig: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    kubeconfig, user = exec_kubeconfig
    code, err = wpctl(capsys, "get", "wp", "--kubeconfig", str(kubeconfig))
    assert code != 0 and "403" in err and user in err, err
