"""Small conveniences for driving a test environment: kubectl and lightkube clients."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from lightkube import AsyncClient
from lightkube.config.kubeconfig import KubeConfig


def kubectl_binary() -> str:
    """The kubectl installed beside this Python (the pinned PyPI one), else the PATH's."""
    beside = Path(sys.executable).parent / "kubectl"
    if beside.exists():
        return str(beside)
    found = shutil.which("kubectl")
    if found is None:
        raise RuntimeError("kubectl not found: install the project (pip install -e .)")
    return found


def kubectl(
    kubeconfig: Path | Sequence[Path],
    context: str,
    *args: str,
    input: str | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run kubectl against one context; raise with its stderr when ``check`` and it fails.
    Several kubeconfig files are merged as KUBECONFIG merges them (``--kubeconfig`` takes one)."""
    files = [kubeconfig] if isinstance(kubeconfig, Path) else list(kubeconfig)
    flag = ["--kubeconfig", str(files[0])] if len(files) == 1 else []
    argv = [kubectl_binary(), *flag, "--context", context, *args]
    result = subprocess.run(
        argv,
        input=input,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "KUBECONFIG": os.pathsep.join(map(str, files))},
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def async_client(kubeconfig: Path, context: str, **kwargs: object) -> AsyncClient:
    config = KubeConfig.from_file(kubeconfig).get(context_name=context)
    return AsyncClient(config=config, **kwargs)  # type: ignore[arg-type]


def gateway_server_ca(kubeconfig: Path, context: str, destination: Path) -> Path:
    """Write the CA of the gateway's server certificate (Secret
    ``openchoreo-control-plane/cluster-gateway-tls``, which the gateway creates on first start)
    to ``destination``: what an agent started outside the cluster trusts."""
    data = kubectl(
        kubeconfig,
        context,
        "get",
        "secret",
        "cluster-gateway-tls",
        "-n",
        "openchoreo-control-plane",
        "-o",
        r"jsonpath={.data.ca\.crt}",
    ).stdout
    destination.write_bytes(base64.b64decode(data))
    return destination
