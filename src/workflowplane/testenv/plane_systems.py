"""Build the systems a local workflow plane runs beside its API server, from their Go modules.

A real plane runs Argo Workflows' controller on a real cluster; a local plane has no kubelet,
so it runs Argo's ``workflow-controller`` with ``kube-scheduler`` (binds step pods to a node),
``kube-controller-manager``'s garbage collector (what an object owns goes with it, as on any
cluster), ``kwok`` (the Kubernetes SIG's kubelet simulator: the node, the pods' lifecycle, their
logs), and External Secrets' controller (its fake provider is the local secret store). Each is
pinned and cached by version like the API server (``gobuild``); Argo and External Secrets also
leave their own CRDs beside their binary, so the plane gets exactly the CRDs of the controller
it runs.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from workflowplane.testenv.assets import (
    KUBERNETES_VERSION,
    kube_version_ldflags,
    prepare_kube_module,
)
from workflowplane.testenv.gobuild import BuildError, GoBuild, Step, go_binary

ARGO_VERSION = "3.7.18"
KWOK_VERSION = "0.8.0"
ARGO_MODULE = "github.com/argoproj/argo-workflows/v3"
KWOK_MODULE = "sigs.k8s.io/kwok"
ESO_VERSION = "0.16.2"
ESO_MODULE = "github.com/external-secrets/external-secrets"
KWOK_STAGES = (
    "node/fast/node-initialize.yaml",
    "volume/fast/storage-class.yaml",
    "volume/fast/pvc-provision.yaml",
    "volume/fast/pv-bind.yaml",
    "volume/fast/pvc-delete.yaml",
    "volume/fast/pv-delete.yaml",
)
ARGO_CRDS = (
    "argoproj.io_clusterworkflowtemplates.yaml",
    "argoproj.io_cronworkflows.yaml",
    "argoproj.io_workflowartifactgctasks.yaml",
    "argoproj.io_workfloweventbindings.yaml",
    "argoproj.io_workflows.yaml",
    "argoproj.io_workflowtaskresults.yaml",
    "argoproj.io_workflowtasksets.yaml",
    "argoproj.io_workflowtemplates.yaml",
)
GROUP = "plane"
STRIP = "-s -w"


def _module_dir(module: str, version: str) -> Path:
    """Download one module into the Go module cache and say where its (read-only) source is."""
    result = subprocess.run(
        [go_binary(module), "mod", "download", "-json", f"{module}@v{version}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise BuildError(f"go mod download {module}@v{version} failed: {result.stderr.strip()}")
    return Path(json.loads(result.stdout)["Dir"])


def _writable_copy(source: Path, target: Path) -> None:
    """Copy a module's source out of the read-only module cache (once; reused on a retry)."""
    if (target / "go.mod").is_file():
        return
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)
    for directory, _dirs, files in os.walk(target):
        os.chmod(directory, 0o755)
        for name in files:
            path = os.path.join(directory, name)
            os.chmod(path, os.stat(path).st_mode | stat.S_IWUSR)


def _copy_argo_source(work: Path, _staging: Path) -> None:
    # Argo's go.mod has a `replace`, which `go install module@version` refuses; built as the
    # main module (from a writable copy of its source) the replace applies as upstream intends.
    _writable_copy(_module_dir(ARGO_MODULE, ARGO_VERSION), work / "argo-workflows")


def _take_argo_crds(work: Path, staging: Path) -> None:
    # The "minimal" CRDs are what Argo's own install manifests apply: Argo's controller, not
    # the API server, validates a Workflow, so an invalid one fails as it would on a real plane.
    source = work / "argo-workflows" / "manifests" / "base" / "crds" / "minimal"
    (staging / "crds").mkdir(exist_ok=True)
    for name in ARGO_CRDS:
        shutil.copyfile(source / name, staging / "crds" / name)


def _argo_steps(go: str) -> list[Step]:
    version_flag = f"-X github.com/argoproj/argo-workflows/v3.version=v{ARGO_VERSION}"
    return [
        Step(f"copy the Argo Workflows v{ARGO_VERSION} module source", action=_copy_argo_source),
        Step(
            "build workflow-controller (the long step)",
            [
                go,
                "build",
                "-trimpath",
                "-ldflags",
                f"{STRIP} {version_flag}",
                "-o",
                "{out}/workflow-controller",
                "./cmd/workflow-controller",
            ],
            "argo-workflows",
        ),
        Step("take Argo's CRDs", action=_take_argo_crds),
    ]


def _kube_command(command: str) -> GoBuild:
    """One command of k8s.io/kubernetes (``cmd/<command>``), built at its release's version
    into a binary of its name."""
    return GoBuild(
        name=command,
        version=KUBERNETES_VERSION,
        outputs=(command,),
        steps=_kube_command_steps(command),
        prepare=prepare_kube_module,
        group=GROUP,
    )


def _kube_command_steps(command: str) -> Callable[[str], list[Step]]:
    def steps(go: str) -> list[Step]:
        return [
            Step(
                "resolve Kubernetes modules",
                [go, "get", f"k8s.io/kubernetes/cmd/{command}@v{KUBERNETES_VERSION}"],
            ),
            Step(
                f"build {command}",
                [
                    go,
                    "build",
                    "-trimpath",
                    "-ldflags",
                    f"{STRIP} {kube_version_ldflags()}",
                    "-o",
                    f"{{out}}/{command}",
                    f"k8s.io/kubernetes/cmd/{command}",
                ],
            ),
        ]

    return steps


