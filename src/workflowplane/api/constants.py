"""Names of the openchoreo.dev API that every component must spell the same way."""

from __future__ import annotations

from typing import Final

GROUP: Final = "openchoreo.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"

WORKFLOW_PLANE: Final = "WorkflowPlane"
CLUSTER_WORKFLOW_PLANE: Final = "ClusterWorkflowPlane"
OBSERVABILITY_PLANE: Final = "ObservabilityPlane"
CLUSTER_OBSERVABILITY_PLANE: Final = "ClusterObservabilityPlane"

PLANE_TYPE: Final = "workflowplane"

FINALIZERS: Final = {
    WORKFLOW_PLANE: "openchoreo.dev/workflowplane-cleanup",
    CLUSTER_WORKFLOW_PLANE: "openchoreo.dev/clusterworkflowplane-cleanup",
}

ANNOTATION_DISPLAY_NAME: Final = "openchoreo.dev/display-name"
ANNOTATION_DESCRIPTION: Final = "openchoreo.dev/description"
# On a Secret: the namespaces (comma-separated, or *) whose WorkflowPlanes may read it as
# their client CA. A Secret of the plane's own namespace needs no such consent.
ANNOTATION_CLIENT_CA_SHARED_WITH: Final = "openchoreo.dev/client-ca-shared-with"

PLANE_ID_PATTERN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
PLANE_ID_MAX_LENGTH: Final = 63
# Kubernetes object names (RFC 1123 subdomains), as the API server checks them on create. A
# name from a spec that does not match is never put into a request path: the HTTP clients
# resolve its dot segments (``../../other/secrets/x``) and ``?`` starts a query.
DNS_SUBDOMAIN_PATTERN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_SUBDOMAIN_MAX_LENGTH: Final = 253

AGENT_SECRET_NAME: Final = "cluster-agent-tls"
AGENT_NAMESPACE: Final = "openchoreo-workflow-plane"


class Condition:
    """Condition types the controller sets on planes."""

    CREATED: Final = "Created"
    READY: Final = "Ready"
    SECRET_STORE_READY: Final = "SecretStoreReady"
    OBSERVABILITY_PLANE_RESOLVED: Final = "ObservabilityPlaneResolved"
    # Present (False) only while the agents serving this CR carry no allow-list and serve
    # CRs of several namespaces: whoever holds the CA certificate can use the plane.
    AGENT_ACCESS_RESTRICTED: Final = "AgentAccessRestricted"


class Reason:
    """Condition reasons; each names one cause so that automation can act on it."""

    WORKFLOW_PLANE_CREATED: Final = "WorkflowPlaneCreated"
    CLUSTER_WORKFLOW_PLANE_CREATED: Final = "ClusterWorkflowPlaneCreated"
    READY: Final = "Ready"
    CLIENT_CA_NOT_FOUND: Final = "ClientCANotFound"
    CLIENT_CA_INVALID: Final = "ClientCAInvalid"
    CLIENT_CA_EXPIRED: Final = "ClientCAExpired"
    AGENT_NOT_CONNECTED: Final = "AgentNotConnected"
    AGENT_CERTIFICATE_REJECTED: Final = "AgentCertificateRejected"
    AGENT_CONSENT_REFUSED: Final = "AgentConsentRefused"
    SHARED_CA_UNRESTRICTED: Final = "SharedCAUnrestricted"
    GATEWAY_NOTIFY_FAILED: Final = "GatewayNotifyFailed"
    CLIENT_CA_EXPIRING_SOON: Final = "ClientCAExpiringSoon"
