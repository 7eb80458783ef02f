"""The plane systems' build recipes and the kwok configuration, without building anything."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from workflowplane.testenv import plane_systems
from workflowplane.testenv.gobuild import BuildError, GoBuild, Step
from workflowplane.testenv.plane_runtime import PlaneRuntime


def test_each_system_is_cached_by_its_version(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("WORKFLOWPLANE_CACHE", str(tmp_path))
    targets = {name: recipe.target for name, recipe in plane_systems.RECIPES.items()}
    assert targets == {
        "kube-scheduler": tmp_path / "plane" / "kube-scheduler-1.36.3",
        "kube-controller-manager": tmp_path / "plane" / "kube-controller-manager-1.36.3",
        "kwok": tmp_path / "plane" / "kwok-0.8.0",
        "argo": tmp_path / "plane" / "argo-workflow-controller-3.7.18",
        "eso": tmp_path / "plane" / "external-secrets-0.16.2",
    }
    assert plane_systems.missing() == [
        "kube-scheduler",
        "kube-controller-manager",
        "kwok",
        "argo",
        "eso",
    ]
    assert plane_systems.locate() is None


def test_argo_is_built_with_all_eight_of_its_crds() -> None:
    crds = [out for out in plane_systems.ARGO.outputs if out.startswith("crds/")]
    assert len(crds) == 8
    assert "crds/argoproj.io_workflowtaskresults.yaml" in crds


def test_a_built_system_is_found_without_building(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("WORKFLOWPLANE_CACHE", str(tmp_path))
    for out in plane_systems.KWOK.outputs:
        (plane_systems.KWOK.target / out).parent.mkdir(parents=True, exist_ok=True)
        (plane_systems.KWOK.target / out).write_text("")
    found = plane_systems.locate(["kwok"])
    assert found is not None and found.kwok == plane_systems.KWOK.target / "kwok"
    assert found.workflow_controller is None
    assert plane_systems.missing() == ["kube-scheduler", "kube-controller-manager", "argo", "eso"]


def test_missing_go_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WORKFLOWPLANE_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BuildError, match="Go is not installed"):
        plane_systems.ensure(["kwok"], log=False)


def test_unknown_systems_are_refused() -> None:
    with pytest.raises(
        ValueError, match="known: kube-scheduler, kube-controller-manager, kwok, argo, eso"
    ):
        plane_systems.missing(["argo", "istio"])


def test_python_steps_and_env_get_the_staging_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A step may be Python (copying manifests) and a command's env may name ``{out}``."""
    monkeypatch.setenv("WORKFLOWPLANE_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "go").write_text("#!/bin/sh\n")
    (tmp_path / "bin" / "go").chmod(0o755)

    def steps(_go: str) -> list[Step]:
        return [
            Step("write a", action=lambda _work, out: (out / "a").write_text("a")),
            Step("write b", ["sh", "-c", 'echo b > "$TARGET/b"'], env={"TARGET": "{out}"}),
        ]

    recipe = GoBuild(name="demo", version="1.2.3", outputs=("a", "b"), steps=steps)
    built = recipe.ensure(log=False)
    assert (built / "a").read_text() == "a"
    assert (built / "b").read_text() == "b\n"
    assert (recipe.work.parent / "demo-1.2.3.lock").exists()


def test_kwok_configuration_spells_out_every_stage(tmp_path: Path) -> None:
    stages = tmp_path / "stages"
    stages.mkdir()
    (stages / "node-initialize.yaml").write_text(
        "apiVersion: kwok.x-k8s.io/v1alpha1\nkind: Stage\nmetadata: {name: node-initialize}\n"
    )
    (stages / "storage-class.yaml").write_text(
        "apiVersion: storage.k8s.io/v1\nkind: StorageClass\n"
    )
    binaries = plane_systems.PlaneBinaries(kwok=tmp_path / "kwok", kwok_stages=stages)
    runtime = PlaneRuntime(tmp_path, "wp-test", binaries, systems=["kwok"])
    runtime.workdir.mkdir()

    text = runtime._kwok_config().read_text()

    assert "&id0" not in text and "*id0" not in text  # no YAML anchors for kwok to resolve
    documents = list(yaml.safe_load_all(text))
    names = [(d["kind"], d["metadata"]["name"]) for d in documents]
    assert names == [
        ("Stage", "pod-start"),
        ("Stage", "pod-fail"),
        ("Stage", "pod-succeed"),
        ("Stage", "pod-delete"),
        ("Stage", "node-initialize"),
        ("ClusterLogs", "simulated-steps"),
    ]
    fail, succeed = documents[1]["spec"], documents[2]["spec"]
    assert (
        fail["selector"]["matchExpressions"][-1]["key"]
        == (succeed["selector"]["matchExpressions"][-1]["key"])
    )
    assert fail["delay"] == succeed["delay"]
    log = Path(documents[-1]["spec"]["logs"][0]["logsFile"])
    assert "simulated node (kwok)" in log.read_text()


def test_the_controller_manager_runs_only_the_garbage_collector_and_volume_protection(
    tmp_path: Path,
) -> None:
    """A deleted Argo Workflow's pods and claims go with it; no other controller runs."""
    binaries = plane_systems.PlaneBinaries(kube_controller_manager=tmp_path / "kcm")
    runtime = PlaneRuntime(tmp_path, "wp-test", binaries, systems=["kube-controller-manager"])

    argv, _env = runtime._argv()["kube-controller-manager"]

    assert argv[0] == str(tmp_path / "kcm")
    controllers = next(arg for arg in argv if arg.startswith("--controllers="))
    assert controllers.split("=", 1)[1].split(",") == [
        "garbage-collector-controller",
        "persistentvolumeclaim-protection-controller",
        "persistentvolume-protection-controller",
    ]
    assert f"--secure-port={runtime.controller_manager_port}" in argv
    assert "--leader-elect=false" in argv