def _copy_eso_source(work: Path, _staging: Path) -> None:
    # v0.16.x: one module (v1.x splits into local sub-modules the proxy's zip lacks), with a
    # `replace` in its go.mod, so it is built as the main module like Argo. It serves the
    # ExternalSecret API as v1 (what runs create) and v1beta1.
    _writable_copy(_module_dir(ESO_MODULE, ESO_VERSION), work / "external-secrets")


def _take_eso_crds(work: Path, staging: Path) -> None:
    source = work / "external-secrets" / "config" / "crds" / "bases"
    (staging / "crds").mkdir(exist_ok=True)
    for path in source.glob("*.yaml"):
        if path.name != "kustomization.yaml":
            shutil.copyfile(path, staging / "crds" / path.name)


def _eso_steps(go: str) -> list[Step]:
    return [
        Step(f"copy the External Secrets v{ESO_VERSION} module source", action=_copy_eso_source),
        Step(
            "build external-secrets (every provider is compiled in: a long step)",
            [go, "build", "-trimpath", "-ldflags", STRIP, "-o", "{out}/external-secrets", "."],
            "external-secrets",
        ),
        Step("take External Secrets' CRDs", action=_take_eso_crds),
    ]


def _take_kwok_stages(_work: Path, staging: Path) -> None:
    # kwok's own stages for what our pod stages do not cover: a node that becomes Ready, and
    # volumes provisioned and bound for the PersistentVolumeClaims Argo creates.
    source = _module_dir(KWOK_MODULE, KWOK_VERSION) / "kustomize" / "stage"
    (staging / "stages").mkdir(exist_ok=True)
    for name in KWOK_STAGES:
        shutil.copyfile(source / name, staging / "stages" / Path(name).name)


def _kwok_steps(go: str) -> list[Step]:
    # kwok's go.mod has no `replace`: `go install module@version` builds it as released.
    return [
        Step("take kwok's node and volume stages", action=_take_kwok_stages),
        Step(
            "build kwok",
            [
                go,
                "install",
                "-trimpath",
                "-ldflags",
                f"{STRIP} -X sigs.k8s.io/kwok/pkg/consts.Version=v{KWOK_VERSION}",
                f"{KWOK_MODULE}/cmd/kwok@v{KWOK_VERSION}",
            ],
            env={"GOBIN": "{out}"},
        ),
    ]


ARGO = GoBuild(
    name="argo-workflow-controller",
    version=ARGO_VERSION,
    outputs=("workflow-controller", *(f"crds/{name}" for name in ARGO_CRDS)),
    steps=_argo_steps,
    group=GROUP,
)
KUBE_SCHEDULER = _kube_command("kube-scheduler")
KUBE_CONTROLLER_MANAGER = _kube_command("kube-controller-manager")
KWOK = GoBuild(
    name="kwok",
    version=KWOK_VERSION,
    outputs=("kwok", *(f"stages/{Path(name).name}" for name in KWOK_STAGES)),
    steps=_kwok_steps,
    group=GROUP,
)
ESO = GoBuild(
    name="external-secrets",
    version=ESO_VERSION,
    outputs=("external-secrets", "crds/external-secrets.io_externalsecrets.yaml"),
    steps=_eso_steps,
    group=GROUP,
)
RECIPES: dict[str, GoBuild] = {
    "kube-scheduler": KUBE_SCHEDULER,
    "kube-controller-manager": KUBE_CONTROLLER_MANAGER,
    "kwok": KWOK,
    "argo": ARGO,
    "eso": ESO,
}
ALL = tuple(RECIPES)


@dataclass(frozen=True)
class PlaneBinaries:
    """Where each built system is, with the manifests taken from its module source."""

    kube_scheduler: Path | None = None
    kube_controller_manager: Path | None = None
    kwok: Path | None = None
    kwok_stages: Path | None = None
    workflow_controller: Path | None = None
    argo_crds: Path | None = None
    external_secrets: Path | None = None
    eso_crds: Path | None = None


def _binaries(found: dict[str, Path]) -> PlaneBinaries:
    argo, eso = found.get("argo"), found.get("eso")
    return PlaneBinaries(
        kube_scheduler=_binary(found, "kube-scheduler"),
        kube_controller_manager=_binary(found, "kube-controller-manager"),
        kwok=found["kwok"] / "kwok" if "kwok" in found else None,
        kwok_stages=found["kwok"] / "stages" if "kwok" in found else None,
        workflow_controller=argo / "workflow-controller" if argo else None,
        argo_crds=argo / "crds" if argo else None,
        external_secrets=eso / "external-secrets" if eso else None,
        eso_crds=eso / "crds" if eso else None,
    )


def _binary(found: dict[str, Path], name: str) -> Path | None:
    """A system whose one output is its binary, named as the system."""
    return found[name] / name if name in found else None


def _checked(names: Iterable[str]) -> list[str]:
    wanted = list(names)
    unknown = [name for name in wanted if name not in RECIPES]
    if unknown:
        raise ValueError(f"unknown plane system(s) {unknown}; known: {', '.join(ALL)}")
    return wanted


def locate(names: Sequence[str] = ALL) -> PlaneBinaries | None:
    """The cached binaries when every one asked for is built, else None (nothing is built)."""
    found = {name: RECIPES[name].located() for name in _checked(names)}
    if any(where is None for where in found.values()):
        return None
    return _binaries({name: where for name, where in found.items() if where is not None})


def missing(names: Sequence[str] = ALL) -> list[str]:
    """Which of ``names`` still have to be built."""
    return [name for name in _checked(names) if RECIPES[name].located() is None]


def ensure(names: Sequence[str] = ALL, *, log: bool = True) -> PlaneBinaries:
    """Build (once, with progress) whichever of ``names`` is not cached yet."""
    return _binaries({name: RECIPES[name].ensure(log=log) for name in _checked(names)})
