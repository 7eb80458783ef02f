"""Where the agent's own API server is and how the agent proves who it is: a kubeconfig
context or the pod's service account.

Read here with PyYAML rather than lightkube's loader: importing lightkube loads its HTTP client
(httpx) and models, about 6 MiB the agent would carry for ever for two file reads. What is
supported is what the agent uses: a server URL, a CA (file or inline), a bearer token (inline
or a file, re-read for rotation) or a client certificate (file or inline). Relative file paths
are relative to the kubeconfig's directory, as kubectl reads them.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubeConfigError(ValueError):
    """The kubeconfig (or the service account) cannot say how to reach the API server."""


@dataclass(frozen=True)
class KubeTarget:
    """An API server and the agent's credentials for it; ``*_data`` fields hold PEM bytes."""

    server: str
    ca_file: Path | None = None
    ca_data: bytes | None = None
    insecure: bool = False
    token: str | None = None
    token_file: Path | None = None
    client_cert_file: Path | None = None
    client_cert_data: bytes | None = None
    client_key_file: Path | None = None
    client_key_data: bytes | None = None

    @classmethod
    def from_server(cls, url: str) -> KubeTarget:
        """A server without credentials (tests, a plain-HTTP stand-in)."""
        return cls(server=url)

    @classmethod
    def from_service_account(cls, account: Path = SERVICE_ACCOUNT) -> KubeTarget:
        """In a pod: the API server's Service and the projected token (re-read as it rotates)."""
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        port = os.environ.get("KUBERNETES_SERVICE_PORT")
        if not host or not port:
            raise KubeConfigError(
                "no --kubeconfig and not in a pod (KUBERNETES_SERVICE_HOST/PORT are not set)"
            )
        if not (account / "token").is_file():
            raise KubeConfigError(f"no --kubeconfig and no service account token in {account}")
        if ":" in host:  # IPv6
            host = f"[{host}]"
        return cls(
            server=f"https://{host}:{port}",
            ca_file=account / "ca.crt",
            token_file=account / "token",
        )

    @classmethod
    def from_file(cls, path: Path, context: str | None = None) -> KubeTarget:
        """The named context (or the current one) of a kubeconfig file."""
        try:
            document = yaml.safe_load(path.expanduser().read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise KubeConfigError(f"cannot read kubeconfig {path}: {exc}") from exc
        if not isinstance(document, dict):
            raise KubeConfigError(f"kubeconfig {path} is not a YAML mapping")
        return _from_document(document, path.expanduser().resolve().parent, context, path)


def _named(document: dict[str, Any], section: str, name: str, where: Path) -> dict[str, Any]:
    """The ``section`` entry called ``name`` (e.g. the cluster of the context), unwrapped."""
    for entry in document.get(section) or []:
        if isinstance(entry, dict) and entry.get("name") == name:
            body = entry.get(section[:-1])  # clusters -> cluster
            return body if isinstance(body, dict) else {}
    raise KubeConfigError(f"kubeconfig {where} has no {section[:-1]} named {name!r}")


def _from_document(
    document: dict[str, Any], base: Path, context: str | None, where: Path
) -> KubeTarget:
    name = context or document.get("current-context")
    if not name:
        raise KubeConfigError(f"kubeconfig {where} has no current-context; name one (--context)")
    chosen = _named(document, "contexts", str(name), where)
    cluster = _named(document, "clusters", str(chosen.get("cluster", "")), where)
    user = _named(document, "users", str(chosen["user"]), where) if chosen.get("user") else {}
    if not cluster.get("server"):
        raise KubeConfigError(f"kubeconfig {where}: the cluster of context {name!r} has no server")
    if "exec" in user or "auth-provider" in user:
        raise KubeConfigError(
            f"kubeconfig {where}: user of context {name!r} authenticates by a plugin "
            "(exec/auth-provider), which the agent does not run; use a token or a certificate"
        )

    def file(key: str, source: dict[str, Any]) -> Path | None:
        value = source.get(key)
        return (base / str(value)) if value else None

    def data(key: str, source: dict[str, Any]) -> bytes | None:
        value = source.get(key)
        return base64.b64decode(str(value)) if value else None

    return KubeTarget(
        server=str(cluster["server"]),
        ca_file=file("certificate-authority", cluster),
        ca_data=data("certificate-authority-data", cluster),
        insecure=bool(cluster.get("insecure-skip-tls-verify", False)),
        token=str(user["token"]) if user.get("token") else None,
        token_file=file("tokenFile", user),
        client_cert_file=file("client-certificate", user),
        client_cert_data=data("client-certificate-data", user),
        client_key_file=file("client-key", user),
        client_key_data=data("client-key-data", user),
    )
