"""Wire types shared by the cluster gateway and agent (OpenChoreo tunnel protocol v1)."""

from workflowplane.protocol.messages import (
    PLANE_TYPE_WORKFLOW,
    TARGET_K8S,
    TUNNEL_V2,
    Frame,
    StreamChunk,
    StreamInit,
    TunnelError,
    TunnelRequest,
    TunnelResponse,
    classify_agent_frame,
    classify_gateway_frame,
    encode,
)

__all__ = [
    "PLANE_TYPE_WORKFLOW",
    "TARGET_K8S",
    "TUNNEL_V2",
    "Frame",
    "StreamChunk",
    "StreamInit",
    "TunnelError",
    "TunnelRequest",
    "TunnelResponse",
    "classify_agent_frame",
    "classify_gateway_frame",
    "encode",
]
