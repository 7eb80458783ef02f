"""What a run creates in its plane: order, ownership labels, namespace, names and refs."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from workflowplane.api.workflows import (
    LABEL_MANAGED_BY,
    LABEL_RUN,
    LABEL_RUN_NAMESPACE,
    MANAGED_BY,
)
from workflowplane.runs.plan import PlaneTarget, plan_run, workflow_reference
from workflowplane.runs.render import RenderError, SecretStoreMissing

PLANE = PlaneTarget(
    kind="ClusterWorkflowPlane", namespace=None, name="default", plane_id="p1", secret_store="store"
)
OWNER_LABELS = {
    LABEL_RUN: "r1",
    LABEL_RUN_NAMESPACE: "team",
    LABEL_MANAGED_BY: MANAGED_BY,
}
SCHEMA = {
    "type": "object",
    "properties": {
        "image": {"type": "string", "default": "alpine"},
        "withSecret": {"type": "boolean", "default": True},
        "replicas": {"type": "integer"},
    },
}


def run(parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "team", "name": "r1", "labels": {}},
        "spec": {"workflow": {"name": "wf", "parameters": parameters or {}}},
    }


def external_secret() -> dict[str, Any]:
    return {
        "id": "git-secret",
        "includeWhen": "${parameters.withSecret}",
        "template": {
            "apiVersion": "external-secrets.io/v1",
            "kind": "ExternalSecret",
            "metadata": {"name": "${metadata.workflowRunName}-git", "namespace": "elsewhere"},
            "spec": {"secretStoreRef": {"name": "${workflowplane.secretStore}"}},
        },
    }


def config_map() -> dict[str, Any]:
    return {
        "id": "config",
        "template": {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "cfg", "labels": {"team": "x", LABEL_RUN: "spoofed"}},
            "data": {"replicas": "${parameters.replicas}"},
        },
    }


def run_template(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"generateName": "build-", "namespace": "argo"},
        "spec": {"entrypoint": "main", "arguments": {"image": "${parameters.image}"}, **spec},
    }


def definition(
    resources: list[dict[str, Any]] | None = None, template: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "spec": {
            "parameters": SCHEMA,
            "resources": [external_secret(), config_map()] if resources is None else resources,
            "runTemplate": run_template() if template is None else template,
        }
    }


def test_objects_are_created_setup_first_then_resources_then_the_argo_workflow() -> None:
    plan = plan_run(run({"replicas": "2"}), definition(), PLANE)
    assert [(o["kind"], o["metadata"]["name"]) for o in plan.objects] == [
        ("Namespace", "workflows-team"),
        ("ServiceAccount", "workflow-sa"),
        ("Role", "workflow-executor"),
        ("RoleBinding", "workflow-executor"),
        ("ExternalSecret", "r1-git"),
        ("ConfigMap", "cfg"),
        ("Workflow", "r1"),
    ]


def test_every_object_carries_the_three_ownership_labels() -> None:
    plan = plan_run(run({"replicas": "2"}), definition(), PLANE)
    for obj in plan.objects:
        labels = obj["metadata"]["labels"]
        assert {k: labels.get(k) for k in OWNER_LABELS} == OWNER_LABELS, obj["kind"]


def test_template_labels_are_kept_but_cannot_override_ownership_labels() -> None:
    plan = plan_run(run({"replicas": "2"}), definition(), PLANE)
    config = dict(plan.resources)["config"]
    assert config["metadata"]["labels"] == {"team": "x", **OWNER_LABELS}


def test_every_namespaced_object_is_forced_into_the_plane_namespace() -> None:
    plan = plan_run(run({"replicas": "2"}), definition(), PLANE)
    for obj in plan.objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "workflows-team", obj["kind"]
    assert "namespace" not in plan.objects[0]["metadata"]


def test_role_binding_binds_the_service_account_in_the_plane_namespace() -> None:
    plan = plan_run(run({"replicas": "2"}), definition(), PLANE)
    binding = plan.setup[3]
    assert binding["roleRef"]["name"] == "workflow-executor"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "workflow-sa", "namespace": "workflows-team"}
    ]


def test_argo_workflow_is_named_after_the_run_and_generate_name_is_dropped() -> None:
    workflow = plan_run(run({"replicas": "2"}), definition(), PLANE).workflow
    assert workflow["metadata"]["name"] == "r1"
    assert "generateName" not in workflow["metadata"]


def test_the_argo_workflows_reference_is_known_from_the_run_alone() -> None:
    """Cleanup of a run whose start was never recorded relies on it."""
    made = run({"replicas": "2"})
    template = run_template()
    template["metadata"] = {"name": "elsewhere", "namespace": "kube-system"}
    plan = plan_run(made, definition(template=template), PLANE)
    assert plan.run_reference() == workflow_reference(made["metadata"])


def test_argo_workflow_template_is_rendered_with_parameter_defaults() -> None:
    workflow = plan_run(run({"replicas": "2"}), definition(), PLANE).workflow
    assert workflow["spec"]["arguments"] == {"image": "alpine"}
    assert workflow["spec"]["entrypoint"] == "main"


def test_run_parameters_are_coerced_before_rendering() -> None:
    plan = plan_run(run({"replicas": "2", "image": "busybox"}), definition(), PLANE)
    assert dict(plan.resources)["config"]["data"] == {"replicas": 2}
    assert plan.workflow["spec"]["arguments"] == {"image": "busybox"}


def test_service_account_defaults_to_workflow_sa() -> None:
    workflow = plan_run(run({"replicas": "2"}), definition(), PLANE).workflow
    assert workflow["spec"]["serviceAccountName"] == "workflow-sa"


def test_service_account_set_by_the_template_is_kept() -> None:
    template = run_template(serviceAccountName="builder")
    workflow = plan_run(run(), definition([], template), PLANE).workflow
    assert workflow["spec"]["serviceAccountName"] == "builder"


def test_run_template_without_kind_or_spec_defaults_to_an_argo_workflow() -> None:
    workflow = plan_run(run(), definition([], {"metadata": {}}), PLANE).workflow
    assert workflow["apiVersion"] == "argoproj.io/v1alpha1"
    assert workflow["kind"] == "Workflow"
    assert workflow["spec"] == {"serviceAccountName": "workflow-sa"}


def test_include_when_false_skips_the_resource() -> None:
    plan = plan_run(run({"withSecret": "false", "replicas": "1"}), definition(), PLANE)
    assert [rid for rid, _ in plan.resources] == ["config"]
    assert "ExternalSecret" not in [o["kind"] for o in plan.objects]


def test_skipped_resource_does_not_need_the_secret_store() -> None:
    plane = PlaneTarget("ClusterWorkflowPlane", None, "default", "p1", secret_store="")
    plan = plan_run(run({"withSecret": "false", "replicas": "1"}), definition(), plane)
    assert [rid for rid, _ in plan.resources] == ["config"]


def test_included_resource_using_the_secret_store_on_a_plane_without_one_fails() -> None:
    plane = PlaneTarget("WorkflowPlane", "team", "mine", "p1", secret_store="")
    with pytest.raises(SecretStoreMissing) as caught:
        plan_run(run({"replicas": "1"}), definition(), plane)
    assert "resources[git-secret].template.spec.secretStoreRef.name" in str(caught.value)
    assert "WorkflowPlane/mine has no spec.secretStoreRef" in str(caught.value)


def test_resource_refs_list_id_and_object_reference_in_creation_order() -> None:
    plan = plan_run(run({"replicas": "2"}), definition(), PLANE)
    assert plan.resource_refs() == [
        {
            "id": "git-secret",
            "apiVersion": "external-secrets.io/v1",
            "kind": "ExternalSecret",
            "name": "r1-git",
            "namespace": "workflows-team",
        },
        {
            "id": "config",
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "name": "cfg",
            "namespace": "workflows-team",
        },
    ]


def test_run_reference_points_at_the_argo_workflow() -> None:
    plan = plan_run(run({"replicas": "2"}), definition(), PLANE)
    assert plan.run_reference() == {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "name": "r1",
        "namespace": "workflows-team",
    }


def test_resource_template_without_a_name_is_a_render_error() -> None:
    nameless = {"id": "cm", "template": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}}}
    with pytest.raises(RenderError, match=r"^resources\[cm\]: metadata\.name is required"):
        plan_run(run(), definition([nameless]), PLANE)


def test_resource_template_without_kind_is_a_render_error() -> None:
    kindless = {"id": "cm", "template": {"apiVersion": "v1", "metadata": {"name": "x"}}}
    with pytest.raises(RenderError, match=r"^resources\[cm\]: must render to an object"):
        plan_run(run(), definition([kindless]), PLANE)


def test_resource_template_without_api_version_is_a_render_error() -> None:
    versionless = {"id": "cm", "template": {"kind": "ConfigMap", "metadata": {"name": "x"}}}
    with pytest.raises(RenderError, match=r"^resources\[cm\]"):
        plan_run(run(), definition([versionless]), PLANE).resource_refs()


def test_run_template_rendering_to_a_non_object_is_a_render_error() -> None:
    with pytest.raises(RenderError, match=r"^runTemplate: must render to an object"):
        plan_run(run(), {"spec": {"runTemplate": "${metadata.namespace}"}}, PLANE)


def test_render_errors_in_resources_name_the_resource_id() -> None:
    broken = {"id": "cm", "template": {"kind": "ConfigMap", "data": "${parameters.nope}"}}
    with pytest.raises(RenderError) as caught:
        plan_run(run(), definition([broken]), PLANE)
    assert "resources[cm].template.data" in str(caught.value)
    assert "${parameters.nope}" in str(caught.value)


def test_non_bool_include_when_is_a_render_error_naming_the_resource() -> None:
    item = {**config_map(), "includeWhen": "${parameters.image}"}
    with pytest.raises(RenderError, match=r"^resources\[config\]\.includeWhen: .*true or false"):
        plan_run(run({"replicas": "1"}), definition([item]), PLANE)


def test_bad_run_parameters_fail_the_plan() -> None:
    with pytest.raises(RenderError, match=r"parameters\.replicas: expected integer"):
        plan_run(run({"replicas": "many"}), definition(), PLANE)


def test_run_labels_are_visible_to_expressions() -> None:
    labelled = run()
    labelled["metadata"]["labels"] = {"tier": "gold"}
    template = run_template(priority="${metadata.labels.tier}")
    assert plan_run(labelled, definition([], template), PLANE).workflow["spec"]["priority"] == (
        "gold"
    )


def test_planning_is_deterministic_and_leaves_its_inputs_untouched() -> None:
    the_run, the_definition = run({"replicas": "2"}), definition()
    run_before, definition_before = copy.deepcopy(the_run), copy.deepcopy(the_definition)
    first = plan_run(the_run, the_definition, PLANE)
    second = plan_run(the_run, the_definition, PLANE)
    assert first.objects == second.objects
    assert the_run == run_before
    assert the_definition == definition_before


def test_plane_target_ref_is_kind_slash_name() -> None:
    assert PLANE.ref == "ClusterWorkflowPlane/default"


def test_the_run_template_must_be_an_argo_workflow() -> None:
    cron = definition(
        resources=[], template={"apiVersion": "argoproj.io/v1alpha1", "kind": "CronWorkflow"}
    )
    with pytest.raises(
        RenderError, match=r"runTemplate\.kind: must be 'Workflow', not 'CronWorkflow'"
    ):
        plan_run(run(), cron, PLANE)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (
            {"kind": "Workflow", "spec": None, "metadata": {}},
            r"runTemplate\.spec: must be an object",
        ),
        ({"kind": "Workflow", "spec": "x"}, r"runTemplate\.spec: must be an object"),
        (
            {"kind": "Workflow", "metadata": {"labels": ["a"]}},
            r"runTemplate\.metadata\.labels: must be an object",
        ),
    ],
)
def test_malformed_run_templates_are_render_errors(template: dict[str, Any], message: str) -> None:
    with pytest.raises(RenderError, match=message):
        plan_run(run(), definition(resources=[], template=template), PLANE)


def test_a_plane_target_is_the_cr_and_its_plane_id_not_its_secret_store() -> None:
    a = PlaneTarget("ClusterWorkflowPlane", None, "default", "p1", "vault")
    assert a == PlaneTarget("ClusterWorkflowPlane", None, "default", "p1", "other")
    assert hash(a) == hash(PlaneTarget("ClusterWorkflowPlane", None, "default", "p1", ""))
    assert a != PlaneTarget("ClusterWorkflowPlane", None, "default", "p2", "vault")


CLUSTER_ADMIN_BINDING = {
    "id": "escalate",
    "template": {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "pwn"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "x"},
    },
}


@pytest.mark.parametrize("kind", ["Workflow", None])
def test_a_namespaced_workflow_may_not_create_cluster_scoped_or_rbac_objects(
    kind: str | None,
) -> None:
    tenant = definition([CLUSTER_ADMIN_BINDING]) | ({"kind": kind} if kind else {})
    with pytest.raises(
        RenderError,
        match=r"^resources\[escalate\]: a namespaced Workflow may create only ConfigMap, "
        r"ExternalSecret, PersistentVolumeClaim, Secret .*"
        r"ClusterRoleBinding needs a ClusterWorkflow",
    ):
        plan_run(run(), tenant, PLANE)


def test_a_cluster_workflow_may_create_any_kind() -> None:
    platform = definition([CLUSTER_ADMIN_BINDING]) | {"kind": "ClusterWorkflow"}
    plan = plan_run(run(), platform, PLANE)
    assert [rid for rid, _ in plan.resources] == ["escalate"]


def test_a_run_whose_name_cannot_be_a_label_value_fails_saying_why() -> None:
    """Accepted by the API server (an object name may be 253 characters), it failed on the
    plane with the Namespace's label error; now it fails before anything is sent."""
    long = run({"replicas": "2"})
    long["metadata"]["name"] = "r" * 64
    with pytest.raises(RenderError, match="64 characters, and at most 63 can run"):
        plan_run(long, definition(), PLANE)
    fits = run({"replicas": "2"})
    fits["metadata"]["name"] = "r" * 63
    assert plan_run(fits, definition(), PLANE).workflow["metadata"]["name"] == "r" * 63
