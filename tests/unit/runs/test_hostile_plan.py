"""What a rendered definition may make the run record in its status before anything is
created: ``status.resources`` lists each resource's reference, and the CRD (names, kinds and
API versions are strings) and etcd (1.5 MB) refuse a status that breaks them, on every
retry, so the run would neither start nor fail. A render that would record such references
fails the run instead, saying why."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.unit.runs.test_plan import PLANE, definition, run, run_template
from workflowplane.runs.plan import MAX_RESOURCES, plan_run
from workflowplane.runs.render import RenderError


def config_map(rid: str, name: Any, api_version: str = "v1") -> dict[str, Any]:
    return {
        "id": rid,
        "template": {"apiVersion": api_version, "kind": "ConfigMap", "metadata": {"name": name}},
    }


def test_a_resource_name_that_renders_to_a_number_is_a_render_error() -> None:
    """Before: the reference went into status.resources as a number, refused by the CRD."""
    resources = [config_map("cfg", "${parameters.replicas}")]
    with pytest.raises(RenderError, match=r"resources\[cfg\].*metadata.name.*string"):
        plan_run(run({"replicas": 3}), definition(resources), PLANE)


def test_resource_names_longer_than_kubernetes_allows_are_a_render_error() -> None:
    """Before: two names of 800,000 characters made a 1.6 MB intent, refused by etcd."""
    resources = [config_map(f"c{i}", "${parameters.image}") for i in range(2)]
    with pytest.raises(RenderError, match="253"):
        plan_run(run({"image": "n" * 800_000}), definition(resources), PLANE)


def test_an_api_version_longer_than_kubernetes_allows_is_a_render_error() -> None:
    resources = [config_map("cfg", "cfg", api_version="v" * 100_000)]
    with pytest.raises(RenderError, match="apiVersion"):
        plan_run(run({"replicas": 1}), definition(resources), PLANE)


def test_more_resources_than_the_limit_are_a_render_error() -> None:
    """Before: 5,000 resources recorded 0.5 MB of references, and at 253-character names
    far more than etcd takes."""
    resources = [config_map(f"c{i}", f"c{i}") for i in range(MAX_RESOURCES + 1)]
    with pytest.raises(RenderError, match=f"{MAX_RESOURCES + 1} resources"):
        plan_run(run({"replicas": 1}), definition(resources), PLANE)


def test_the_limit_itself_renders_and_records_a_bounded_intent() -> None:
    resources = [config_map(f"c{i}", f"c{i}-" + "n" * 240) for i in range(MAX_RESOURCES)]
    plan = plan_run(run({"replicas": 1}), definition(resources), PLANE)
    assert len(json.dumps(plan.resource_refs())) < 64 * 1024


def test_a_status_in_the_run_template_is_not_sent() -> None:
    """Argo's Workflow has no status subresource: a status sent at creation is kept, and the
    run would report it (``Succeeded`` without running anything)."""
    template = {**run_template(), "status": {"phase": "Succeeded", "nodes": ["x"]}}
    plan = plan_run(run({"replicas": 1}), definition([], template), PLANE)
    assert "status" not in plan.workflow


@pytest.mark.parametrize("name", ["..", "../../other-ns/theirs", "a%2F..", "x?watch=1", "."])
def test_a_resource_name_that_is_no_kubernetes_name_is_a_render_error(name: str) -> None:
    """Before: recorded in status.resources before creation (which the API server refused),
    then deleted at cleanup by a path holding the name, which the HTTP client resolved."""
    with pytest.raises(RenderError, match="cannot be a Kubernetes name"):
        plan_run(run({}), definition([config_map("cfg", name)]), PLANE)
