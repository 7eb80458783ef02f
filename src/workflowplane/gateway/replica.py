"""Who this replica is, and who the agents connected to it are (docs/ha.md).

A replica's name (``--replica-name``, ``POD_NAME``, else hostname and internal port) is in
every status answer and names its Lease. An agent's instance id (its
``X-Workflowplane-Agent-Instance`` header, the same on each replica it connects to) lets
status count agents rather than connections; the header is untrusted input, so it is bounded
and of a plain alphabet (it ends up in JSON, logs and the CR's status).
"""

from __future__ import annotations

import re
import socket

INSTANCE_MAX = 64
_INSTANCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
ANY_HOST = ("", "0.0.0.0", "::")


def valid_instance(value: str) -> bool:
    return 0 < len(value) <= INSTANCE_MAX and _INSTANCE.match(value) is not None


def instance_problem(value: str) -> str:
    """Why an instance header is refused (the 400's message)."""
    shown = value[:INSTANCE_MAX] + ("..." if len(value) > INSTANCE_MAX else "")
    return (
        f"X-Workflowplane-Agent-Instance {shown!r} is not an instance id: 1-{INSTANCE_MAX} "
        "letters, digits, '.', '_' or '-', starting with a letter or digit"
    )


def replica_name(configured: str, internal_port: int) -> str:
    """The configured name, else ``<hostname>-<internal port>`` (unique on one host)."""
    return configured or f"{socket.gethostname()}-{internal_port}"


def advertised_host(advertise: str, listen: str) -> str:
    """The host peers dial: the one configured, the listen address when it is one, else the
    address this host's name resolves to."""
    if advertise:
        return advertise
    if listen not in ANY_HOST:
        return listen
    return socket.gethostbyname(socket.gethostname())


def internal_url(host: str, port: int) -> str:
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
