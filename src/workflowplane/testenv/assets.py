"""Find or build the ``kube-apiserver`` and ``etcd`` binaries the test environment runs.

No registry ships them, so they are built from their pinned Go modules and cached outside the
repository, keyed by version: the first build takes minutes on two cores, every later run none.
An existing envtest install is honoured through ``KUBEBUILDER_ASSETS``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

KUBERNETES_VERSION = "1.36.3"
ETCD_VERSION = "3.6.8"
GO_MINIMUM = (1, 26)

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


class AssetsError(RuntimeError):
    """The binaries cannot be found or built; the message says what to do."""


@dataclass(frozen=True)
class Assets:
    kube_apiserver: Path
    etcd: Path


def cache_root() -> Path:
    """``$WORKFLOWPLANE_CACHE``, else ``$XDG_CACHE_HOME/workflowplane`` (``~/.cache``)."""
    explicit = os.environ.get("WORKFLOWPLANE_CACHE")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "workflowplane"


def versioned_dir() -> Path:
    return cache_root() / "envtest" / f"k8s-{KUBERNETES_VERSION}-etcd-{ETCD_VERSION}"


def _from_dir(directory: Path) -> Assets | None:
    assets = Assets(directory / "kube-apiserver", directory / "etcd")
    if assets.kube_apiserver.is_file() and assets.etcd.is_file():
        return assets
    return None


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
    return build(log=log)


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        raise AssetsError(
            "Go is not installed (needed once to build kube-apiserver and etcd from their Go "
            f"modules). Install Go >= {GO_MINIMUM[0]}.{GO_MINIMUM[1]}, or set KUBEBUILDER_ASSETS "
            "to a directory holding kube-apiserver and etcd."
        )
    return go


def _kube_go_mod() -> str:
    replaces = "\n".join(
        f"\tk8s.io/{name} => k8s.io/{name} v0.{KUBERNETES_VERSION.split('.', 1)[1]}"
        for name in STAGING_MODULES
    )
    return (
        "module workflowplane.local/kube-apiserver-build\n\ngo 1.26.0\n\n"
        f"require k8s.io/kubernetes v{KUBERNETES_VERSION}\n\nreplace (\n{replaces}\n)\n"
    )


_ETCD_MAIN = """package main

import (
\t"os"

\t"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
"""


def _run(step: str, args: list[str], cwd: Path, log: bool) -> None:
    started = time.monotonic()
    if log:
        print(f"==> {step} (in {cwd})", file=sys.stderr, flush=True)
    env = {**os.environ, "CGO_ENABLED": "0"}
    result = subprocess.run(
        args,
        cwd=cwd,
        env=env,
        stdout=sys.stderr if log else subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        check=False,
    )
    if result.returncode != 0:
        raise AssetsError(f"{step} failed (exit {result.returncode}); see the output above")
    if log:
        print(f"    done in {time.monotonic() - started:.0f}s", file=sys.stderr, flush=True)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def build(*, log: bool = True) -> Assets:
    """Build both binaries into the versioned cache; safe to rerun after an interruption."""
    go = _go()
    target = versioned_dir()
    work = cache_root() / "envtest" / "build"
    if log:
        print(
            f"Building kube-apiserver v{KUBERNETES_VERSION} and etcd v{ETCD_VERSION} from their "
            f"Go modules (once; several minutes on 2 cores) into {target}",
            file=sys.stderr,
            flush=True,
        )
    etcd_dir = work / f"etcd-{ETCD_VERSION}"
    _write(
        etcd_dir / "go.mod",
        "module workflowplane.local/etcd-build\n\ngo 1.26.0\n\n"
        f"require go.etcd.io/etcd/server/v3 v{ETCD_VERSION}\n",
    )
    _write(etcd_dir / "main.go", _ETCD_MAIN)
    kube_dir = work / f"kube-{KUBERNETES_VERSION}"
    _write(kube_dir / "go.mod", _kube_go_mod())
    staging = target.with_name(target.name + ".partial")
    staging.mkdir(parents=True, exist_ok=True)
    _run("resolve etcd modules", [go, "mod", "tidy"], etcd_dir, log)
    _run(
        "build etcd",
        [go, "build", "-trimpath", "-ldflags", "-s -w", "-o", str(staging / "etcd"), "."],
        etcd_dir,
        log,
    )
    _run(
        "resolve Kubernetes modules",
        [go, "get", f"k8s.io/kubernetes/cmd/kube-apiserver@v{KUBERNETES_VERSION}"],
        kube_dir,
        log,
    )
    major, minor, _ = KUBERNETES_VERSION.split(".")
    version_flags = " ".join(
        f"-X k8s.io/component-base/version.{key}={value}"
        for key, value in (
            ("gitVersion", f"v{KUBERNETES_VERSION}"),
            ("gitMajor", major),
            ("gitMinor", minor),
        )
    )
    _run(
        "build kube-apiserver (the long step)",
        [
            go,
            "build",
            "-trimpath",
            "-ldflags",
            f"-s -w {version_flags}",
            "-o",
            str(staging / "kube-apiserver"),
            "k8s.io/kubernetes/cmd/kube-apiserver",
        ],
        kube_dir,
        log,
    )
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    found = _from_dir(target)
    assert found is not None
    return found


def main() -> None:
    """``python -m workflowplane.testenv``: locate or build, then say where the binaries are."""
    try:
        found = ensure()
    except AssetsError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"API server binaries: {found.kube_apiserver.parent}", file=sys.stderr)
