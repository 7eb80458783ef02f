"""The sample ClusterWorkflow users copy must render, with and without Git credentials."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from workflowplane.runs.plan import PlaneTarget, plan_run

SAMPLE = Path(__file__).resolve().parents[3] / "samples" / "workflows" / "docker-build.yaml"
PLANE = PlaneTarget("ClusterWorkflowPlane", None, "default", "p1", "vault")


def _run(parameters: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "team", "name": "b1"},
        "spec": {"workflow": {"name": "docker-build", "parameters": parameters}},
    }


def _arguments(workflow: dict[str, Any]) -> dict[str, str]:
    return {p["name"]: p["value"] for p in workflow["spec"]["arguments"]["parameters"]}


def test_the_sample_renders_a_public_repository_build() -> None:
    definition = yaml.safe_load(SAMPLE.read_text())
    params = {"repository": {"url": "https://git.example/app"}, "image": {"name": "reg/app"}}
    plan = plan_run(_run(params), definition, PLANE)
    assert plan.resources == []
    assert _arguments(plan.workflow) == {
        "git-url": "https://git.example/app",
        "git-revision": "main",
        "app-path": ".",
        "image": "reg/app:latest",
        "dockerfile": "Dockerfile",
    }
    assert plan.workflow["metadata"]["namespace"] == "workflows-team"


def _templates(workflow: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in workflow["spec"]["templates"] if "container" in t}


def test_every_step_names_its_command_and_keeps_parameters_out_of_shell_scripts() -> None:
    """An explicit command: Argo need not ask the registry for the image's entrypoint (which
    fails offline). Parameters in env and plain args only: no value becomes shell code."""
    definition = yaml.safe_load(SAMPLE.read_text())
    params = {"repository": {"url": "https://git.example/app"}, "image": {"name": "reg/app"}}
    plan = plan_run(_run(params), definition, PLANE)
    for name, template in _templates(plan.workflow).items():
        container = template["container"]
        assert container.get("command"), name
        if container["command"][:2] == ["sh", "-c"]:
            assert "{{" not in " ".join(container["args"]), name
    checkout = _templates(plan.workflow)["checkout"]["container"]
    assert {e["name"]: e["value"] for e in checkout["env"]} == {
        "GIT_URL": "{{workflow.parameters.git-url}}",
        "GIT_REVISION": "{{workflow.parameters.git-revision}}",
    }


def test_the_sample_fetches_git_credentials_from_the_secret_store() -> None:
    definition = yaml.safe_load(SAMPLE.read_text())
    params = {
        "repository": {"url": "https://git.example/app", "secretRef": "git/app"},
        "image": {"name": "reg/app", "tag": "v1"},
    }
    plan = plan_run(_run(params), definition, PLANE)
    [(resource_id, secret)] = plan.resources
    assert resource_id == "git-credentials"
    assert secret["spec"]["secretStoreRef"]["name"] == "vault"
    assert secret["spec"]["dataFrom"] == [{"extract": {"key": "git/app"}}]
    assert _arguments(plan.workflow)["image"] == "reg/app:v1"
    # The step that clones mounts the Secret the ExternalSecret makes.
    [volume] = [v for v in plan.workflow["spec"]["volumes"] if v["name"] == "git-credentials"]
    assert volume["secret"] == {"secretName": secret["spec"]["target"]["name"], "optional": True}
    checkout = _templates(plan.workflow)["checkout"]["container"]
    assert {"name": "git-credentials", "mountPath": "/git-credentials", "readOnly": True} in (
        checkout["volumeMounts"]
    )
