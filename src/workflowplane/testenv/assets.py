"""Find or build the ``kube-apiserver`` and ``etcd`` binaries the test environment runs.

No registry ships them, so they are built from their pinned Go modules and cached outside the
repository, keyed by version: the first build takes minutes on two cores, every later run none.
An existing envtest install is honoured through ``KUBEBUILDER_ASSETS``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from workflowplane.testenv.gobuild import (
    BuildError,
    GoBuild,
    Step,
    write_if_changed,
)

KUBERNETES_VERSION = "1.36.3"
ETCD_VERSION = "3.6.8"

# k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with local paths
# that do not exist outside its own tree; a consumer must replace each with its published
# release. This list is k8s.io/kubernetes v1.36.3's own go.mod `replace` block.
STAGING_MODULES = (
    "api", "apiextensions-apiserver", "apimachinery", "apiserver", "cli-runtime", "client-go",
    "cloud-provider", "cluster-bootstrap", "code-generator", "component-base",
    "component-helpers", "controller-manager", "cri-api", "cri-client", "cri-streaming",
    "csi-translation-lib", "dynamic-resource-allocation", "endpointslice", "externaljwt", "kms",
    "kube-aggregator", "kube-controller-manager", "kube-proxy", "kube-scheduler", "kubectl",
    "kubelet", "metrics", "mount-utils", "pod-security-admission", "sample-apiserver",
    "streaming",
)  # fmt: skip


AssetsError = BuildError


@dataclass(frozen=True)
class Assets:
    kube_apiserver: Path
    etcd: Path


def _kube_go_mod() -> str:
    replaces = "\n".join(
        f"\tk8s.io/{name} => k8s.io/{name} v0.{KUBERNETES_VERSION.split('.', 1)[1]}"
        for name in STAGING_MODULES
    )
    return (
        "module workflowplane.local/kube-build\n\ngo 1.26.0\n\n"
        f"require k8s.io/kubernetes v{KUBERNETES_VERSION}\n\nreplace (\n{replaces}\n)\n"
    )


def kube_version_ldflags() -> str:
    """What ``--version`` prints, as the Kubernetes release build sets it."""
    major, minor, _ = KUBERNETES_VERSION.split(".")
    return " ".join(
        f"-X k8s.io/component-base/version.{key}={value}"
        for key, value in (
            ("gitVersion", f"v{KUBERNETES_VERSION}"),
            ("gitMajor", major),
            ("gitMinor", minor),
        )
    )


def prepare_kube_module(directory: Path) -> None:
    """A scratch module that requires k8s.io/kubernetes with its staging modules replaced."""
    write_if_changed(directory / "go.mod", _kube_go_mod())


def _prepare(work: Path) -> None:
    write_if_changed(
        work / "etcd" / "go.mod",
        "module workflowplane.local/etcd-build\n\ngo 1.26.0\n\n"
        f"require go.etcd.io/etcd/server/v3 v{ETCD_VERSION}\n",
    )
    write_if_changed(work / "etcd" / "main.go", _ETCD_MAIN)
    prepare_kube_module(work / "kube")


def _steps(go: str) -> list[Step]:
    return [
        Step("resolve etcd modules", [go, "mod", "tidy"], "etcd"),
        Step("build etcd", [go, "build", *STRIP, "-o", "{out}/etcd", "."], "etcd"),
        Step(
            "resolve Kubernetes modules",
            [go, "get", f"k8s.io/kubernetes/cmd/kube-apiserver@v{KUBERNETES_VERSION}"],
            "kube",
        ),
        Step(
            "build kube-apiserver (the long step)",
            [
                go,
                "build",
                "-trimpath",
                "-ldflags",
                f"-s -w {kube_version_ldflags()}",
                "-o",
                "{out}/kube-apiserver",
                "k8s.io/kubernetes/cmd/kube-apiserver",
            ],
            "kube",
        ),
    ]


STRIP = ("-trimpath", "-ldflags", "-s -w")
API_SERVERS = GoBuild(
    name="k8s",
    version=f"{KUBERNETES_VERSION}-etcd-{ETCD_VERSION}",
    outputs=("kube-apiserver", "etcd"),
    steps=_steps,
    prepare=_prepare,
    group="envtest",
)


def versioned_dir() -> Path:
    return API_SERVERS.target


def _from_dir(directory: Path) -> Assets | None:
    found = API_SERVERS.located(directory)
    return None if found is None else Assets(found / "kube-apiserver", found / "etcd")


def locate() -> Assets | None:
    """``KUBEBUILDER_ASSETS`` first (an envtest install), then our own cache."""
    configured = os.environ.get("KUBEBUILDER_ASSETS")
    if configured:
        found = _from_dir(Path(configured))
        if found is None:
            raise AssetsError(
                f"KUBEBUILDER_ASSETS={configured} has no kube-apiserver and etcd binaries; "
                "unset it to build them, or point it at an envtest install"
            )
        return found
    return _from_dir(versioned_dir())


def ensure(*, log: bool = True) -> Assets:
    """Return usable binaries, building them first when nothing is cached."""
    found = locate()
    if found is not None:
        return found
    built = _from_dir(API_SERVERS.ensure(log=log))
    assert built is not None
    return built


_ETCD_MAIN = """package main

import (
\t"os"

\t"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
"""
