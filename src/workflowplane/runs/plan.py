"""What one run creates in its plane, computed from the run, its definition and the plane.

Pure: the same inputs always give the same objects, with deterministic names, which is what
makes creation idempotent across controller restarts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from workflowplane.api.workflows import (
    ARGO_API_VERSION,
    ARGO_WORKFLOW,
    CLUSTER_WORKFLOW,
    EXECUTOR_ROLE,
    LABEL_MANAGED_BY,
    LABEL_RUN,
    LABEL_RUN_NAMESPACE,
    MANAGED_BY,
    MAX_RUN_NAME,
    RUN_UID_ANNOTATION,
    SERVICE_ACCOUNT,
    plane_namespace,
)
from workflowplane.runs.parameters import resolve_parameters
from workflowplane.runs.render import Renderer, RenderError, RunContext

# What a namespaced Workflow (written by a tenant) may create besides its Argo Workflow: only
# namespaced kinds that grant nothing, so a tenant cannot create cluster-scoped objects (a
# ClusterRoleBinding) or RBAC on a shared plane. A ClusterWorkflow, written by the platform
# team, may create any kind.
TENANT_KINDS = frozenset(
    {
        ("", "ConfigMap"),
        ("", "Secret"),
        ("", "PersistentVolumeClaim"),
        ("external-secrets.io", "ExternalSecret"),
    }
)


# The run records every resource's reference in its status before creating it (so cleanup
# finds it), and the API server refuses a status whose names are not strings or that is over
# etcd's 1.5 MB, on every retry: the run neither started nor failed. So references are
# checked here, a render error the user can fix. Kubernetes' own limits: a name is at most
# 253 characters, a kind 63, an API version a group (253) and a version (63).
MAX_RESOURCES = 100
MAX_NAME_CHARS = 253
MAX_KIND_CHARS = 63
MAX_API_VERSION_CHARS = 253 + 1 + 63


# How deeply a run's spec or its definition's spec may nest (a real Argo Workflow nests about
# fifteen levels). Checked without recursion, first thing in the worker: a value nested deeper
# than Python's recursion limit cannot be pickled, and a send that fails that way used to
# keep the worker out of the pool for good (two such runs and no tenant's run rendered again).
MAX_NESTING = 100


def check_nesting(value: Any, where: str, limit: int = MAX_NESTING) -> None:
    """A :class:`RenderError` when ``value`` (JSON-like) nests deeper than ``limit``."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            raise RenderError(f"{where}: nested deeper than {limit} levels")
        stack.extend((child, depth + 1) for child in children)


@dataclass(frozen=True)
class PlaneTarget:
    """The plane CR a run goes to: it decides which agent connections may carry the run.
    Identity is the CR and its planeID (the secret store only feeds rendering)."""

    kind: str
    namespace: str | None
    name: str
    plane_id: str
    secret_store: str = field(default="", compare=False)

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.name}"


@dataclass(frozen=True)
class RunPlan:
    setup: list[dict[str, Any]]
    resources: list[tuple[str, dict[str, Any]]]
    workflow: dict[str, Any]

    @property
    def objects(self) -> list[dict[str, Any]]:
        """Creation order: namespace and RBAC, then resources, then the Argo Workflow."""
        return [*self.setup, *(obj for _, obj in self.resources), self.workflow]

    def resource_refs(self) -> list[dict[str, Any]]:
        return [{"id": rid, **object_ref(obj)} for rid, obj in self.resources]

    def run_reference(self) -> dict[str, Any]:
        return object_ref(self.workflow)


def workflow_reference(run_meta: Mapping[str, Any]) -> dict[str, Any]:
    """The Argo Workflow a run creates, known from the run alone: :func:`plan_run` names it
    after the run, in the run's plane namespace, whatever the definition says."""
    return {
        "apiVersion": ARGO_API_VERSION,
        "kind": ARGO_WORKFLOW,
        "name": run_meta["name"],
        "namespace": plane_namespace(run_meta["namespace"]),
    }


def object_ref(obj: Mapping[str, Any]) -> dict[str, Any]:
    meta = obj["metadata"]
    ref = {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": meta["name"]}
    if meta.get("namespace"):
        ref["namespace"] = meta["namespace"]
    return ref


def made_by(obj: Mapping[str, Any]) -> str | None:
    """The UID of the run that made this object on the plane (``plan_run`` writes it); None
    when it carries none. What the plane answers is untrusted: any shape reads as none."""
    metadata = obj.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, Mapping) else None
    owner = annotations.get(RUN_UID_ANNOTATION) if isinstance(annotations, Mapping) else None
    return owner if isinstance(owner, str) else None


def run_labels(run_namespace: str, run_name: str) -> dict[str, str]:
    return {
        LABEL_RUN: run_name,
        LABEL_RUN_NAMESPACE: run_namespace,
        LABEL_MANAGED_BY: MANAGED_BY,
    }


