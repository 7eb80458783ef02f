"""Wire types shared by the cluster gateway and agent: OpenChoreo's v1, our v2 and v3."""

from workflowplane.protocol.binary import (
    BinaryFrameError,
    decode_binary,
    encode_binary,
    take_chunk,
)
from workflowplane.protocol.messages import (
    PLANE_TYPE_WORKFLOW,
    TARGET_K8S,
    TUNNEL_V2,
    TUNNEL_V3,
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
    "TUNNEL_V3",
    "BinaryFrameError",
    "Frame",
    "StreamChunk",
    "StreamInit",
    "TunnelError",
    "TunnelRequest",
    "TunnelResponse",
    "classify_agent_frame",
    "classify_gateway_frame",
    "decode_binary",
    "encode",
    "encode_binary",
    "take_chunk",
]
