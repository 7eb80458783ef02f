"""Agent settings: flags and environment variables named after OpenChoreo's agent."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from workflowplane.api.constants import AGENT_NAMESPACE, AGENT_SECRET_NAME, PLANE_TYPE

CONSENT_CONFIGMAP = "cluster-agent-consent"
CONSENT_KEY = "allowed"


@dataclass(frozen=True)
class AgentConfig:
    server_url: str  # one replica; "" when server_urls or server_dns_name says where they are
    plane_id: str
    plane_type: str = PLANE_TYPE
    server_ca_file: Path | None = None
    client_cert_file: Path | None = None  # with client_key_file: use files, not the Secret
    client_key_file: Path | None = None
    tls_enabled: bool = True  # False: OpenChoreo's single-cluster mode (no mTLS, unverified)
    namespace: str = AGENT_NAMESPACE
    secret_name: str = AGENT_SECRET_NAME
    kubeconfig: Path | None = None  # None: in-cluster service account
    context: str | None = None
    reconnect_initial_seconds: float = 1.0
    reconnect_max_seconds: float = 30.0
    stable_after_seconds: float = 30.0
    dead_after_seconds: float = 90.0
    # A gateway that takes no chunked answers (OpenChoreo's reads frames of any size) gets each
    # answer in one frame of at most this many bytes; a larger one is refused at once.
    max_frame_bytes: int = 64 * 1024 * 1024
    request_timeout_seconds: float = 30.0
    max_concurrent_requests: int = 64
    # watch/follow streams: a cap and an upstream pool of their own, apart from requests'.
    max_concurrent_streams: int = 64
    # Plane-side consent (api.consent): entries from flags and env, validated at startup; the
    # ConfigMap (key "allowed") adds its own, watched; "" watches none.
    allowed: tuple[str, ...] = ()
    consent_configmap: str = CONSENT_CONFIGMAP
    cert_validity_days: float = 90.0
    ca_validity_days: float = 3650.0
    renew_before_fraction: float = 1 / 3  # renew when less than this much of the life remains
    # Every gateway replica gets a connection (agent/replicas.py): a list, or every address of
    # a DNS name ("host:port" or a URL) resolved again every server_resolve_seconds.
    server_urls: tuple[str, ...] = ()
    server_dns_name: str = ""
    server_resolve_seconds: float = 10.0
    ignored: tuple[str, ...] = ()  # settings accepted for compatibility, without effect here
    # /healthz /readyz /metrics (agent/health.py); None: no listener (the CLI's default: 8082)
    health_host: str = "0.0.0.0"
    health_port: int | None = None
    # The port is the default, asked for by nobody: taken, the agent serves without it (a
    # warning), as OpenChoreo's agent, which has none, runs beside anything.
    health_optional: bool = False


ENV_PREFIX = "CLUSTER_AGENT_"


def env(name: str, default: str | None = None, *, go: str | None = None) -> str | None:
    """``CLUSTER_AGENT_<NAME>``, else OpenChoreo's agent's own variable ``go`` when it has one.

    Empty counts as unset, as OpenChoreo's ``GetEnv`` treats it.
    """
    for key in (ENV_PREFIX + name, *([go] if go else [])):
        value = os.environ.get(key)
        if value:
            return value
    return default