def plan_run(run: Mapping[str, Any], definition: Mapping[str, Any], plane: PlaneTarget) -> RunPlan:
    """Render the definition for this run; raises RenderError (permanent) on any problem."""
    check_nesting(run.get("spec"), "the WorkflowRun's spec")
    check_nesting(definition.get("spec"), f"the {definition.get('kind')}'s spec")
    meta, spec = run["metadata"], definition.get("spec") or {}
    namespace, name = meta["namespace"], meta["name"]
    if len(name) > MAX_RUN_NAME:
        raise RenderError(
            f"the run's name is {len(name)} characters, and at most {MAX_RUN_NAME} can run: it is "
            f"the value of the {LABEL_RUN} label on what the run creates (and of Argo's on its "
            "pods); run it again under a shorter name"
        )
    labels = run_labels(namespace, name)
    context = RunContext(
        namespace=namespace,
        run_name=name,
        labels=meta.get("labels") or {},
        parameters=resolve_parameters(
            spec.get("parameters"),
            ((run.get("spec") or {}).get("workflow") or {}).get("parameters"),
        ),
        plane_id=plane.plane_id,
        secret_store=plane.secret_store,
    )
    renderer = Renderer(context, f"{plane.ref} has no spec.secretStoreRef")
    target_ns = plane_namespace(namespace)
    resources = []
    items = spec.get("resources") or []
    if len(items) > MAX_RESOURCES:
        raise RenderError(
            f"resources: {len(items)} resources, over the limit of {MAX_RESOURCES} per workflow"
        )
    for index, item in enumerate(items):
        where = f"resources[{item.get('id', index)}]"
        if "includeWhen" in item and not renderer.condition(
            item["includeWhen"], f"{where}.includeWhen"
        ):
            continue
        rendered = _owned(
            renderer.render(item.get("template"), f"{where}.template"), target_ns, labels, where
        )
        if definition.get("kind") != CLUSTER_WORKFLOW:
            _check_tenant_kind(rendered, where)
        resources.append((str(item["id"]), rendered))
    workflow = _owned(
        renderer.render(spec.get("runTemplate"), "runTemplate"), target_ns, labels, "runTemplate"
    )
    for key, wanted in (("apiVersion", ARGO_API_VERSION), ("kind", ARGO_WORKFLOW)):
        if workflow.setdefault(key, wanted) != wanted:
            raise RenderError(f"runTemplate.{key}: must be {wanted!r}, not {workflow[key]!r}")
    workflow["metadata"]["name"] = name
    workflow["metadata"].pop("generateName", None)
    # Argo's Workflow has no status subresource: a status sent now would be kept, and read
    # back as the run's result (Succeeded, say, with nothing run).
    workflow.pop("status", None)
    if meta.get("uid"):
        annotations = workflow["metadata"].setdefault("annotations", {})
        if not isinstance(annotations, dict):
            raise RenderError("runTemplate.metadata.annotations: must be an object")
        annotations[RUN_UID_ANNOTATION] = meta["uid"]
    if not isinstance(workflow.setdefault("spec", {}), dict):
        raise RenderError("runTemplate.spec: must be an object")
    workflow["spec"].setdefault("serviceAccountName", SERVICE_ACCOUNT)
    return RunPlan(setup=setup_objects(target_ns, labels), resources=resources, workflow=workflow)


def _check_tenant_kind(obj: Mapping[str, Any], where: str) -> None:
    group = obj["apiVersion"].rpartition("/")[0]
    if (group, obj["kind"]) not in TENANT_KINDS:
        allowed = ", ".join(sorted(kind for _, kind in TENANT_KINDS))
        raise RenderError(
            f"{where}: a namespaced Workflow may create only {allowed} in the run's namespace; "
            f"{obj['apiVersion']} {obj['kind']} needs a ClusterWorkflow"
        )


def _owned(obj: Any, namespace: str, labels: Mapping[str, str], where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise RenderError(f"{where}: must render to an object")
    if where != "runTemplate" and not (
        isinstance(obj.get("apiVersion"), str) and isinstance(obj.get("kind"), str)
    ):
        raise RenderError(f"{where}: must render to an object with apiVersion and kind")
    meta = obj.setdefault("metadata", {})
    if not isinstance(meta, dict):
        raise RenderError(f"{where}.metadata: must be an object")
    if not isinstance(meta.get("labels") or {}, dict):
        raise RenderError(f"{where}.metadata.labels: must be an object")
    if where != "runTemplate":
        _check_reference(obj, where)
    meta["namespace"] = namespace
    meta["labels"] = {**(meta.get("labels") or {}), **labels}
    return obj


def _check_reference(obj: Mapping[str, Any], where: str) -> None:
    """What the run's status will record of this resource: strings Kubernetes can take."""
    name = obj["metadata"].get("name")
    if not name:
        raise RenderError(f"{where}: metadata.name is required")
    for part, value, limit in (
        ("metadata.name", name, MAX_NAME_CHARS),
        ("kind", obj["kind"], MAX_KIND_CHARS),
        ("apiVersion", obj["apiVersion"], MAX_API_VERSION_CHARS),
    ):
        if not isinstance(value, str):
            raise RenderError(f"{where}: {part} must be a string, not {type(value).__name__}")
        if len(value) > limit:
            raise RenderError(
                f"{where}: {part} of {len(value)} characters is over Kubernetes' {limit}"
            )
    if name in (".", "..") or any(c in name for c in "/%?#"):
        # Kubernetes' rule for every name (a path segment); the run's cleanup deletes what
        # its status records by a path that holds the name, and '../..' would leave it.
        raise RenderError(f"{where}: metadata.name {name!r} cannot be a Kubernetes name")


def setup_objects(namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
    """The namespace, the service account Argo runs steps as, and the executor's RBAC.

    The Role grants only what Argo's executor (3.4+) needs to report results; Kubernetes lets
    the agent create it only because the agent's own ClusterRole holds the same permissions.
    """
    meta = {"namespace": namespace, "labels": dict(labels)}
    return [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": namespace, "labels": dict(labels)},
        },
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": SERVICE_ACCOUNT, **meta},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": EXECUTOR_ROLE, **meta},
            "rules": [
                {
                    "apiGroups": ["argoproj.io"],
                    "resources": ["workflowtaskresults"],
                    "verbs": ["create", "patch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": EXECUTOR_ROLE, **meta},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": EXECUTOR_ROLE,
            },
            "subjects": [
                {"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": namespace}
            ],
        },
    ]
