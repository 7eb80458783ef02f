"""Gateway settings (``wpctl gateway`` flags)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from workflowplane.protocol.gateway_client import GATEWAY_NAMESPACE, INTERNAL_CLIENT_SECRET

SERVER_SECRET = "cluster-gateway-tls"
INTERNAL_CA_SECRET = "cluster-gateway-internal-ca"

__all__ = [
    "GATEWAY_NAMESPACE",
    "INTERNAL_CA_SECRET",
    "INTERNAL_CLIENT_SECRET",
    "SERVER_SECRET",
    "GatewayConfig",
]


@dataclass(frozen=True)
class GatewayConfig:
    kubeconfig: Path | None = None  # None: in-cluster service account
    context: str | None = None
    namespace: str = GATEWAY_NAMESPACE
    host: str = "0.0.0.0"
    public_port: int = 8443
    internal_port: int = 8444
    health_port: int = 8080
    server_dns_names: tuple[str, ...] = (
        "localhost",
        "cluster-gateway",
        f"cluster-gateway.{GATEWAY_NAMESPACE}",
        f"cluster-gateway.{GATEWAY_NAMESPACE}.svc",
    )
    server_ips: tuple[str, ...] = ("127.0.0.1",)
    # Files instead of the Secrets the gateway otherwise creates on first start:
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    internal_ca_file: Path | None = None
    ping_interval_seconds: float = 30.0
    dead_after_seconds: float = 90.0
    request_timeout_seconds: float = 30.0
    max_body_bytes: int = 10 * 1024 * 1024
    max_frame_bytes: int = 16 * 1024 * 1024
