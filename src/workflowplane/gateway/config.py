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
    # Internal callers must present a certificate of the internal CA (OpenChoreo's
    # --internal-mtls; false: TLS without client certificates).
    internal_mtls: bool = True
    ping_interval_seconds: float = 30.0
    dead_after_seconds: float = 90.0
    request_timeout_seconds: float = 30.0
    max_body_bytes: int = 10 * 1024 * 1024
    # One agent message (a whole answer, base64 in JSON: OpenChoreo's Go agent has no bound
    # of its own). Bigger answers fail that request alone with 502.
    max_frame_bytes: int = 64 * 1024 * 1024
    # Streams (watch/follow) one agent connection carries, and one CR may hold on its plane;
    # beyond either, 429, so ordinary requests always have room.
    max_streams_per_agent: int = 64
    max_streams_per_cr: int = 32
    # Bytes of one stream waiting for a caller that reads slower than the agent sends.
    max_stream_buffer_bytes: int = 4 * 1024 * 1024
    # Time a connection gets for its TLS handshake, and for each request's headers.
    tls_handshake_timeout_seconds: float = 10.0
    header_timeout_seconds: float = 20.0
    # At most one log line per connection and kind of frame problem per this many seconds.
    frame_log_interval_seconds: float = 10.0
    # Frames nobody can use (malformed, late, for no stream) one agent may send per second
    # before the gateway stops reading it for the rest of that second (0: no limit).
    max_junk_frames_per_second: int = 1000
    # High availability (docs/ha.md). The replica's name (empty: hostname and internal
    # port), the host its peers dial for its internal API (empty: the listen host, or this
    # host's address when that is 0.0.0.0), and how long a SIGTERM waits for requests in flight.
    replica_name: str = ""
    advertise_host: str = ""
    drain_seconds: float = 20.0
    # Settings accepted for OpenChoreo's command line that change nothing here (logged).
    ignored: tuple[str, ...] = ()
