"""Names of the workflow kinds (Workflow, ClusterWorkflow, WorkflowRun) and what runs create.

Every component that reads or writes runs (the runs controller, the CLI, tests) spells them
from here.
"""

from __future__ import annotations

from typing import Final

from lightkube.generic_resource import create_global_resource, create_namespaced_resource

from workflowplane.api.constants import GROUP, VERSION

WORKFLOW: Final = "Workflow"
CLUSTER_WORKFLOW: Final = "ClusterWorkflow"
WORKFLOW_RUN: Final = "WorkflowRun"

WorkflowResource = create_namespaced_resource(GROUP, VERSION, WORKFLOW, "workflows", verbs=None)
ClusterWorkflowResource = create_global_resource(
    GROUP, VERSION, CLUSTER_WORKFLOW, "clusterworkflows", verbs=None
)
WorkflowRunResource = create_namespaced_resource(
    GROUP, VERSION, WORKFLOW_RUN, "workflowruns", verbs=None
)

RUN_FINALIZER: Final = "openchoreo.dev/workflowrun-cleanup"
# Which plane a run was sent to, recorded before anything is created there, so that tracking
# and cleanup keep using it even if plane resolution would now give another answer.
PLANE_ANNOTATION: Final = "openchoreo.dev/workflowplane"

# On the Argo Workflow: which run (by UID) created it, so a same-named leftover of an earlier
# run is never mistaken for this run's.
RUN_UID_ANNOTATION: Final = "openchoreo.dev/workflowrun-uid"

LABEL_RUN: Final = "openchoreo.dev/workflowrun"
# A run's name is a label's value (ours on what it creates, Argo's on its pods): 63 at most.
MAX_RUN_NAME: Final = 63
LABEL_RUN_NAMESPACE: Final = "openchoreo.dev/workflowrun-namespace"
LABEL_MANAGED_BY: Final = "openchoreo.dev/managed-by"
MANAGED_BY: Final = "workflowrun-controller"

PLANE_NAMESPACE_PREFIX: Final = "workflows-"
SERVICE_ACCOUNT: Final = "workflow-sa"
EXECUTOR_ROLE: Final = "workflow-executor"

ARGO_API_VERSION: Final = "argoproj.io/v1alpha1"
ARGO_WORKFLOW: Final = "Workflow"
ARGO_WORKFLOW_LABEL: Final = "workflows.argoproj.io/workflow"


def plane_namespace(run_namespace: str) -> str:
    return f"{PLANE_NAMESPACE_PREFIX}{run_namespace}"


class RunCondition:
    COMPLETED: Final = "WorkflowCompleted"
    RUNNING: Final = "WorkflowRunning"
    SUCCEEDED: Final = "WorkflowSucceeded"
    FAILED: Final = "WorkflowFailed"
    # Our own: whether the run's ExternalSecrets have synced (a broken store shows here, not
    # only as a step that cannot find its Secret).
    RESOURCES_READY: Final = "ResourcesReady"


class RunReason:
    """Reasons on a run's conditions; WorkflowCompleted's reason doubles as its summary."""

    PENDING: Final = "Pending"
    RUNNING: Final = "Running"
    SUCCEEDED: Final = "Succeeded"
    FAILED: Final = "Failed"
    ERROR: Final = "Error"
    WORKFLOW_NOT_FOUND: Final = "WorkflowNotFound"
    WORKFLOW_PLANE_NOT_FOUND: Final = "WorkflowPlaneNotFound"
    WORKFLOW_PLANE_UNREACHABLE: Final = "WorkflowPlaneUnreachable"
    RENDER_FAILED: Final = "RenderFailed"
    SECRET_STORE_NOT_CONFIGURED: Final = "SecretStoreNotConfigured"
    PLANE_REJECTED: Final = "PlaneRejectedObject"
    ARGO_WORKFLOW_DELETED: Final = "ArgoWorkflowDeleted"
    RESOURCES_SYNCED: Final = "ResourcesSynced"
    RESOURCES_SYNCING: Final = "ResourcesSyncing"
    ARGO_WORKFLOW_NAME_CONFLICT: Final = "ArgoWorkflowNameConflict"
