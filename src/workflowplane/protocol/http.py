"""HTTP rules both ends of the tunnel apply: which methods travel, which headers never do."""

from __future__ import annotations

ALLOWED_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})

# Per-connection headers (RFC 9110 §7.6.1) and framing headers the receiving side recomputes.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
